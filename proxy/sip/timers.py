"""Every timer in the process in one calendar queue (10 ms buckets), driven by an injected clock.

Owners keep `deadlines[kind] = when`; an entry fires only if it still matches, so cancelling is a dict
delete and costs nothing in the queue. No closures per timer: measured, they were a large part of the cost
of lingering transactions.

Why buckets and not one heap: at carrier rates most timers are long (32 s transaction lifetimes) and most
are cancelled, so a heap holds hundreds of thousands of entries and every pop walks ~18 levels of it at
random addresses (cache misses: measured ~18 us of CPU per call at 1000 cps). Deadlines arrive in nearly
increasing order, so appending to the bucket of their 10 ms slot and consuming buckets in slot order touches
memory sequentially. A small heap orders the slot numbers; inside a bucket, due entries fire sorted by time
(insertion order for equal times), exactly the order one heap keyed by (when, sequence) gave.
"""

from __future__ import annotations

import heapq
import math
from operator import itemgetter
from typing import Protocol

__all__ = ["TimerOwner", "TimerQueue"]

#: Bucket width in seconds. Not a precision limit: an entry still fires at `fire_due(now)` with `now >= when`.
BUCKET = 0.01

_when = itemgetter(0)


class TimerOwner(Protocol):
    deadlines: dict[str, float]

    def on_timer(self, kind: str, now: float) -> None: ...


_Entry = tuple[float, TimerOwner, str]


class _Bucket:
    """The entries of one slot, in insertion order, and the earliest of their times (cancelled included)."""

    __slots__ = ("entries", "first")

    def __init__(self, entry: _Entry) -> None:
        self.entries = [entry]
        self.first = entry[0]


class TimerQueue:
    __slots__ = ("_buckets", "_scale", "_slots")

    def __init__(self, bucket: float = BUCKET) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._slots: list[int] = []  # heap of the slots that have a bucket
        self._scale = 1.0 / bucket

    def __len__(self) -> int:
        """Entries held, cancelled ones included until their bucket is looked at (not on the hot path)."""
        return sum(len(b.entries) for b in self._buckets.values())

    def start(self, owner: TimerOwner, kind: str, when: float) -> None:
        owner.deadlines[kind] = when
        slot = math.floor(when * self._scale)
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = _Bucket((when, owner, kind))
            heapq.heappush(self._slots, slot)
        else:
            bucket.entries.append((when, owner, kind))
            if when < bucket.first:
                bucket.first = when

    @staticmethod
    def cancel(owner: TimerOwner, kind: str) -> None:
        owner.deadlines.pop(kind, None)

    def earliest(self) -> float | None:
        """The earliest entry's time, cancelled or not: a lower bound of `next_deadline`, at the cost of two
        indexes."""
        slots = self._slots
        return self._buckets[slots[0]].first if slots else None

    def next_deadline(self) -> float | None:
        """The earliest live deadline. Drops the cancelled entries of the buckets it looks at, so asking
        again is cheap."""
        slots, buckets = self._slots, self._buckets
        while slots:
            slot = slots[0]
            bucket = buckets[slot]
            live = [e for e in bucket.entries if e[1].deadlines.get(e[2]) == e[0]]
            if live:
                bucket.entries = live
                bucket.first = min(e[0] for e in live)
                return bucket.first
            heapq.heappop(slots)
            del buckets[slot]
        return None

    def fire_due(self, now: float) -> int:
        """Run every timer due at `now` (`when <= now`), in time order; returns how many fired."""
        slots, buckets = self._slots, self._buckets
        if not slots:
            return 0
        last = math.floor(now * self._scale)  # entries of earlier slots are all due; of this one, some
        fired = 0
        while slots and slots[0] <= last:
            slot = slots[0]
            bucket = buckets[slot]
            due = bucket.entries
            if bucket.first > now:
                break  # only this slot is left, and nothing in it is due yet
            if slot == last:
                later = [e for e in due if e[0] > now]
                if later:
                    due = [e for e in due if e[0] <= now]
                    bucket.entries = later
                    bucket.first = min(e[0] for e in later)
                else:
                    heapq.heappop(slots)
                    del buckets[slot]
            else:
                heapq.heappop(slots)
                del buckets[slot]
            if len(due) > 1:
                due.sort(key=_when)  # stable: equal times keep their insertion order
            # Timers started by these callbacks are never earlier than `now`: they go to a later place in
            # this slot's bucket or a later slot, and the loop comes back for them.
            for when, owner, kind in due:
                deadlines = owner.deadlines
                if deadlines.get(kind) != when:
                    continue
                del deadlines[kind]
                owner.on_timer(kind, now)
                fired += 1
        return fired
