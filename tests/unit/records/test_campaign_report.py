"""`stirgate report --campaigns`: flagged calls grouped by gateway, ingress and rule, split by quiet gaps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from proxy.campaigns import campaigns, flagging_step, format_campaigns
from proxy.records import INSERT_SQL, CallRecord, open_db, row_of
from proxy.traceback_cmd import register
from tests.unit.records.helpers import rec

T = 1_717_000_000.0
RISK = ("risk_score", "enforce", "tag",
        "risk 74: first_seen_share 0.93 +35, short_share 0.71 +18 (origid:gw1, 14 calls)")
DRY = ("velocity", "dry-run", "reject", "velocity:orig_tn calls 21 > 20 in 10 s")
INVALID = ("invalid_numbers", "enforce", "reject", "invalid_numbers:length")
CLEAN = ("replay", "enforce", "continue", "")


def _db(path: Path, records: list[CallRecord]) -> Path:
    conn = open_db(path)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(INSERT_SQL, [row_of(r) for r in records])
    conn.close()
    return path


def flagged(i: int, at: float, decision: tuple[str, ...], **kw: object) -> CallRecord:
    fields: dict[str, object] = {"a_call_id": f"c{i}", "invite_at": at, "orig": f"1212555{i:04d}",
                                 "dest": f"1312555{i:04d}", "verification": "passed", "origid": "gw1",
                                 "attest": "C", "source_ip": "198.51.100.7", "policy_decisions": (CLEAN, decision)}
    fields.update(kw)
    return rec(**fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    records = [flagged(i, T + i * 30, RISK) for i in range(13)]  # one campaign: 13 calls, 30 s apart
    records += [flagged(100 + i, T + 7200 + i, RISK) for i in range(4)]  # the same gateway 2 h later: another one
    records += [flagged(200 + i, T + i, INVALID, verification="missing", origid=None, attest=None,
                        source_ip="203.0.113.9") for i in range(5)]  # unsigned, keyed by source
    records += [flagged(300 + i, T + i, DRY, origid="gw2") for i in range(3)]  # dry-run only
    records += [rec(a_call_id=f"ok{i}", invite_at=T + i, policy_decisions=(CLEAN,)) for i in range(20)]  # clean
    return _db(tmp_path / "records.sqlite3", records)


def test_campaigns_grouped_and_split_by_gaps(db: Path) -> None:
    rep = campaigns(db, T - 10, T + 10_000)
    assert rep["flagged_calls"] == 13 + 4 + 5 + 3
    got = [(c["gateway"], c["rule"], c["mode"], c["calls"]) for c in rep["campaigns"]]
    assert got == [
        ("origid:gw1", "risk_score:first_seen_share", "enforce", 13),
        ("source:203.0.113.9", "invalid_numbers:length", "enforce", 5),
        ("origid:gw1", "risk_score:first_seen_share", "enforce", 4),
        ("origid:gw2", "velocity:calls", "dry-run", 3),
    ]
    first = rep["campaigns"][0]
    assert first["upstream"] == ["carrier 198.51.100.7:5060"]
    assert (first["distinct_origs"], first["distinct_dests"], first["attest"]) == (13, 13, {"C": 13})
    assert first["first_seen"] == "2024-05-29T16:26:40.000Z" and first["last_seen"] == "2024-05-29T16:32:40.000Z"
    assert len(first["samples"]) == 3 and first["samples"][0]["note"].startswith("risk 74:")


def test_a_window_holds_only_its_calls(db: Path) -> None:
    rep = campaigns(db, T + 7000, T + 8000)
    assert [c["calls"] for c in rep["campaigns"]] == [4]


def test_enforced_step_wins_over_dry_run() -> None:
    r = rec(a_call_id="x", invite_at=T, policy_decisions=(DRY, RISK))
    assert flagging_step(r) == ("risk_score:first_seen_share", "enforce", RISK[3])
    old = rec(a_call_id="y", invite_at=T, policy_decisions=(("lists", "enforce", "reject"),))  # before notes
    assert flagging_step(old) == ("lists", "enforce", "")


def test_cli_and_text(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", "--db", str(db), "--campaigns", "--since", "100000d", "--json"])
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["campaigns"][0]["calls"] == 13
    text = format_campaigns(rep)
    assert "4 campaign(s)" in text and "risk_score:first_seen_share" in text and "carrier 198.51.100.7:5060" in text
