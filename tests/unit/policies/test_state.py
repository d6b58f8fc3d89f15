"""The in-process state store: the shared contract scenarios, and its memory bounds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policies.state import Claim, MemoryStore, Tally, Window
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
