"""replay: the same PASSporT seen on another call inside its freshness window is a replay (a captured
Identity header pasted onto robocalls): tag or reject.

Keyed by the JWS signature (unique per signing): the first call claims it (`Claim`, SET NX EX in Redis), so
a retry of the same call is not its own replay. Entries with one `scope` share one memory, across trunks,
reloads and, with the Redis state store, every node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CallContext, Decision
from .replay_core import ReplayCore, signatures
from .state import Op

__all__ = ["Replay", "signatures"]


class ReplayParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    code: int | None = 438
    verstat: Verstat | None = "TN-Validation-Failed"
    #: Seconds a PASSporT is remembered: its freshness window (stir.verify.iat_max_age) or longer.
    window: float = 60.0
    #: Policies with the same scope share one memory.
    scope: str = "replay"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window <= 0:
            raise ValueError("window must be positive")


class Replay(ActionPolicy):
    """A PASSporT signature already claimed by another Call-ID within `window` -> the configured action
    (default: 438 Invalid Identity Header with an RFC 9410 Reason)."""

    Params = ReplayParams

    def __init__(self, params: ReplayParams) -> None:
        super().__init__(params)
        #: The per-call work, compiled (policies/replay_core.py).
        self._core = ReplayCore(f"replay:{params.scope}:", params.window, self.hit)
        #: What the chain calls for each call, in place of this object's own methods.
        self.per_call = self._core

    def observe(self, ctx: CallContext) -> Sequence[Op]:
        return self._core.observe(ctx)

    def evaluate(self, ctx: CallContext) -> Decision:
        return self._core.decide(ctx.state_for(self))
