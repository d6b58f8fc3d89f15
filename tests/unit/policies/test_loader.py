"""Policy YAML: located errors (file, line, key), third-party classes, reload keeping state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from policies import Counters, PolicyError, load_policies, load_policies_text
from policies.state import MemoryStore

from .helpers import ctx, passed, run

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def err(text: str, **kw: object) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policies_text(text, "pol.yaml", **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(("text", "line", "key", "problem"), [
    ("trunk:\n  a: []\n", 1, "trunk", "unknown key"),
    ("trunks:\n  a:\n    - policy: replay\n      mdoe: dry-run\n", 4, "trunks.a[0].mdoe", "unknown key"),
    ("trunks:\n  a:\n    - policy: replay\n      mode: maybe\n", 4, "trunks.a[0].mode", "Invalid enum value"),
    ("trunks:\n  a:\n    - policy: 5\n", 3, "trunks.a[0].policy", "Expected `str`"),
    ("trunks:\n  a:\n    - policy: spam_filter\n", 3, "trunks.a[0].policy", "unknown policy 'spam_filter'"),
    ("trunks:\n  a:\n    - policy: nosuch.module:Cls\n", 3, "trunks.a[0].policy", "cannot import 'nosuch.module'"),
    ("trunks:\n  a:\n    - policy: policies.replay:Nope\n", 3, "trunks.a[0].policy", "has no 'Nope'"),
    ("trunks:\n  a:\n    - policy: 'policies replay:X'\n", 3, "trunks.a[0].policy", "bad dotted path"),
    ("trunks:\n  a:\n    - policy: policies.base:Decision\n", 3, "trunks.a[0].policy", "no evaluate"),
    ("trunks:\n  a:\n    - policy: velocity\n      params:\n        max_calls: many\n", 5,
     "trunks.a[0].params.max_calls", "Expected `int | null`"),
    ("trunks:\n  a:\n    - policy: velocity\n      params:\n        max_call: 3\n", 5,
     "trunks.a[0].params.max_call", "unknown key"),
    ("trunks:\n  a:\n    - policy: velocity\n      params: {window: 5}\n", 4, "trunks.a[0].params",
     "needs max_calls"),
    ("trunks:\n  a:\n    - policy: lists\n      params:\n        deny:\n          orig_numbers_file: nope.txt\n", 6,
     "trunks.a[0].params.deny.orig_numbers_file", "no such file"),
    ("trunks:\n  a:\n    - policy: lists\n      params:\n        deny: {sources: [banana]}\n", 4,
     "trunks.a[0].params", "banana"),
    ("trunks:\n  a: {policy: replay}\n", 2, "trunks.a", "expected a list"),
    ("trunks:\n  a:\n    - replay\n", 3, "trunks.a[0]", "expected a mapping"),
    ("trunks:\n  a:\n    - {policy: replay, name: r}\n    - {policy: anonymous, name: r}\n", 4,
     "trunks.a[1].name", "duplicate name"),
    ("trunks:\n  a:\n    - policy: replay\n     bad: [\n", None, "(yaml)", ""),
])
def test_located_errors(text: str, line: int | None, key: str, problem: str) -> None:
    e = err(text)
    assert e.file == "pol.yaml"
    if line is not None:
        assert e.line == line, str(e)
    assert e.key == key, str(e)
    assert problem in e.problem, str(e)
    assert str(e).startswith("pol.yaml:")


def test_unknown_trunks_and_route_targets() -> None:
    e = err("trunks:\n  nope: []\n", trunks=["a"])
    assert (e.line, e.key) == (2, "trunks.nope") and "unknown trunk" in e.problem
    e = err("trunks:\n  a:\n    - policy: route_by_verstat\n      params: {failed: [ghost]}\n", trunks=["a"])
    assert (e.line, e.key) == (4, "trunks.a[0].params") and "ghost" in e.problem


def test_setup_error_is_located(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_text("12125551234\nnot-a-number!\n")
    (tmp_path / "p.yaml").write_text("trunks:\n  a:\n    - policy: lists\n      params:\n"
                                     "        deny: {orig_numbers_file: deny.txt}\n")
    pset = load_policies(tmp_path / "p.yaml")
    with pytest.raises(PolicyError) as info:
        pset.setup_sync()
    assert info.value.line == 3 and info.value.key == "trunks.a[0].params"
    assert "deny.txt:2: not a telephone number" in info.value.problem


def test_example_files_load() -> None:
    pset = load_policies(EXAMPLES / "policies.yaml", trunks=["carrier", "carrier2", "customer"])
    pset.setup_sync()
    assert len(pset.chain_for("carrier")) == 12
    assert len(pset.chain_for("customer")) == 0
    assert pset.chain_for("elsewhere") is pset.default


def test_third_party_by_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES / "thirdparty_policy"))
    pset = load_policies(EXAMPLES / "thirdparty_policy" / "policies.yaml")
    chain = pset.chain_for("carrier")
    night = chain.evaluate(ctx("+12025551234", "+12125557890", verification=passed("B"), now=3 * 3600.0))
    assert night.decision.code == 608
    assert night.decision.response_headers() == (
        ("Call-Info", "<https://acme.example/jcard/quiet-hours.json>;purpose=jcard"),)
    assert chain.evaluate(ctx("+12025551234", "+12125557890", now=18 * 3600.0)).decision.action == "continue"
    e = err("trunks:\n  a:\n    - policy: acme_policies.quiet_hours:QuietHours\n      params: {start_hour: 30}\n")
    assert (e.line, e.key) == (4, "trunks.a[0].params") and "start_hour" in e.problem
    sys.modules.pop("acme_policies.quiet_hours", None)


def test_default_chain_and_names() -> None:
    pset = load_policies_text("default:\n  - policy: anonymous\n  - policy: anonymous\n    params: {privacy: false}\n")
    assert [e.name for e in pset.chain_for("any").entries] == ["anonymous", "anonymous#2"]


def test_reload_keeps_velocity_state_and_counters() -> None:
    """What velocity counted lives in the store, not the policy: a reloaded file that counts the same thing
    (same key, window, filter) sees the same counts; a changed window counts afresh."""
    text = "trunks:\n  a:\n    - policy: velocity\n      params: {max_calls: 1}\n"
    counters = Counters()
    store = MemoryStore()
    old = load_policies_text(text, counters=counters)
    run(old.chain_for("a"), ctx(trunk="a"), store)
    new = load_policies_text(text + "    - policy: anonymous\n", counters=counters)
    assert run(new.chain_for("a"), ctx(trunk="a"), store).decision.code == 503
    assert counters.get("a", "velocity", "enforce", "reject") == 1
    changed = load_policies_text(text.replace("1}", "1, window: 30}"), counters=counters)
    assert run(changed.chain_for("a"), ctx(trunk="a"), store).decision.action == "continue"
    # the chain a call started with is unaffected by the swap
    assert len(old.chain_for("a")) == 1 and len(new.chain_for("a")) == 2


def test_when_filter_errors_are_located() -> None:
    text = "trunks:\n  a:\n    - policy: velocity\n      when: {attest: [D]}\n      params: {max_calls: 1}\n"
    with pytest.raises(PolicyError) as ei:
        load_policies_text(text, "p.yaml")
    e = ei.value
    assert (e.file, e.line, e.key) == ("p.yaml", 4, "trunks.a[0].when.attest[0]"), str(e)
    bad = text.replace("attest: [D]", "sources: [not-an-ip]")
    with pytest.raises(PolicyError, match="when"):
        load_policies_text(bad, "p.yaml")


def test_filtered_entries_count_apart() -> None:
    """Two velocity entries that differ only in their `when:` keep separate counters."""
    text = ("trunks:\n  a:\n    - policy: velocity\n      when: {attest: [C]}\n      params: {max_calls: 1}\n"
            "    - policy: velocity\n      name: all\n      params: {max_calls: 1}\n")
    pset = load_policies_text(text)
    store = MemoryStore()
    chain = pset.chain_for("a")
    assert run(chain, ctx(trunk="a", verification=passed("A")), store).decision.action == "continue"
    # the second call: the unfiltered entry has seen 2 calls, the attest-C one only this one
    result = run(chain, ctx(trunk="a", verification=passed("C")), store)
    assert [(s.name, s.decision.action) for s in result.steps] == [("velocity", "continue"), ("all", "reject")]
