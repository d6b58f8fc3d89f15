"""replay: the same PASSporT seen on another call inside its freshness window is a replay (a captured
Identity header pasted onto robocalls): tag or reject.

Keyed by the JWS signature (unique per signing); the first Call-ID seen is remembered so a retry of the same
call is not its own replay. State lives in a StateStore shared per `scope` (across trunks and reloads);
swap `policy.store` for a shared (Redis) one when several instances must see each other's calls.
"""

from __future__ import annotations

from typing import Literal

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CONTINUE, CallContext, Decision
from .state import StateStore, shared_store

__all__ = ["Replay", "signatures"]


class ReplayParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    code: int | None = 438
    verstat: Verstat | None = "TN-Validation-Failed"
    #: Seconds a PASSporT is remembered: its freshness window (stir.verify.iat_max_age) or longer.
    window: float = 60.0
    max_entries: int = 1_000_000
    #: Policies with the same scope share one memory.
    scope: str = "replay"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window <= 0 or self.max_entries <= 0:
            raise ValueError("window and max_entries must be positive")


def signatures(values: tuple[str, ...]) -> list[str]:
    """The JWS signature of every full-form Identity header value (compact or garbled ones are skipped)."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            token = part.split(";", 1)[0].strip().strip("<>")
            if token.count(".") == 2:
                sig = token.rpartition(".")[2]
                if len(sig) >= 16:
                    out.append(sig)
    return out


class Replay(ActionPolicy):
    """A PASSporT signature already seen on another Call-ID within `window` -> the configured action
    (default: 438 Invalid Identity Header with an RFC 9410 Reason)."""

    Params = ReplayParams

    def __init__(self, params: ReplayParams) -> None:
        super().__init__(params)
        self.store: StateStore = shared_store(params.scope, params.window, params.max_entries)
        self._ttl = params.window

    def evaluate(self, ctx: CallContext) -> Decision:
        values = ctx.headers.get("identity")
        if not values:
            return CONTINUE
        put = self.store.put_if_absent
        replayed = False
        for sig in signatures(values):
            first = put(sig, ctx.call_id, self._ttl, ctx.now)
            if first is not None and first != ctx.call_id:
                replayed = True
        return self.hit if replayed else CONTINUE
