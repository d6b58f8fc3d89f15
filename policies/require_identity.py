"""require_identity: a call that arrives without any Identity header gets 428, a tag, or another route.

The verifier reports a missing Identity as "missing", which is no failure: whether that is acceptable is
a per-trunk decision (a carrier that always signs vs. a legacy TDM gateway), so it is a policy.
"""

from __future__ import annotations

from typing import Literal

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CONTINUE, CallContext, Decision

__all__ = ["RequireIdentity"]


class RequireIdentityParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    code: int | None = 428
    verstat: Verstat | None = "No-TN-Validation"


class RequireIdentity(ActionPolicy):
    """No Identity header on the call -> the configured action (default: 428 Use Identity Header)."""

    Params = RequireIdentityParams

    def evaluate(self, ctx: CallContext) -> Decision:
        return CONTINUE if ctx.identity_present else self.hit
