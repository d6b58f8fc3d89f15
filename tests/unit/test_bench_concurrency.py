"""The concurrency bench's own arithmetic (bench/concurrency.py): how N calls are shared among UACs, how long a
verified hold's PASSporTs must stay fresh, and how it proves every held call was verified, read from the
metrics stirgate itself renders."""

from __future__ import annotations

import pytest

from bench.concurrency import build_up_bound_s, ended_by_verstat, iat_window_s, split_calls, summed
from proxy.metrics import Metrics
from tests.unit.records.helpers import rec


@pytest.mark.parametrize(("n", "parts"), [(20_000, 1), (20_001, 2), (7, 3)])
def test_uacs_share_every_call_and_the_rate(n: int, parts: int) -> None:
    shares = split_calls(n, 1000.0, parts)
    assert sum(calls for calls, _ in shares) == n
    assert max(c for c, _ in shares) - min(c for c, _ in shares) <= 1
    assert sum(rate for _, rate in shares) == pytest.approx(1000.0)


def test_the_passports_stay_fresh_over_the_whole_build_up() -> None:
    for n, rate in ((20_000, 1000.0), (100_000, 2000.0), (10, 1000.0)):
        assert iat_window_s(n, rate) >= max(60.0, build_up_bound_s(n, rate) + 60)


def test_ended_calls_by_verstat_from_stirgates_metrics() -> None:
    m = Metrics(process_metrics=False)
    for _ in range(3):
        m.observe_call(rec(ingress="carrier", answered_at=1.0, verification="passed",
                           verstat="TN-Validation-Passed", attest="A", status=200))
    m.observe_call(rec(ingress="carrier", verification="failed", verstat="TN-Validation-Failed", status=438))
    m.observe_call(rec(ingress="carrier", status=200, answered_at=1.0))  # no verstat at all
    assert ended_by_verstat(m.render().decode()) == {"ended_verified": 3, "ended_other": 2}


def test_workers_counters_add_up() -> None:
    assert summed([{"a": 1, "b": 2}, {"a": 3, "c": 4}]) == {"a": 4, "b": 2, "c": 4}
