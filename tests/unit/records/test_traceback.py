"""Traceback over a small database returns exactly the right calls; reports; the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from proxy.records import INSERT_SQL, CallRecord, open_db, row_of, tn_variants
from proxy.recordstore import traceback
from proxy.reports import parse_duration, parse_time, per_minute, plot_per_minute, report
from proxy.traceback_cmd import register
from tests.unit.records.helpers import rec

T = 1_717_000_000.0  # 2024-05-29T16:26:40Z


def _db(path: Path, records: list[CallRecord]) -> Path:
    conn = open_db(path)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(INSERT_SQL, [row_of(r) for r in records])
    conn.close()
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    records = [
        rec(a_call_id="hit-1", invite_at=T - 299, spc="1234", attest="B", origid="o-1", source_ip="198.51.100.7"),
        rec(a_call_id="hit-2", invite_at=T + 120, spc="1234", attest="B", origid="o-1"),
        rec(a_call_id="hit-edge", invite_at=T + 300),
        rec(a_call_id="late", invite_at=T + 301),
        rec(a_call_id="early", invite_at=T - 3600),
        rec(a_call_id="other-orig", orig="12125550199", invite_at=T),
        rec(a_call_id="other-dest", dest="15551234568", invite_at=T),
        rec(a_call_id="swapped", orig="15551234567", dest="12125550100", invite_at=T),
    ]
    return _db(tmp_path / "records.sqlite3", records)


def test_traceback_exact_matches(db: Path) -> None:
    found = traceback(db, "+1 (212) 555-0100", "tel:+15551234567", T, 300)
    assert [r.a_call_id for r in found] == ["hit-1", "hit-2", "hit-edge"]
    first = found[0]
    assert (first.ingress, first.source_ip, first.source_port) == ("carrier", "198.51.100.7", 5060)
    assert (first.spc, first.attest, first.origid) == ("1234", "B", "o-1")
    assert [r.a_call_id for r in traceback(db, "12125550100", "15551234567", T, 60)] == []
    assert [r.a_call_id for r in traceback(db, "12125550100", "15551234567", T + 200, 100)] == ["hit-2", "hit-edge"]


def test_traceback_national_numbers_with_country_code(db: Path) -> None:
    assert tn_variants("2125550100", "1") == ["12125550100", "2125550100"]
    assert len(traceback(db, "2125550100", "5551234567", T, 300, country_code="1")) == 3
    with pytest.raises(ValueError):
        tn_variants("alice")


def test_traceback_uses_the_index(db: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM calls WHERE orig IN (?) AND dest IN (?) AND invite_at BETWEEN ? AND ?",
        ("1", "2", 0, 1)))
    assert "calls_orig_dest_at" in plan


def test_parse_time_and_duration() -> None:
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    assert parse_duration("2d") == 172800
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
    assert parse_time("2024-05-29T16:26:40Z") == T
    assert parse_time("2024-05-29 18:26:40+02:00") == T
    assert parse_time("2024-05-29T16:26:40") == T  # no offset: UTC
    assert parse_time(str(T)) == T
    assert parse_time("-10m", now=T) == T - 600 and parse_time("now", now=T) == T
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _robocall_db(tmp_path: Path) -> Path:
    records = []
    for i in range(30):  # a robocaller: short calls to many numbers, unsigned, via trunk "wholesale"
        records.append(rec(a_call_id=f"r{i}", orig="18005550000", dest=f"1555000{i:04d}", ingress="wholesale",
                           invite_at=T + i, answered_at=T + i + 1, ended_at=T + i + 3, duration=2.0,
                           verification="missing", verstat="No-TN-Validation", identity_present=False))
    for i in range(12):  # an ordinary caller: long calls, signed and verified
        records.append(rec(a_call_id=f"n{i}", orig="12125550100", dest="15551234567", invite_at=T + i,
                           answered_at=T + i + 1, ended_at=T + i + 200, duration=199.0, verification="passed",
                           verstat="TN-Validation-Passed", identity_present=True, spc="1234", origid="o-1"))
    for i in range(10):  # forged: fails verification
        records.append(rec(a_call_id=f"f{i}", orig="13105550000", dest=f"1555111{i:04d}", invite_at=T + i,
                           verification="failed", verstat="TN-Validation-Failed", identity_present=True,
                           status=438, end_reason="rejected:438", spc="6666"))
    records.append(rec(a_call_id="old", orig="18005550000", invite_at=T - 7200))
    return _db(tmp_path / "r.sqlite3", records)


def test_report_shares_and_flags(tmp_path: Path) -> None:
    rep = report(_robocall_db(tmp_path), T - 60, T + 3600)
    assert rep["calls"] == 52
    by_orig = {r["key"]: r for r in rep["sources"]["orig"]}
    assert [r["key"] for r in rep["sources"]["orig"]] == ["18005550000", "12125550100", "13105550000"]
    robo = by_orig["18005550000"]
    assert robo["calls"] == 30 and robo["answered"] == 30 and robo["short_share"] == 1.0
    assert robo["distinct_dests"] == 30 and robo["unsigned_share"] == 1.0 and robo["failed_share"] == 0.0
    assert set(robo["flags"]) == {"short-calls", "unsigned", "spread-destinations"}
    assert by_orig["12125550100"]["flags"] == [] and by_orig["12125550100"]["distinct_dests"] == 1
    assert by_orig["13105550000"]["failed_share"] == 1.0 and "failed-verification" in by_orig["13105550000"]["flags"]
    assert {r["key"]: r["calls"] for r in rep["sources"]["trunk"]} == {"wholesale": 30, "carrier": 22}
    assert {r["key"] for r in rep["sources"]["spc"]} == {"1234", "6666"}
    assert [r["key"] for r in rep["sources"]["origid"]] == ["o-1"]
    series = per_minute(tmp_path / "r.sqlite3", T - 60, T + 3600)
    assert sum(n for _, n in series["No-TN-Validation"]) == 30


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_cli_traceback_json_and_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["traceback", "--orig", "+12125550100", "--dest", "+15551234567", "--at", "2024-05-29T16:26:40Z",
                 "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["a_call_id"] for c in out["calls"]] == ["hit-1", "hit-2", "hit-edge"]
    assert out["calls"][0]["spc"] == "1234" and out["window_seconds"] == 300
    assert _cli(["traceback", "--orig", "12125550100", "--dest", "15551234567", "--at", str(T), "--window", "1m",
                 "--db", str(db)]) == 1
    assert "no matching calls" in capsys.readouterr().out
    assert _cli(["traceback", "--orig", "12125550100", "--dest", "15551234567", "--at", str(T + 120), "--window",
                 "10s", "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "198.51.100.7" not in table and "2024-05-29T16:28:40.000Z" in table and "hit-2" in table
    assert _cli(["traceback", "--orig", "x", "--dest", "1", "--at", "bad", "--db", str(db)]) == 2
    assert _cli(["traceback", "--orig", "1", "--dest", "1", "--at", "now", "--db", str(db) + ".missing"]) == 2


def test_cli_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import time

    import proxy.reports

    path = _robocall_db(tmp_path)
    monkeypatch.setattr(time, "time", lambda: T + 600)
    png = tmp_path / "plot.png"
    assert _cli(["report", "--since", "1h", "--db", str(path), "--json", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["calls"] == 52
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in captured.err and not png.exists()
    else:
        assert png.stat().st_size > 0
    assert _cli(["report", "--since", "1h", "--db", str(path)]) == 0
    text = capsys.readouterr().out
    assert "by orig" in text and "short-calls" in text and "18005550000" in text
    assert plot_per_minute({}, tmp_path / "x.png") in (None, "matplotlib is not installed (pip install matplotlib); "
                                                             "no plot drawn")
    assert proxy.reports.SHORT_CALL == 6.0
