"""Refused INVITEs leave no call record: their per-trunk counts go to the records (trunk_load) and a flooding
trunk shows in `stirgate report` (issue 19)."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pytest

from proxy.config import RecordsSettings
from proxy.records import RecordWriter, TrunkLoad, TrunkLoadMeter, open_db
from proxy.reports import format_report, report
from proxy.traceback_cmd import register
from tests.unit.core.sipfake import B2, B, Caller, Harness, make_engine
from tests.unit.core.test_admission import config

T = 1_800_000_000.0


def test_meter_rows_are_interval_deltas_of_trunks_that_offered() -> None:
    h = Harness(make_engine(config(max_loop_lag_ms=100)))
    meter = TrunkLoadMeter(T)
    h.engine.loop_lag = 0.5
    for _ in range(10):
        h.feed(Caller(h, addr=B).invite(), B)  # shed: loop-lag, the carrier alone
    h.feed(Caller(h, addr=B2).invite(), B2)  # within its share: taken
    rows = {r.trunk: r for r in meter.rows(h.engine.admission.gates(), T + 10)}
    assert set(rows) == {"carrier", "carrier2"}  # the customer offered nothing: no row
    assert (rows["carrier"].offered, rows["carrier"].admitted, rows["carrier"].shed) == (10, 0, 10)
    assert rows["carrier"].reasons == {"loop-lag": 10} and rows["carrier"].at == T and rows["carrier"].seconds == 10
    assert (rows["carrier2"].offered, rows["carrier2"].admitted, rows["carrier2"].shed) == (1, 1, 0)
    h.feed(Caller(h, addr=B).invite(), B)
    (again,) = meter.rows(h.engine.admission.gates(), T + 20)
    assert (again.trunk, again.offered, again.shed, again.reasons, again.at) == ("carrier", 1, 1, {"loop-lag": 1},
                                                                                 T + 10)


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "r.sqlite3"
    w = RecordWriter(RecordsSettings(path=str(path), flush_interval=0.01, retention_days=0))
    w.put_load([TrunkLoad(at=T, seconds=10, trunk="flooder", offered=60_000, admitted=9_000, shed=51_000,
                          reasons={"receive-queue": 50_000, "transactions": 1_000}),
                TrunkLoad(at=T, seconds=10, trunk="customer", offered=300, admitted=300, shed=0),
                TrunkLoad(at=T + 10, seconds=10, trunk="flooder", offered=60_000, admitted=1_000, shed=59_000,
                          reasons={"receive-queue": 59_000}),
                TrunkLoad(at=T + 10, seconds=10, trunk="partner", offered=400, admitted=200, shed=200,
                          reasons={"max-cps": 200})])
    w.start()
    assert w.flush_and_close() == 0
    return path


def test_report_lists_the_load_at_the_door_and_flags_the_flood(tmp_path: Path) -> None:
    rep = report(_db(tmp_path), T - 60, T + 600)
    load = {r["trunk"]: r for r in rep["trunk_load"]}
    assert [r["trunk"] for r in rep["trunk_load"]] == ["flooder", "partner", "customer"]
    assert load["flooder"]["offered"] == 120_000 and load["flooder"]["shed"] == 110_000
    assert load["flooder"]["reasons"] == {"receive-queue": 109_000, "transactions": 1_000}
    assert load["flooder"]["flags"] == ["flooding"]
    assert load["partner"]["flags"] == ["flooding", "over-contract"] and load["customer"]["flags"] == []
    text = format_report(rep)
    assert "load at the door by trunk" in text and "receive-queue:109000" in text
    line = next(x for x in text.splitlines() if x.startswith("flooder"))
    assert "120000" in line and "92%" in line and "flooding" in line


def test_an_old_database_without_the_table_still_reports(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE calls (invite_at REAL, orig TEXT, origid TEXT, spc TEXT, ingress TEXT, dest TEXT,"
                     " answered_at REAL, duration REAL, verification TEXT, identity_present INTEGER)")
    assert report(path, T, T + 1)["trunk_load"] == []
    # Opening it for writing brings the schema up to date (the writer does this at start).
    open_db(path).close()
    assert report(path, T, T + 1)["trunk_load"] == []


def test_cli_report_shows_the_flooding_trunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _db(tmp_path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "--since", str(T - 60), "--until", str(T + 600), "--db", str(path)])
    assert args.func(args) == 0
    assert "flooder" in capsys.readouterr().out
    args = parser.parse_args(["report", "--since", str(T - 60), "--until", str(T + 600), "--db", str(path), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["trunk_load"][0]["trunk"] == "flooder"
