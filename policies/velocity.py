"""velocity: too many calls, too many distinct destinations, or too many short calls for one key (the
caller's number, or the gateway: origid, SPC, trunk, source address, a combination) within a sliding window
-> tag, throttle (503 with Retry-After) or reject.

The counts live in the state store (`policies.state`), not in the policy: calls and destinations are exact
sliding windows holding at most N+1 members (a window only has to say "more than N"); the short-call share is
a bucketed tally of answered calls fed when calls end. Entries that count the same thing (same key, windows
and `when:` filter) share their counters across trunks, reloads and, with Redis, nodes; `scope` names a
counter set explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, CallOutcome, Decision
from .keys import key_getter
from .state import Op, Tally, Window

__all__ = ["Velocity"]

_ENDS = ("answered", "short")


class VelocityParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "throttle"
    #: orig_tn | origid | spc | trunk | source_ip | orig_npa_nxx | dest_npa_nxx | dest_block, or kinds joined
    #: with `+` (e.g. origid+trunk).
    key: str = "orig_tn"
    #: Sliding window, seconds, for max_calls and max_destinations.
    window: float = 60.0
    max_calls: int | None = None
    max_destinations: int | None = None
    #: Share (0-1) of answered calls shorter than short_call_seconds, over short_window.
    max_short_share: float | None = None
    short_call_seconds: float = 6.0
    short_window: float = 3600.0
    #: Answered calls needed in short_window before the share counts.
    min_completed: int = 20
    #: Counter set name; default: derived from what is counted (key, windows, the entry's `when:`).
    scope: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        key_getter(self.key)
        if self.max_calls is None and self.max_destinations is None and self.max_short_share is None:
            raise ValueError("velocity needs max_calls, max_destinations or max_short_share")
        if self.window <= 0 or self.short_window <= 0:
            raise ValueError("windows must be positive")
        for name in ("max_calls", "max_destinations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_short_share is not None and not 0 <= self.max_short_share < 1:
            raise ValueError("max_short_share is a share between 0 and 1")
        if self.min_completed < 1:
            raise ValueError("min_completed must be at least 1")


class Velocity(ActionPolicy):
    """Any threshold exceeded for the call's key -> the configured action (default: throttle, 503 +
    Retry-After). The call being decided counts towards its own window, throttled calls included (a flood
    stays throttled)."""

    Params = VelocityParams

    def __init__(self, params: VelocityParams, env: Any = None) -> None:
        super().__init__(params)
        self._key = key_getter(params.key)
        counted = f"{params.key}/{params.window:g}/{params.short_call_seconds:g}/{params.short_window:g}"
        scope = params.scope or f"{counted}/{getattr(env, 'filter_id', '')}"
        self._prefix = f"velocity:{scope}:"
        self._label = f"velocity:{params.key}"

    def observe(self, ctx: CallContext) -> Sequence[Op]:
        key = self._key(ctx)
        if key is None:
            return ()
        p = self.params
        ops: list[Op] = []
        if p.max_calls is not None:
            ops.append(Window(f"{self._prefix}c:{key}", ctx.call_id, p.window, p.max_calls + 1))
        if p.max_destinations is not None and ctx.dest_tn is not None:
            ops.append(Window(f"{self._prefix}d:{key}", ctx.dest_tn, p.window, p.max_destinations + 1))
        if p.max_short_share is not None:
            ops.append(Tally(f"{self._prefix}e:{key}", _ENDS, (0, 0), p.short_window))
        return ops

    def evaluate(self, ctx: CallContext) -> Decision:
        results = ctx.state_for(self)
        if not results:
            return CONTINUE
        p = self.params
        i = 0
        if p.max_calls is not None:
            calls = results[i]
            i += 1
            if calls > p.max_calls:
                return self._fired(f"calls {calls} > {p.max_calls} in {p.window:g} s")
        if p.max_destinations is not None and ctx.dest_tn is not None:
            dests = results[i]
            i += 1
            if dests > p.max_destinations:
                return self._fired(f"destinations {dests} > {p.max_destinations} in {p.window:g} s")
        if p.max_short_share is not None:
            answered, short = results[i]
            if answered >= p.min_completed and short > p.max_short_share * answered:
                return self._fired(f"short_share {short / answered:.2f} > {p.max_short_share:g} over "
                                   f"{answered} calls")
        return CONTINUE

    def _fired(self, why: str) -> Decision:
        """The configured action, saying which threshold fired with what value (for records and logs)."""
        return self.hit.with_note(f"{self._label} {why}")

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> Sequence[Op]:
        """An answered call ended: count it, and whether it was short, for the short-call share."""
        p = self.params
        if p.max_short_share is None or not outcome.answered:
            return ()
        key = self._key(ctx)
        if key is None:
            return ()
        short = 1 if outcome.duration < p.short_call_seconds else 0
        return (Tally(f"{self._prefix}e:{key}", _ENDS, (1, short), p.short_window),)
