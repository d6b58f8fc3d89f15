"""The calendar queue fires exactly what one heap keyed by (when, sequence) would, in the same order."""

from __future__ import annotations

import heapq
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sip.timers import TimerQueue


class HeapModel:
    """The reference: every entry in one heap, stale ones skipped when popped."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Owner, str]] = []
        self.seq = itertools.count()

    def start(self, owner: Owner, kind: str, when: float) -> None:
        owner.deadlines[kind] = when
        heapq.heappush(self.heap, (when, next(self.seq), owner, kind))

    def next_deadline(self) -> float | None:
        while self.heap:
            when, _, owner, kind = self.heap[0]
            if owner.deadlines.get(kind) == when:
                return when
            heapq.heappop(self.heap)
        return None

    def fire_due(self, now: float) -> int:
        fired = 0
        while self.heap and self.heap[0][0] <= now:
            when, _, owner, kind = heapq.heappop(self.heap)
            if owner.deadlines.get(kind) != when:
                continue
            del owner.deadlines[kind]
            owner.on_timer(kind, now)
            fired += 1
        return fired


class Owner:
    """Records what fired; some kinds start a follow-up timer from the callback (as retransmissions do)."""

    def __init__(self, name: int, log: list[tuple[int, str, float]], queue: TimerQueue | HeapModel) -> None:
        self.name = name
        self.deadlines: dict[str, float] = {}
        self.log = log
        self.queue = queue
        self.chain: dict[str, tuple[str, float]] = {}

    def on_timer(self, kind: str, now: float) -> None:
        self.log.append((self.name, kind, now))
        follow = self.chain.pop(kind, None)
        if follow is not None:
            self.queue.start(self, follow[0], now + follow[1])


# Times close together (same 10 ms bucket, either order, equal) as often as far apart.
times = st.one_of(
    st.sampled_from([0.0, 0.001, 0.004, 0.009, 0.01, 0.011, 0.5]),
    st.floats(min_value=0.0, max_value=3.0, allow_nan=False).map(lambda t: round(t, 3)),
)
kinds = st.sampled_from(["A", "B", "G", "H"])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(0, 3), kinds, times),
        st.tuples(st.just("chain"), st.integers(0, 3), kinds, st.tuples(kinds, st.sampled_from([0.0, 0.004, 0.5]))),
        st.tuples(st.just("cancel"), st.integers(0, 3), kinds, st.just(0.0)),
        st.tuples(st.just("fire"), st.just(0), st.just(""), times),
        st.tuples(st.just("next"), st.just(0), st.just(""), st.just(0.0)),
    ),
    max_size=60,
)


def _run(queue: TimerQueue | HeapModel, script: list[tuple[str, int, str, object]]) -> list[object]:
    log: list[tuple[int, str, float]] = []
    owners = [Owner(i, log, queue) for i in range(4)]
    out: list[object] = []
    now = 0.0
    for op, who, kind, arg in script:
        owner = owners[who]
        if op == "start":
            assert isinstance(arg, float)
            queue.start(owner, kind, now + arg)
        elif op == "chain":
            assert isinstance(arg, tuple)
            owner.chain[kind] = arg
        elif op == "cancel":
            owner.deadlines.pop(kind, None)
        elif op == "fire":
            assert isinstance(arg, float)
            now += arg
            out.append(("fired", queue.fire_due(now)))
        else:
            out.append(("next", queue.next_deadline()))
    out.append(("fired", queue.fire_due(now + 100.0)))
    out.append(("next", queue.next_deadline()))
    return [*out, log]


@settings(max_examples=400, deadline=None)
@given(ops)
def test_same_firings_as_one_heap(script: list[tuple[str, int, str, object]]) -> None:
    assert _run(TimerQueue(), script) == _run(HeapModel(), script)


def test_entries_in_one_bucket_fire_in_time_order_and_only_when_due() -> None:
    q = TimerQueue()
    log: list[tuple[int, str, float]] = []
    o = Owner(0, log, q)
    q.start(o, "late", 1.009)
    q.start(o, "mid", 1.005)
    q.start(o, "early", 1.001)
    assert q.earliest() == 1.001
    assert q.fire_due(1.005) == 2
    assert [k for _, k, _ in log] == ["early", "mid"]
    assert q.next_deadline() == 1.009
    assert q.fire_due(1.008) == 0
    assert q.fire_due(1.009) == 1
    assert q.next_deadline() is None and len(q) == 0


def test_a_zero_delay_timer_started_while_firing_fires_in_the_same_call() -> None:
    q = TimerQueue()
    log: list[tuple[int, str, float]] = []
    o = Owner(0, log, q)
    o.chain["K"] = ("done", 0.0)  # as timer K = 0 over TCP
    q.start(o, "K", 2.0)
    assert q.fire_due(2.0) == 2
    assert log == [(0, "K", 2.0), (0, "done", 2.0)]


def test_cancelled_entries_are_dropped_by_next_deadline() -> None:
    q = TimerQueue()
    o = Owner(0, [], q)
    for i in range(50):
        q.start(o, f"t{i}", 5.0 + i / 1000)
    for i in range(49):
        o.deadlines.pop(f"t{i}")
    assert q.earliest() == 5.0  # a lower bound: cancelled entries count until looked at
    assert q.next_deadline() == 5.049
    assert len(q) == 1
    assert q.earliest() == 5.049
