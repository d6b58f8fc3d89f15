"""How a process's part of a trunk's contract follows its part of the offered INVITEs (proxy.limit_shares)."""

from __future__ import annotations

import pytest

from proxy.limit_shares import share_of


def test_alone_a_process_holds_the_whole_contract() -> None:
    assert share_of(0, 0, 1) == 1.0
    assert share_of(500, 500, 1) == 1.0


def test_an_even_spread_splits_the_contract_evenly() -> None:
    assert share_of(50, 100, 2) == pytest.approx(0.5)
    assert share_of(25, 100, 4) == pytest.approx(0.25)


def test_shares_follow_the_offered_load_and_sum_to_one() -> None:
    counts = [90, 10, 0]
    shares = [share_of(c, sum(counts), len(counts)) for c in counts]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] > 0.85 and 0.0 < shares[2] < 0.02  # the idle one keeps a sliver


def test_before_any_load_the_processes_split_evenly() -> None:
    assert share_of(0, 0, 3) == pytest.approx(1 / 3)
