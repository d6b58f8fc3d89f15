"""min_attestation: verified calls attested below a level (A > B > C) are tagged, routed or rejected.

Attestation from a failed verification is not trusted, so such calls count as unattested; unverified
calls are left to require_identity/verification unless `unverified: apply`.
"""

from __future__ import annotations

from typing import Literal

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CONTINUE, CallContext, Decision

__all__ = ["MinAttestation"]

_RANK = {"A": 3, "B": 2, "C": 1}


class MinAttestationParams(ActionParams, frozen=True, kw_only=True):
    level: Literal["A", "B", "C"] = "A"
    #: Calls without a passed verification: skip them, or treat them as below any level.
    unverified: Literal["skip", "apply"] = "skip"
    verstat: Verstat | None = "No-TN-Validation"


class MinAttestation(ActionPolicy):
    """Passed verification with attest below `level` -> the configured action (default: tag verstat
    No-TN-Validation)."""

    Params = MinAttestationParams

    def __init__(self, params: MinAttestationParams) -> None:
        super().__init__(params)
        self._min = _RANK[params.level]
        self._apply_unverified = params.unverified == "apply"

    def evaluate(self, ctx: CallContext) -> Decision:
        v = ctx.verification
        if v is None or v.status != "passed":
            return self.hit if self._apply_unverified else CONTINUE
        return CONTINUE if _RANK.get(ctx.attest or "", 0) >= self._min else self.hit
