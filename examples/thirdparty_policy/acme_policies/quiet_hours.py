"""quiet_hours: outside the callee's calling hours, calls without full attestation get a 608 with a jCard.

Loaded by dotted path from a policy file:

    - policy: acme_policies.quiet_hours:QuietHours
      params: {utc_offset_hours: -5, start_hour: 8, end_hour: 21, jcard_url: "https://acme.example/jcard.json"}
"""

from __future__ import annotations

import msgspec

from policies import CONTINUE, CallContext, Decision


class QuietHoursParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Every key validated: a typo or a wrong type is reported with the policy file's line."""

    utc_offset_hours: int = 0
    start_hour: int = 8
    end_hour: int = 21
    #: Callee number prefixes this applies to (empty: every callee).
    dest_prefixes: list[str] = []
    jcard_url: str | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.start_hour < 24 and 0 < self.end_hour <= 24 and self.start_hour < self.end_hour):
            raise ValueError("need 0 <= start_hour < end_hour <= 24")


class QuietHours:
    """The whole contract: a `Params` schema, a constructor taking the validated params, `evaluate`."""

    Params = QuietHoursParams

    def __init__(self, params: QuietHoursParams) -> None:
        self.params = params
        self.prefixes = tuple(params.dest_prefixes)
        # Decisions are immutable: build the answer once, return it on every matching call.
        self.reject = Decision.reject(608, "Rejected", jcard_url=params.jcard_url, note="quiet_hours")

    def evaluate(self, ctx: CallContext) -> Decision:
        if ctx.verified and ctx.attest == "A":
            return CONTINUE
        if self.prefixes and not (ctx.dest_tn or "").startswith(self.prefixes):
            return CONTINUE
        hour = int((ctx.now // 3600 + self.params.utc_offset_hours) % 24)  # ctx.now: never read the clock
        if self.params.start_hour <= hour < self.params.end_hour:
            return CONTINUE
        return self.reject
