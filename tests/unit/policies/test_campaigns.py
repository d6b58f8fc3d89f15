"""Campaign signals (issue 13): the risk score and its signals, sweeps, own numbers, DNO lists, and numbers
without `+` read in the operator's numbering plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from policies import CONTINUE
from policies.invalid_numbers import InvalidNumbers
from policies.lists import Lists
from policies.loader import PolicyEnv
from policies.own_numbers import OwnNumbers
from policies.risk_score import RiskScore, sweep_share
from policies.state import MemoryStore
from proxy.stir.tn import TNPolicy

from .helpers import ctx, end, failed, judge, missing, passed

T0 = 1_800_000_000.0


def make(cls: Any, **params: Any) -> Any:
    return cls(msgspec.convert(params, cls.Params, dec_hook=_datafile))


def _datafile(typ: type, obj: Any) -> Any:
    from policies.base import DataFile

    if typ is DataFile:
        return DataFile(obj)
    raise NotImplementedError(typ)


def risk(**params: Any) -> RiskScore:
    p: RiskScore = make(RiskScore, **params)
    return p


# --- risk score ------------------------------------------------------------------------------------------------
def test_rotating_attest_c_gateway_is_flagged_after_min_calls_with_its_reasons() -> None:
    p, store = risk(), MemoryStore()
    decisions = []
    for i in range(8):
        c = ctx(f"+1212{5550000 + 37 * i * i:07d}", f"+1312{4440000 + 911 * i * i:07d}", now=T0 + i,
                verification=passed(attest="C", origid="gw-c"))
        decisions.append(judge(p, c, store))
        end(p, c, None, store)  # unanswered
    assert [d.action for d in decisions[:4]] == ["continue"] * 4  # fewer than min_calls: per-call signals only
    assert all(d.action == "reject" or d.display_prefix == "SPAM? " for d in decisions[4:])
    note = decisions[-1].note
    assert note.startswith("risk ") and "first_seen_share 1.00 +35" in note and "attest_c_share 1.00 +10" in note
    assert "novel_burst" in note  # 8 new numbers in 8 seconds
    assert "(origid:gw-c, 8 calls)" in note


def test_block_threshold_rejects_with_network_blocked() -> None:
    p, store = risk(), MemoryStore()
    d = CONTINUE
    for i in range(10):
        c = ctx(f"+1212{5550000 + 37 * i * i:07d}", f"+1312555{1000 + i:04d}", now=T0 + i,  # walks a range too
                verification=passed(attest="C", origid="gw-sweep"))
        d = judge(p, c, store)
        end(p, c, 1.0, store)
    assert (d.action, d.code, d.reason, d.reason_header) == (
        "reject", 603, "Network Blocked", 'SIP;cause=603;text="Network Blocked"')
    assert "sweep 1.00 +60" in d.note


def test_legitimate_bulk_caller_keeps_its_numbers_and_is_not_flagged() -> None:
    """A pharmacy: 2 numbers, attest A, many destinations, half the calls short: below every threshold."""
    p, store = risk(), MemoryStore()
    for i in range(200):
        c = ctx(f"+1212555010{i % 2}", f"+1{212 + i % 50}{7000000 + 7919 * i:07d}", now=T0 + i * 10,
                verification=passed(attest="A", origid="pharmacy"))
        d = judge(p, c, store)
        end(p, c, 3.0 if i % 2 else 45.0, store)
        assert d.action == "continue" and d.display_prefix is None, d.note


def test_residential_pool_after_learning_its_numbers_is_not_flagged() -> None:
    p, store = risk(), MemoryStore()
    numbers = [f"+1212{6000000 + 131 * n:07d}" for n in range(300)]
    for day in range(2):
        for i, number in enumerate(numbers):
            c = ctx(number, f"+1{312 + i % 40}{8000000 + 104729 * i % 999999:07d}", now=T0 + day * 86400 + i * 5,
                    verification=passed(attest="A", origid="residential"))
            d = judge(p, c, store)
            end(p, c, 120.0, store)
    assert d.action == "continue" and "first_seen_share" not in d.note, d.note  # day 2: every number known


def test_unsigned_gateway_is_keyed_by_source_address() -> None:
    p, store = risk(signals={"novel_burst": {"weight": 0}}), MemoryStore()
    d = CONTINUE
    for i in range(8):
        c = ctx(f"+1415{2220000 + 53 * i * i:07d}", f"+1718{3330000 + 7001 * i:07d}", now=T0 + i,
                verification=missing(), source=("203.0.113.7", 5060))
        d = judge(p, c, store)
        end(p, c, 2.0, store)
    assert "(source_ip:203.0.113.7, 8 calls)" in d.note
    assert d.display_prefix == "SPAM? ", d.note  # first-seen, short and unanswered shares together (no burst)


def test_failed_verification_scores() -> None:
    p, store = risk(note_from=0), MemoryStore()
    c = ctx(verification=failed(), source=("198.51.100.9", 5060), now=T0)
    assert "failed +10" in judge(p, c, store).note


def test_allow_list_skips_scoring() -> None:
    p, store = risk(allow={"origids": ["gw-ok"]}), MemoryStore()
    for i in range(10):
        c = ctx(f"+1212{5550000 + 37 * i * i:07d}", f"+1312555{1000 + i:04d}", now=T0 + i,
                verification=passed(attest="C", origid="gw-ok"))
        assert judge(p, c, store) is CONTINUE


def test_feedback_reports_raise_the_number_and_gateway() -> None:
    p, store = risk(), MemoryStore()
    store.execute(p.feedback("origid:gw-r", "12125550177", "robocall"), T0)
    store.execute(p.feedback(None, "12125550177", "robocall"), T0)
    store.execute(p.feedback(None, "12125550177", "robocall"), T0)
    d = judge(p, ctx("+12125550177", now=T0 + 60, verification=passed(attest="A", origid="gw-r")), store)
    assert "reports 4.00 +40" in d.note  # 1 for the gateway + 3 for the number
    store.execute(p.feedback(None, "12125550177", "wanted"), T0)
    d = judge(p, ctx("+12125550177", now=T0 + 61, verification=passed(attest="A", origid="gw-r")), store)
    assert "reports 3.00" in d.note


def test_signals_are_configurable_and_bad_ones_refused() -> None:
    p = risk(note_from=0, signals={"attest_c": {"weight": 0}},
             actions=[{"at": 5, "action": "tag", "verstat": "No-TN-Validation"}])
    d = judge(p, ctx(verification=passed(attest="C"), now=T0), MemoryStore())
    assert "attest_c" not in d.note and d.verstat == "No-TN-Validation"  # first_seen +5 reaches 5
    with pytest.raises(msgspec.ValidationError, match="weight >= 0 and high > low"):
        msgspec.convert({"signals": {"sweep": {"weight": 5, "low": 1, "high": 0.5}}}, RiskScore.Params)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'bogus'"):
        msgspec.convert({"signals": {"bogus": {"weight": 5}}}, RiskScore.Params)
    with pytest.raises(msgspec.ValidationError, match="unknown key 'nope'"):
        msgspec.convert({"gateway": ["nope"]}, RiskScore.Params)


@pytest.mark.parametrize(("dests", "share"), [
    (["2125550107", "2125550106", "2125550105", "2125550104", "2125550103"], 1.0),    # sequential
    (["2125550900", "2125550013", "2125550457", "2125550321", "2125550777"], 1.0),    # one thousands-block
    (["2125550107", "3125551234", "4155559876", "7185550001", "2025553333"], 0.0),    # spread out
    (["2125550107", "2125550106", "2125550105"], 0.0),                                # too few
    (["4155559876", "2125550106", "2125550105", "2125550104", "2125550103"], 0.0),    # this call breaks it
    (["2125550107"] * 8, 0.0),                                                        # one number, again and again
    (["2125550107", "2125550106", "2125550107", "2125550106", "2125550107"], 0.0),    # two numbers only
])
def test_sweep_share(dests: list[str], share: float) -> None:
    assert sweep_share(dests, gap=20, minimum=5) == share


# --- own numbers, DNO -----------------------------------------------------------------------------------------
def test_own_number_from_a_carrier_is_spoofed_unless_ported_out_or_signed_by_us() -> None:
    p = make(OwnNumbers, prefixes=["1212555"], ported_out=["+12125550199"], own_spcs=["OURS"])
    assert judge(p, ctx("+12125550100", trunk_role="carrier")).note == "own_numbers"
    assert judge(p, ctx("+12125550100", trunk_role="carrier")).code == 603
    assert judge(p, ctx("+12125550199", trunk_role="carrier")) is CONTINUE  # ported out
    assert judge(p, ctx("+12125550100", trunk_role="carrier", verification=passed(spc="OURS"))) is CONTINUE
    assert judge(p, ctx("+12125550100", trunk_role="customer")) is CONTINUE  # our own subscriber
    assert judge(p, ctx("+13125550100", trunk_role="carrier")) is CONTINUE
    with pytest.raises(ValueError, match="needs numbers"):
        make(OwnNumbers)


def test_dno_list_one_number_per_line(tmp_path: Path) -> None:
    dno = tmp_path / "dno.txt"
    dno.write_text("# ITG do-not-originate: 10-digit NANP numbers\n8005550100\n2025550111\n")
    params = msgspec.convert({"dno_files": [str(dno)], "allow": {"orig_numbers": ["+12025550111"]}}, Lists.Params,
                             dec_hook=_datafile)
    env = PolicyEnv("policies.yaml", tmp_path, TNPolicy(country_code="1"))  # stir.country_code: "1"
    p = Lists(params, env=env)
    p._load()
    assert judge(p, ctx("+18005550100")).note == "lists:dno"
    assert judge(p, ctx("+12025550111")) is CONTINUE  # allow wins
    assert judge(p, ctx("+12125550100")) is CONTINUE


# --- numbers without '+' ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("orig", "forms", "hit"), [
    ("<sip:5551234@gw>", ["national", "nanp_1"], True),            # 7 digits: not a NANP form
    ("<sip:212555123@gw>", ["national", "nanp_1"], True),          # 9 digits
    ("<sip:21255512345@gw>", ["national", "nanp_1"], True),        # 11 digits not starting 1
    ("<sip:2125551234@gw>", ["national", "nanp_1"], False),        # 10 national digits
    ("<sip:12125551234@gw>", ["national", "nanp_1"], False),       # 1 + 10
    ("<sip:12125551234@gw>", ["national"], True),                  # the plan allows only 10 digits
    ("<sip:+4420795612345@gw>", ["national"], False),              # with '+': international, not judged here
    ("<sip:4420795612345@gw>", ["national", "international"], False),
    ("<sip:5551234@gw>", ["national", "nanp_1", "international"], False),  # the default: as before
])
def test_unprefixed_numbers_in_the_numbering_plan(orig: str, forms: list[str], hit: bool) -> None:
    p = make(InvalidNumbers, unprefixed=forms)
    c = ctx(orig, "+13125557890", headers=[("from", orig)])
    d = judge(p, c)
    assert (d is not CONTINUE) == hit, d.note
    if hit:
        assert d.note == "invalid_numbers:length"
