"""verification: a call whose Identity failed verification is rejected with its own STIR code, tagged, or
routed elsewhere.

The verifier knows the precise cause (436/437/438/403) and RFC 9410 wants it echoed in the Reason header,
so a reject uses the verdict's code and text unless the YAML fixes one.
"""

from __future__ import annotations

from typing import Literal

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CONTINUE, CallContext, Decision

__all__ = ["Verification"]


class VerificationParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    verstat: Verstat | None = "TN-Validation-Failed"


class Verification(ActionPolicy):
    """Verification status `failed` -> the configured action (default: reject with the verifier's code)."""

    Params = VerificationParams

    def __init__(self, params: VerificationParams) -> None:
        super().__init__(params)
        self._by_cause: dict[tuple[int, str], Decision] = {}

    def evaluate(self, ctx: CallContext) -> Decision:
        v = ctx.verification
        if v is None or v.status != "failed":
            return CONTINUE
        if self.params.action != "reject" or self.params.code is not None:
            return self.hit
        cause = (v.sip_code or 438, v.reason or "Invalid Identity Header")
        d = self._by_cause.get(cause)
        if d is None:
            d = self._by_cause[cause] = self.params.decision(self.note(), code=cause[0], reason=cause[1])
        return d
