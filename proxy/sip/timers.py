"""One heap of deadlines for every timer in the process, driven by an injected clock.

Owners keep `deadlines[kind] = when`; a heap entry fires only if it still matches, so cancelling is a dict
delete and costs nothing on the heap. No closures per timer: measured, they were a large part of the cost of
lingering transactions.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

__all__ = ["TimerOwner", "TimerQueue"]


class TimerOwner(Protocol):
    deadlines: dict[str, float]

    def on_timer(self, kind: str, now: float) -> None: ...


class TimerQueue:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def start(self, owner: TimerOwner, kind: str, when: float) -> None:
        owner.deadlines[kind] = when
        heapq.heappush(self._heap, (when, next(self._seq), owner, kind))

    @staticmethod
    def cancel(owner: TimerOwner, kind: str) -> None:
        owner.deadlines.pop(kind, None)

    def earliest(self) -> float | None:
        """The earliest entry's time, cancelled or not: a lower bound of `next_deadline`, without popping."""
        heap = self._heap
        return heap[0][0] if heap else None

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, owner, kind = heap[0]
            if owner.deadlines.get(kind) == when:
                return when
            heapq.heappop(heap)  # cancelled or superseded
        return None

    def fire_due(self, now: float) -> int:
        """Run every timer due at `now`; returns how many fired."""
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            when, _, owner, kind = heapq.heappop(heap)
            if owner.deadlines.get(kind) != when:
                continue
            del owner.deadlines[kind]
            owner.on_timer(kind, now)
            fired += 1
        return fired
