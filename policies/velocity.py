"""velocity: too many calls, too many distinct destinations, or too many short calls from one caller
(orig TN, origid, SPC, trunk or source address) within a sliding window -> tag, throttle (503 with
Retry-After) or reject.

Exact sliding windows at O(1) memory per key: a window only has to say "more than N", so each key keeps at
most N+1 timestamps (the newest N+1 are all inside the window whenever more than N are) and N+1
destinations. Keys idle for a window are dropped in activity order (an OrderedDict), so memory follows the
number of active callers, bounded by `max_keys`. Short-call share is fed by `on_call_end`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Literal, TypeVar

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, Decision

__all__ = ["Velocity"]

Key = Literal["orig_tn", "origid", "spc", "trunk", "source_ip"]


class VelocityParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "throttle"
    key: Key = "orig_tn"
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
    #: Answered calls remembered per key for the share.
    max_samples: int = 1000
    max_keys: int = 200_000

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.min_completed < 1 or self.max_samples < self.min_completed or self.max_keys < 1:
            raise ValueError("need 1 <= min_completed <= max_samples and max_keys >= 1")


def _key_getter(key: Key) -> Callable[[CallContext], str | None]:
    if key == "orig_tn":
        return lambda ctx: ctx.orig_tn
    if key == "trunk":
        return lambda ctx: ctx.trunk
    if key == "source_ip":
        return lambda ctx: ctx.source_ip or None
    if key == "spc":
        return lambda ctx: ctx.spc if ctx.verified else None
    return lambda ctx: ctx.origid if ctx.verified else None


class _Window:
    __slots__ = ("dests", "last", "times")

    def __init__(self, calls: int | None) -> None:
        self.times: deque[float] | None = deque(maxlen=calls + 1) if calls is not None else None
        self.dests: OrderedDict[str, float] = OrderedDict()
        self.last = 0.0


class _Ends:
    __slots__ = ("ends", "last", "short")

    def __init__(self) -> None:
        self.ends: deque[tuple[float, bool]] = deque()
        self.short = 0
        self.last = 0.0


_S = TypeVar("_S", _Window, _Ends)


class Velocity(ActionPolicy):
    """Any threshold exceeded for the call's key -> the configured action (default: throttle, 503 +
    Retry-After). The call being decided counts towards its own window."""

    Params = VelocityParams
    keep_on_reload = True

    def __init__(self, params: VelocityParams) -> None:
        super().__init__(params)
        self._key = _key_getter(params.key)
        self._max_calls = params.max_calls or 0
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._ends: OrderedDict[str, _Ends] = OrderedDict()
        self._hits = {
            why: params.decision(note=f"velocity:{params.key}:{why}")
            for why in ("calls", "destinations", "short_calls")
        }

    def __len__(self) -> int:
        return len(self._windows)

    def evaluate(self, ctx: CallContext) -> Decision:
        key = self._key(ctx)
        if key is None:
            return CONTINUE
        p = self.params
        now = ctx.now
        cutoff = now - p.window
        windows = self._windows
        w = windows.get(key)
        if w is None:
            w = windows[key] = _Window(p.max_calls)
            w.last = now
            _expire(windows, cutoff, p.max_keys)
        else:
            windows.move_to_end(key)
            w.last = now
        why = None
        times = w.times
        if times is not None:
            times.append(now)
            while times[0] <= cutoff:
                times.popleft()
            if len(times) > self._max_calls:
                why = "calls"
        limit = p.max_destinations
        dest = ctx.dest_tn
        if limit is not None and dest is not None:
            dests = w.dests
            dests[dest] = now
            dests.move_to_end(dest)
            while True:
                first = next(iter(dests))
                if dests[first] > cutoff:
                    break
                del dests[first]
            if len(dests) > limit + 1:
                dests.popitem(last=False)
            if len(dests) > limit and why is None:
                why = "destinations"
        if why is None and p.max_short_share is not None:
            e = self._ends.get(key)
            if e is not None:
                _trim(e, now - p.short_window)
                n = len(e.ends)
                if n >= p.min_completed and e.short > p.max_short_share * n:
                    why = "short_calls"
        return self._hits[why] if why is not None else CONTINUE

    def on_call_end(self, ctx: CallContext, duration: float) -> None:
        """An answered call ended after `duration` seconds: count it for the short-call share."""
        p = self.params
        if p.max_short_share is None:
            return
        key = self._key(ctx)
        if key is None:
            return
        ends = self._ends
        e = ends.get(key)
        if e is None:
            e = ends[key] = _Ends()
            e.last = ctx.now
            _expire(ends, ctx.now - p.short_window, p.max_keys)
        else:
            ends.move_to_end(key)
            e.last = ctx.now
        short = duration < p.short_call_seconds
        e.ends.append((ctx.now, short))
        e.short += short
        if len(e.ends) > p.max_samples and e.ends.popleft()[1]:
            e.short -= 1
        _trim(e, ctx.now - p.short_window)


def _trim(e: _Ends, cutoff: float) -> None:
    ends = e.ends
    while ends and ends[0][0] <= cutoff:
        if ends.popleft()[1]:
            e.short -= 1


def _expire(table: OrderedDict[str, _S], cutoff: float, max_keys: int) -> None:
    """Drop keys idle since before `cutoff` (front = least recently active), and the oldest beyond max_keys."""
    while len(table) > max_keys:
        table.popitem(last=False)
    while table:
        first = next(iter(table.values()))
        if first.last > cutoff:
            break
        table.popitem(last=False)
