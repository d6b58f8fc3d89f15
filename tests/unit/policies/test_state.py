"""The in-process state store: the shared contract scenarios, and its memory bounds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policies.state import Claim, Group, MemoryStore, Recent, Tally, Window
from tests import state_contract


@pytest.mark.parametrize("scenario", state_contract.SCENARIOS, ids=lambda s: s.__name__)
def test_contract(scenario: Callable[[state_contract.Run, str], None]) -> None:
    store = MemoryStore()
    scenario(store.execute, "t")


def test_tables_are_bounded_least_recently_active_first() -> None:
    store = MemoryStore(max_keys=3)
    for i in range(10):
        store.execute([Window(f"w{i}", "m", 60, 2), Tally(f"t{i}", ("n",), (1,), 60)], 100.0 + i)
        store.execute([Claim(f"c{i}", "v", 60)], 100.0 + i)
    assert len(store) == 9  # 3 windows, 3 tallies, 3 claims
    assert store.execute([Window("w9", "m2", 60, 2)], 120.0) == [2]  # the newest survived
    assert store.execute([Window("w0", "m2", 60, 2)], 120.0) == [1]  # the oldest went


def test_idle_keys_leave_after_their_span() -> None:
    store = MemoryStore()
    store.execute([Window("a", "m", 10, 2)], 0.0)
    store.execute([Window("b", "m", 10, 2)], 20.0)
    assert len(store) == 1


def test_tally_field_layout_change_starts_afresh() -> None:
    store = MemoryStore()
    store.execute([Tally("k", ("a",), (5,), 60)], 0.0)
    assert store.execute([Tally("k", ("a", "b"), (1, 1), 60)], 1.0) == [(1, 1)]


def test_a_groups_parts_keep_their_own_lifetimes() -> None:
    """A Group is one entry in memory, but each part expires as its key would on its own (as in Redis): a recent
    list after its ttl, a claim after its ttl from when it was made; the group goes once all have."""
    store = MemoryStore()

    def number(at: float, dest: str) -> list[object]:
        results: list[object] = store.execute([Group("n:1", (Claim("seen:1", f"call-{at}", 100),
                                                             Recent("o:1", dest, 3, 10)))], at)[0]
        return results

    assert number(0.0, "a") == [None, ("a",)]
    assert number(5.0, "b") == ["call-0.0", ("b", "a")]
    assert number(20.0, "c") == ["call-0.0", ("c",)]  # 15 s after its last push: the list had gone
    assert number(95.0, "d") == ["call-0.0", ("d",)]
    assert number(99.0, "e") == ["call-0.0", ("e", "d")]  # the claim's 100 s run from when it was made
    assert number(100.0, "f") == [None, ("f", "e", "d")]  # ... so at 100 another call claims the number
    store.execute([Group("n:2", (Claim("seen:2", "x", 100),))], 150.0)
    assert len(store) == 2
    store.execute([Group("n:2", (Claim("seen:2", "x", 100),))], 201.0)  # n:1: idle beyond its longest lifetime
    assert len(store) == 1


def test_a_groups_parts_are_filed_under_their_names() -> None:
    """With `names`, the memory store files a group's parts under them, not under the ops' keys (which stay for
    Redis): a number's entry keeps no key string per part, and a feedback label sent as a group of one op finds
    the counters a call's group reads."""
    store = MemoryStore()
    call = [Group("n:1", (Claim("seen:1", "call-a", 100), Tally("f:1", ("robocall",), (0,), 60)), ("seen", "fb"))]
    assert store.execute(call, 0.0) == [[None, (0,)]]
    store.record([Group("n:1", (Tally("f:1", ("robocall",), (1,), 60),), ("fb",))], 1.0)
    assert store.execute(call, 2.0) == [[None, (1,)]]
    entry = store._groups.entries["n:1"]
    assert entry.claim_name == "seen" and entry.parts is not None and sorted(entry.parts) == ["fb"]


def test_a_group_holds_one_claim_and_one_recent_list() -> None:
    """The memory store keeps a group's Claim and Recent in the entry itself (a number's entry is one object): a
    second of either under another name is refused, not silently merged; a window sits beside them."""
    store = MemoryStore()
    window = Window("w:1", "x", 60, 5)
    assert store.execute([Group("g", (Claim("c:1", "a", 60), Recent("r:1", "x", 3, 60), window))], 0.0) == [
        [None, ("x",), 1]]
    with pytest.raises(ValueError, match="one Claim"):
        store.execute([Group("g", (Claim("c:2", "a", 60),))], 1.0)
    with pytest.raises(ValueError, match="one Recent"):
        store.execute([Group("g", (Recent("r:2", "y", 3, 60),))], 1.0)
    assert store.execute([Group("g", (Recent("r:1", "y", 3, 60), Window("w:1", "y", 60, 5)))], 2.0) == [
        [("y", "x"), 2]]


def test_groups_count_towards_max_keys() -> None:
    store = MemoryStore(max_keys=2)
    for i in range(4):
        store.execute([Group(f"g{i}", (Tally(f"t{i}", ("n",), (1,), 60),))], float(i))
    assert len(store) == 2
    assert store.execute([Group("g3", (Tally("t3", ("n",), (1,), 60),))], 5.0) == [[(2,)]]  # the newest survived
    assert store.execute([Group("g0", (Tally("t0", ("n",), (1,), 60),))], 5.0) == [[(1,)]]  # the oldest went


def test_recorded_ops_count_as_executed_ones() -> None:
    """`record` (a call's end, feedback) changes the store as `execute` would, answering nothing; an answered
    run after it sees every count, grouped or not."""
    recorded, executed = MemoryStore(), MemoryStore()
    ops = [Group("g", (Tally("g:t", ("a", "b"), (1, 2), 60), Claim("g:c", "v", 60), Recent("g:r", "x", 3, 60))),
           Tally("t", ("a",), (3,), 60), Window("w", "m", 60, 5), Claim("c", "v", 60)]
    for at in (0.0, 1.0):
        assert recorded.record(ops, at) is None
        executed.execute(ops, at)
    assert recorded.execute(ops, 2.0) == executed.execute(ops, 2.0) == [
        [(3, 6), None, ("x", "x", "x")], (9,), 1, None]
