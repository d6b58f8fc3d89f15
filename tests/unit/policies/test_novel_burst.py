"""risk_score's novel_burst: a campaign's burst of never-seen numbers stands out from the steady trickle of new
callers of the legitimate traffic it shares a gateway with; the gateway's usual rate is learnt from calls
outside bursts only; and the neighbour exemption for numbers an attestation vouches for."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import pytest

from policies import Decision
from policies.risk_core import covered, poisson_surprise
from policies.risk_score import GATEWAY_FIELDS, RiskScore
from policies.state import MemoryStore

from .helpers import ctx, missing, passed

T0 = 1_800_000_000.0
GATEWAY = ("198.51.100.20", 5060)


def risk(**params: Any) -> RiskScore:
    p: RiskScore = RiskScore(msgspec.convert(params, RiskScore.Params))
    return p


class Gateway:
    """Calls through one risk_score entry and its store, as the engine makes them: observe, evaluate, and the
    ended call's ops with the call's observe results."""

    def __init__(self, p: RiskScore) -> None:
        self.core = p.per_call
        self.store = MemoryStore()
        self.n = 0

    def call(self, orig: str, now: float, duration: float | None = None, **kw: Any) -> Decision:
        """One call from `orig` (answered for `duration` seconds, else unanswered) to a new destination."""
        self.n += 1
        kw.setdefault("verification", missing())
        kw.setdefault("source", GATEWAY)
        c = ctx(orig, f"+1312{7000000 + 7919 * self.n % 1000000:07d}", now=now, **kw)
        results = self.store.execute(list(self.core.observe(c)), now)
        c = c.replace(facts={self.core: results})
        decision = self.core.evaluate(c)
        ops = self.core.end_ops(c, duration is not None, duration or 0.0, results)
        self.store.execute(list(ops), now)
        return decision


def burst_value(d: Decision) -> float | None:
    m = re.search(r"novel_burst ([\d.]+) \+(\d+)", d.note)
    return float(m.group(1)) if m else None


def fresh(i: int) -> str:
    """A number nobody has called from (a spoofed one)."""
    return f"+1415{2000000 + 7901 * i % 8000000:07d}"


def clec(g: Gateway, start: float, hours: float, new_every: float, first: int = 0) -> int:
    """A legitimate carrier's traffic: its subscribers (known numbers, every 20 s) and a new caller every
    `new_every` seconds; every call answered. Returns how many new numbers it used."""
    known = [f"+1212{5550000 + k:07d}" for k in range(50)]
    n = first
    t = start
    while t < start + hours * 3600:
        g.call(known[int(t) % 50], t, 90.0)
        if int(t - start) % int(new_every) < 20:
            n += 1
            d = g.call(fresh(n), t + 1, 60.0)
            assert burst_value(d) is None, d.note  # the trickle is no burst
        t += 20
    return n


def campaign(g: Gateway, start: float, first: int, size: int = 12, gap: float = 10.0) -> list[Decision]:
    """A campaign: a fresh spoofed number on every call (fresh(first + 1) on), unanswered."""
    return [g.call(fresh(first + 1 + i), start + i * gap) for i in range(size)]


# --- the statistic --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "expected", "surprise"), [
    (1, 1.0, 0.0), (3, 3.0, 0.0), (0, 0.5, 0.0),               # no more than due: no surprise
    (2, 1.0, -math.log10(1 - 2 / math.e)),                      # P(X >= 2 | 1) = 1 - 2/e
    (4, 1.0, -math.log10(1 - sum(1 / math.factorial(i) for i in range(4)) / math.e)),
    (10, 0.5, 9.77),                                            # ten where half of one was due
])
def test_poisson_surprise(k: int, expected: float, surprise: float) -> None:
    assert poisson_surprise(k, expected) == pytest.approx(surprise, abs=0.05)


def test_poisson_surprise_grows_with_the_count_and_stays_finite() -> None:
    values = [poisson_surprise(k, 2.0) for k in range(3, 400, 7)]
    assert values == sorted(values) and all(math.isfinite(v) for v in values)
    assert poisson_surprise(10_000, 0.01) == 300.0  # beyond a double's range: the cap


def test_covered_span_of_a_bucketed_window() -> None:
    assert covered(120.0, 6, 1000.0) == pytest.approx(100.0 + 0.0)  # a bucket just began
    assert covered(120.0, 6, 1019.0) == pytest.approx(100.0 + 19.0)
    assert covered(21600.0, 12, 3600.0) == pytest.approx(11 * 1800.0 + 0.0)


# --- the signal -----------------------------------------------------------------------------------------------
def test_a_campaign_stands_out_from_the_new_callers_of_the_traffic_it_shares_a_gateway_with() -> None:
    g = Gateway(risk(note_from=0))
    used = clec(g, T0, hours=6, new_every=300)  # 6 h: a new caller every 5 minutes, never a burst
    decisions = campaign(g, T0 + 6 * 3600, first=used)
    values = [burst_value(d) for d in decisions]
    assert all(v is None or v < 1.5 for v in values[:3]), values  # a few new numbers: no news yet
    assert all(v is not None and v >= 3.0 for v in values[5:]), values  # calls 6..N: a one-in-a-thousand burst
    assert all("novel_burst" in d.note and "+35" in d.note for d in decisions[5:])
    # the gateway's next new caller, once the burst has left the 2-minute window, is no burst
    after = g.call(fresh(used + 100), T0 + 6 * 3600 + 300, 60.0)
    assert burst_value(after) is None, after.note


def test_a_burst_is_scored_on_calls_from_never_seen_numbers_only() -> None:
    g = Gateway(risk(note_from=0))
    used = clec(g, T0, hours=2, new_every=600)
    campaign(g, T0 + 2 * 3600, first=used)
    known = g.call("+12125550000", T0 + 2 * 3600 + 115)  # a subscriber calling during the burst
    assert "novel_burst" not in known.note and "first_seen" not in known.note


def test_campaigns_do_not_teach_the_gateway_their_own_rate() -> None:
    """A campaign every 5 minutes for 6 hours (the whole window): calls in a burst are not counted into the
    usual rate, so the last campaign still stands out; learning from every call would make bursts the norm."""

    def last_campaign(**params: Any) -> float:
        g = Gateway(risk(note_from=0, **params))
        used = clec(g, T0, hours=3, new_every=300)
        for k in range(72):
            decisions = campaign(g, T0 + 3 * 3600 + k * 300, first=used + 100 * k)
        value = burst_value(decisions[8])
        assert value is not None
        return value

    gated, learnt = last_campaign(), last_campaign(burst_learn_below=1e9)
    assert gated >= 3.0 > learnt, (gated, learnt)


def test_burst_parameters_are_configurable_and_checked() -> None:
    g = Gateway(risk(note_from=0, burst_min_expected=20.0))  # 20 new numbers due in any window: 12 is no news
    assert all(burst_value(d) is None for d in campaign(g, T0, first=0))
    g = Gateway(risk(note_from=0, signals={"novel_burst": {"weight": 0}}))
    assert all("novel_burst" not in d.note for d in campaign(g, T0, first=0))
    for bad, why in (({"burst_window": 0}, "burst_window"), ({"burst_buckets": 0}, "burst_window"),
                     ({"burst_floor_share": 1.5}, "burst_floor_share")):
        with pytest.raises(msgspec.ValidationError, match=why):
            msgspec.convert(bad, RiskScore.Params)


# --- neighbours an attestation vouches for ----------------------------------------------------------------------
@pytest.mark.parametrize(("attest", "exempt", "counted"), [
    ("A", None, False), ("B", None, True), ("C", None, True), ("A", [], True), ("B", ["A", "B"], False),
])
def test_a_neighbour_match_vouched_for_by_the_attestation_does_not_count(
        attest: str, exempt: list[str] | None, counted: bool) -> None:
    params: dict[str, Any] = {"note_from": 0}
    if exempt is not None:
        params["neighbor_exempt_attest"] = exempt
    g = Gateway(risk(**params))
    d = g.call("+13127005555", T0, verification=passed(attest=attest, origid="school"))  # the callee's NPA-NXX
    assert ("neighbor +5" in d.note) is counted, d.note
    assert ("novel_neighbor +20" in d.note) is counted, d.note


def test_an_unsigned_neighbour_always_counts() -> None:
    g = Gateway(risk(note_from=0))
    assert "neighbor +5" in g.call("+13127005555", T0).note


# --- what a call keeps for its end, and the state of signals that do not count -----------------------------------
def test_the_end_a_scored_call_kept_is_the_one_worked_out_again() -> None:
    """A scored call keeps its end's bits (never-seen number, neighbour, outside a burst) with it; an unscored one
    (allow list) works them out from its observe results: both give the same op, in and out of bursts."""
    p = risk(note_from=0)
    core, store = p.per_call, MemoryStore()
    seen: set[tuple[int, int, int]] = set()  # (from a never-seen number, outside a burst, neighbour) met
    for n in range(40):
        now = T0 + n * (5.0 if n < 25 else 400.0)  # a burst of never-seen numbers, then a trickle
        orig = fresh(n) if n % 3 else "+13127005555"  # every third call a (known, after the first) neighbour
        c = ctx(orig, f"+1312700{n:04d}", now=now, verification=missing(), source=GATEWAY)
        results = store.execute(list(core.observe(c)), now)
        unscored = c.replace(facts={core: results})
        scored = c.replace(facts={core: results})
        core.evaluate(scored)
        kept = core.end_ops(scored, True, 3.0, results)
        assert kept == core.end_ops(unscored, True, 3.0, results)
        add = kept[0].ops[0].add  # the gateway's Group: its counters' Tally
        seen.add((add[GATEWAY_FIELDS.index("novel_ended")], add[GATEWAY_FIELDS.index("novel_quiet")],
                  add[GATEWAY_FIELDS.index("novel_neighbor")]))
        store.execute(list(core.end_ops(scored, n % 2 == 0, 3.0, results)), now + 3)
    assert {(1, 1, 0), (1, 0, 0), (0, 0, 0), (1, 1, 1)} <= seen, seen


def test_signals_of_weight_zero_ask_no_state_and_the_rest_score_alike() -> None:
    off = {name: {"weight": 0} for name in ("novel_burst", "sweep", "orig_sweep", "reports")}
    full, lean = Gateway(risk(note_from=0)), Gateway(risk(note_from=0, signals=off))
    c = ctx(fresh(1), "+13127000001", now=T0, verification=missing(), source=GATEWAY)
    def asked(g: Gateway) -> list[int]:
        return [len(group.ops) for group in g.core.observe(c)]  # (the number's, the gateway's) Groups

    assert asked(full) == [3, 4] and asked(lean) == [1, 1]  # lean: the claim, the gateway's counters
    used = clec(full, T0, hours=1, new_every=300)
    assert clec(lean, T0, hours=1, new_every=300) == used
    assert any(r[0] == "novel_burst" for d in campaign(Gateway(risk(note_from=0)), T0, first=used) for r in reasons(d))
    for d_full, d_lean in zip(campaign(full, T0 + 3600, first=used), campaign(lean, T0 + 3600, first=used),
                              strict=True):
        assert reasons(d_lean) == [r for r in reasons(d_full) if r[0] != "novel_burst"], (d_full.note, d_lean.note)


def reasons(d: Decision) -> list[tuple[str, str]]:
    """(signal, value and points) of each signal that scored, from the note."""
    return re.findall(r"(\w+) ((?:[\d.]+ )?\+\d+)", d.note.split(": ", 1)[1])
