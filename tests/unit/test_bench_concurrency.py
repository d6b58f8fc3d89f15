"""The concurrency bench's own arithmetic (bench/concurrency.py): how N calls are shared among UACs, how long a
verified hold's PASSporTs must stay fresh, and how it proves every held call was verified, read from the
metrics stirgate itself renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.concurrency import (
    build_up_bound_s,
    ended_by_verstat,
    hold_scenarios,
    iat_window_s,
    second_ack_sent,
    split_calls,
    summed,
)
from bench.sipp import SCENARIOS
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


def test_a_reinvite_during_the_hold_comes_between_two_holds() -> None:
    uac, uas = hold_scenarios(False, "during")
    assert uas == hold_scenarios(False, "before")[1]
    text = (SCENARIOS / uac).read_text()
    ack, reinvite, bye = text.index("CSeq: 1 ACK"), text.index("CSeq: 2 INVITE"), text.index("CSeq: 3 BYE")
    assert text.count("<pause/>") == 2
    first, second = text.index("<pause/>"), text.rindex("<pause/>")
    assert ack < first < reinvite < second < bye
    assert hold_scenarios(False, None) == ("uac_hold.xml", "uas_hold.xml")


def test_the_reinvites_acked_are_the_second_acks_count(tmp_path: Path) -> None:
    assert second_ack_sent(tmp_path) == 0  # no counts file yet
    head = ("CurrentTime;ElapsedTime;0_INVITE_Sent;4_200_Recv;5_ACK_Sent;7_INVITE_Sent;9_200_Recv;10_ACK_Sent;"
            "12_BYE_Sent;")
    rows = ["t;e;100;100;100;0;0;0;0;", "t;e;100;100;100;40;40;37;0;"]
    (tmp_path / "uac_1_counts.csv").write_text("\n".join([head, *rows]) + "\n")
    assert second_ack_sent(tmp_path) == 37  # index 10, not 5 (and not the order of the columns as text)
