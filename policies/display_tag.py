"""display_tag: prefix the caller's display name (e.g. "SPAM? ") when conditions on the verdict hold.

What the called party sees is the one signal that reaches a human; carriers tag rather than block calls
that are merely doubtful (attestation B/C, failed or missing verification).
"""

from __future__ import annotations

from typing import Literal

from .actions import Verstat
from .base import CONTINUE, BasePolicy, CallContext, Decision, Params

__all__ = ["DisplayTag"]


class DisplayTagParams(Params, frozen=True, kw_only=True):
    prefix: str = "SPAM? "
    #: The call's verstat is one of these (a trunk that does not verify has none).
    verstat: list[Verstat] = []
    #: The call passed verification with one of these attestation levels.
    attest: list[Literal["A", "B", "C"]] = []
    #: The trunk does not verify at all.
    unverified: bool = False
    #: any: one listed condition is enough; all: every listed condition must hold.
    match: Literal["any", "all"] = "any"
    #: Also set verstat on the call (e.g. No-TN-Validation); optional.
    set_verstat: Verstat | None = None

    def __post_init__(self) -> None:
        if not (self.verstat or self.attest or self.unverified):
            raise ValueError("display_tag needs a condition: verstat, attest or unverified")
        if not self.prefix or "\r" in self.prefix or "\n" in self.prefix or '"' in self.prefix:
            raise ValueError("prefix: one line of text without quotes")


class DisplayTag(BasePolicy):
    """Conditions hold -> tag with `display_prefix` (default prefix "SPAM? ")."""

    Params = DisplayTagParams

    def __init__(self, params: DisplayTagParams) -> None:
        super().__init__(params)
        self.hit = Decision.tag(display_prefix=params.prefix, verstat=params.set_verstat, note="display_tag")
        self._verstat = frozenset(params.verstat)
        self._attest = frozenset(params.attest)
        self._all = params.match == "all"

    def evaluate(self, ctx: CallContext) -> Decision:
        p = self.params
        v = ctx.verification
        checks: list[bool] = []
        if self._verstat:
            checks.append(v is not None and v.verstat in self._verstat)
        if self._attest:
            checks.append(v is not None and v.status == "passed" and ctx.attest in self._attest)
        if p.unverified:
            checks.append(v is None)
        hit = all(checks) if self._all else any(checks)
        return self.hit if hit else CONTINUE

