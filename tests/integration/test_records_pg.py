"""The PostgreSQL records backend against a real PostgreSQL (tests/services.py): schema and partitions, the same
answers as SQLite from the same query code, retention by dropping partitions, the spill while the server is
stopped or killed, ordered and idempotent replay, a restart with records still spilled, hostile text.

Writers run in this process (a thread each, as in stirgate); what is asserted is what the database holds,
read with plain SQL or through the traceback/report code the CLI and API use.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from proxy.config import RecordsSettings
from proxy.records import CallRecord, RecordWriter
from proxy.records_pg import BATCHES, PgRecordWriter, partition_name
from proxy.records_spill import Spill
from proxy.recordstore import make_writer, traceback
from proxy.reports import per_minute, report
from tests.services import Postgres, free_tcp_port
from tests.unit.records.helpers import rec

NOW = time.time()
DAY = 86400


def pg_settings(dsn: str, tmp_path: Path, **kw: Any) -> RecordsSettings:
    base: dict[str, Any] = {"flush_interval": 0.02, "retry_interval": 0.1, "connect_timeout": 2, "batch_size": 100,
                            "retention_days": 0}
    return RecordsSettings(backend="postgresql", dsn=dsn, spill_path=str(tmp_path / "records.spill"),
                           **(base | kw))


def records(n: int, start: int = 0, at: float = NOW, step: float = 1.0) -> list[CallRecord]:
    """Calls from a few callers to a few destinations, with every kind of field filled somewhere."""
    out = []
    for i in range(start, start + n):
        out.append(rec(
            a_call_id=f"c{i}-{uuid.uuid4().hex[:6]}",
            orig_signaled=f"+1212555{i % 7:04d}", orig=f"1212555{i % 7:04d}",
            dest_signaled=f"+1555123{i % 3:04d}", dest=f"1555123{i % 3:04d}",
            invite_at=at + i * step, answered_at=at + i * step + 1 if i % 4 else None,
            ended_at=at + i * step + 4, duration=3.0 if i % 4 else 0.0, status=200 if i % 4 else 486,
            identity_present=bool(i % 2), verification=("passed", "failed", "missing")[i % 3],
            verstat=("TN-Validation-Passed", "TN-Validation-Failed", None)[i % 3],
            attest="A", spc="4321", failures=("x5u-fetch",) if i % 3 == 1 else (),
            policy_decisions=(("velocity", "enforce", "tag"),) if i % 5 == 0 else (), signed=i % 6 == 0,
        ))  # fmt: skip
    return out


def run_writer(w: Any, recs: list[CallRecord]) -> None:
    w.start()
    for r in recs:
        assert w.put(r)
    wait_for(lambda: w.written >= len(recs), f"{len(recs)} records written", w)


def wait_for(predicate: Any, what: str, w: Any = None, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            state = f" (written {w.written}, spilled {w.spilled}, errors {w.write_errors})" if w is not None else ""
            raise AssertionError(f"timed out waiting for {what}{state}")
        time.sleep(0.02)


def ids_in_db(pg: Postgres, dbname: str) -> list[str]:
    return [r[0] for r in pg.execute("SELECT a_call_id FROM calls", dbname=dbname)]


def dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


# ----------------------------------------------------------------------------------------------- schema
def test_records_land_with_partitions_ahead_and_both_indexes(pg_server: Postgres, pg_dsn: str,
                                                             tmp_path: Path) -> None:  # fmt: skip
    w = make_writer(pg_settings(pg_dsn, tmp_path, partitions_ahead=2))
    recs = records(250)
    run_writer(w, recs)
    assert w.flush_and_close() == 0 and (w.written, w.spilled, w.write_errors) == (250, 0, 0)
    db = dbname(pg_dsn)
    assert sorted(ids_in_db(pg_server, db)) == sorted(r.a_call_id for r in recs)
    today = int(NOW) // DAY
    parts = {r[0] for r in pg_server.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'calls'::regclass", dbname=db)}  # fmt: skip
    assert {partition_name(d) for d in range(today - 1, today + 3)} <= parts
    # Each partition has the traceback B-tree and the BRIN.
    idx = pg_server.execute(f"SELECT indexdef FROM pg_indexes WHERE tablename = '{partition_name(today)}'", dbname=db)
    defs = " | ".join(r[0] for r in idx)
    assert "btree (orig, dest, invite_at)" in defs and "brin (invite_at)" in defs, defs
    assert pg_server.execute(f"SELECT count(*), sum(records) FROM {BATCHES}", dbname=db) == [(3, 250)]


def test_traceback_uses_the_index_in_the_partitions_of_its_window(pg_server: Postgres, pg_dsn: str,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    run_writer(w := make_writer(pg_settings(pg_dsn, tmp_path)), records(300, at=NOW - 3 * DAY, step=DAY / 100))
    w.flush_and_close()
    db = dbname(pg_dsn)
    # A few hundred rows make a sequential scan cheaper: forbid it to see what the index path is (the
    # benchmark shows the planner choosing it by itself among 10 million rows).
    with pg_server.connect(db) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT * FROM calls WHERE orig IN (%s) AND dest IN (%s) AND invite_at BETWEEN %s AND %s",
            ("12125550001", "15551230001", NOW - 300, NOW + 300)))  # fmt: skip
    today = partition_name(int(NOW) // DAY)
    scanned = {p for p in (partition_name(d) for d in range(int(NOW) // DAY - 4, int(NOW) // DAY + 5)) if p in plan}
    assert scanned <= {today, partition_name(int(NOW) // DAY - 1)} and today in scanned, plan
    assert "Index Scan using" in plan and "orig_dest_invite_at_idx" in plan, plan


def test_pg_and_sqlite_give_the_same_answers(pg_server: Postgres, pg_dsn: str, tmp_path: Path) -> None:
    """One record model, one query text: the same records written to both backends read back the same."""
    recs = records(400, at=NOW - 1800, step=4.0)
    lite = RecordWriter(RecordsSettings(path=str(tmp_path / "r.sqlite3"), retention_days=0))
    for r in recs:
        lite.put(r)
    lite.flush_and_close()
    pgs = pg_settings(pg_dsn, tmp_path)
    run_writer(w := make_writer(pgs), recs)
    w.flush_and_close()
    sqlite_path = str(tmp_path / "r.sqlite3")
    for orig in ("+12125550001", "2125550003"):
        lite_calls = traceback(sqlite_path, orig, "+15551230002", NOW, 3600, country_code="1")
        pg_calls = traceback(pg_dsn, orig, "+15551230002", NOW, 3600, country_code="1")
        assert lite_calls and pg_calls == lite_calls  # field for field, in invite order
    assert set(traceback(pgs, "12125550001", "15551230000", NOW - 1800, 7200)) <= set(recs)
    rep_lite = report(sqlite_path, NOW - 3600, NOW + 3600)
    rep_pg = report(pgs, NOW - 3600, NOW + 3600)
    assert rep_pg == rep_lite and rep_pg["calls"] == 400
    assert any(row["flags"] for rows in rep_pg["sources"].values() for row in rows)
    assert per_minute(pgs, NOW - 1800, NOW) == per_minute(sqlite_path, NOW - 1800, NOW)


def test_retention_drops_whole_partitions(pg_server: Postgres, pg_dsn: str, tmp_path: Path) -> None:
    clock = [NOW - 10 * DAY]
    settings = pg_settings(pg_dsn, tmp_path, retention_days=3, prune_interval=0.05, partitions_ahead=1)
    old = make_writer(settings, clock=lambda: clock[0])
    run_writer(old, records(100, at=NOW - 10 * DAY, step=DAY / 10))  # ten days, ten records a day
    old.flush_and_close()
    db = dbname(pg_dsn)
    assert pg_server.execute("SELECT count(*) FROM calls", dbname=db) == [(100,)]
    clock[0] = NOW
    w = make_writer(settings, clock=lambda: clock[0])
    assert isinstance(w, PgRecordWriter)
    w.start()
    wait_for(lambda: w.partitions_dropped > 0, "old partitions dropped", w)
    w.flush_and_close()
    kept = pg_server.execute("SELECT min(invite_at) FROM calls", dbname=db)[0][0]
    assert kept >= (int(NOW - 3 * DAY) // DAY) * DAY  # nothing older than the retention's first whole day
    left = pg_server.execute("SELECT count(*) FROM calls", dbname=db)[0][0]
    assert 30 <= left <= 40, left
    today = int(NOW) // DAY
    assert not pg_server.execute(f"SELECT to_regclass('{partition_name(today - 5)}')", dbname=db)[0][0]
    assert pg_server.execute(f"SELECT to_regclass('{partition_name(today + 1)}')", dbname=db)[0][0]


def test_many_nodes_creating_the_schema_at_once(pg_server: Postgres, pg_dsn: str, tmp_path: Path) -> None:
    """Four writers start together on an empty database: the advisory lock orders their DDL, none fails."""
    writers = [make_writer(pg_settings(pg_dsn, tmp_path / f"n{i}")) for i in range(4)]
    batches = [records(50, start=i * 50) for i in range(4)]
    go = threading.Barrier(4)

    def node(i: int) -> None:
        go.wait()
        for r in batches[i]:
            writers[i].put(r)
        writers[i].flush_and_close()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [w.written for w in writers] == [50] * 4 and all(w.write_errors == 0 for w in writers)
    assert len(ids_in_db(pg_server, dbname(pg_dsn))) == 200


def test_nul_bytes_in_a_header_do_not_block_the_queue(pg_server: Postgres, pg_dsn: str, tmp_path: Path) -> None:
    recs = records(10)
    recs[3] = rec(a_call_id="hostile", display_name="Mal\x00lory", invite_at=NOW)
    run_writer(w := make_writer(pg_settings(pg_dsn, tmp_path)), recs)
    w.flush_and_close()
    assert (w.written, w.lost) == (10, 0)
    names = pg_server.execute("SELECT display_name FROM calls WHERE a_call_id = 'hostile'", dbname=dbname(pg_dsn))
    assert names == [("Mallory",)]


# ----------------------------------------------------------------------------------------------- outages
@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
def test_server_down_mid_stream_nothing_lost_order_kept(pg_private: Postgres, tmp_path: Path, crash: bool) -> None:
    dsn = pg_private.create_database("rec")
    w = make_writer(pg_settings(dsn, tmp_path))
    assert isinstance(w, PgRecordWriter)
    before, during, after = records(300, 0), records(500, 300), records(200, 800)
    run_writer(w, before)
    with pg_private.stopped(crash=crash):
        for r in during:
            assert w.put(r)
        wait_for(lambda: w.spilled == len(during) and w.depth == 0, "the records spilled", w)
        assert w.db_up is False and w.written == len(before) and w.spill_bytes > 0
    for r in after:
        w.put(r)
    wait_for(lambda: w.written == 1000 and w.spill_bytes == 0, "the spill replayed", w)
    # The records put after the restart queue behind the spilled ones (through the spill while it is replayed).
    assert w.replayed == w.spilled >= len(during) and w.spill_dropped == 0 and w.db_up is True
    assert w.flush_and_close() == 0
    # Committed in the order the writer took them: each batch is one transaction, and transaction ids grow, so
    # ordering the rows by the id of the transaction that inserted them (xmin) keeps the order taken.
    expected = [r.a_call_id for r in before + during + after]
    position = {cid: i for i, cid in enumerate(expected)}
    rows = pg_private.execute("SELECT a_call_id, xmin::text::bigint FROM calls", dbname="rec")
    assert sorted(position[cid] for cid, _ in rows) == list(range(len(expected)))  # each once, none lost
    assert [cid for cid, _ in sorted(rows, key=lambda r: (r[1], position[r[0]]))] == expected
    assert Path(tmp_path / "records.spill").stat().st_size == 0


def test_records_spilled_at_shutdown_are_replayed_by_the_next_run(pg_private: Postgres, tmp_path: Path) -> None:
    dsn = pg_private.create_database("rec")
    settings = pg_settings(dsn, tmp_path)
    first = make_writer(settings)
    run_writer(first, records(50))
    pg_private.stop()
    first.put(records(1, 50)[0])
    recs = records(120, 51)
    for r in recs:
        first.put(r)
    assert first.flush_and_close() == 0 and first.spilled == 121 and first.written == 50
    pg_private.start()
    second = make_writer(settings)
    second.start()  # nothing queued: the spill alone is replayed
    wait_for(lambda: second.replayed == 121, "the previous run's spill replayed", second)
    second.flush_and_close()
    assert len(ids_in_db(pg_private, "rec")) == 171


def test_replaying_a_batch_already_committed_does_not_double_it(pg_server: Postgres, pg_dsn: str,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """The commit of a batch was sent and the connection died before the answer: the writer spilled it with its
    id. Its replay finds the id committed and skips the batch."""
    settings = pg_settings(pg_dsn, tmp_path)
    w = make_writer(settings)
    assert isinstance(w, PgRecordWriter)
    recs = records(40)
    assert w._write("7d2c1b0e-5a1f-4c3e-9b7a-000000000001", recs)  # committed
    spill = Spill(settings.spill_path, 1 << 20)
    spill.open()
    spill.append("7d2c1b0e-5a1f-4c3e-9b7a-000000000001", recs)  # ... and spilled, as after an unknown outcome
    spill.append("7d2c1b0e-5a1f-4c3e-9b7a-000000000002", records(5, 40))
    spill.close()
    w.start()
    wait_for(lambda: w.replayed == 5, "the second batch replayed", w)
    w.flush_and_close()
    assert w.replay_duplicates == 40
    assert len(ids_in_db(pg_server, dbname(pg_dsn))) == 45


def test_torn_spill_from_a_crash_replays_its_complete_batches(pg_server: Postgres, pg_dsn: str,
                                                              tmp_path: Path) -> None:  # fmt: skip
    settings = pg_settings(pg_dsn, tmp_path)
    spill = Spill(settings.spill_path, 1 << 20)
    spill.open()
    spill.append(str(uuid.uuid4()), records(30))
    spill.append(str(uuid.uuid4()), records(30, 30))
    spill.close()
    with Path(settings.spill_path).open("ab") as fh:
        fh.write(b'{"batch":"' + str(uuid.uuid4()).encode() + b'","records":[{"a_call_id":"half')
    w = make_writer(settings)
    assert isinstance(w, PgRecordWriter)
    w.start()
    wait_for(lambda: w.replayed == 60, "the complete batches replayed", w)
    w.flush_and_close()
    assert w.spill is not None and w.spill.torn_bytes > 0
    assert len(ids_in_db(pg_server, dbname(pg_dsn))) == 60


def test_queries_say_when_the_database_is_unreachable(pg_private: Postgres) -> None:
    from proxy.records import RecordsError

    dsn = pg_private.create_database("rec")
    with pytest.raises(RecordsError, match="no calls table"):
        traceback(dsn, "12125550001", "15551230001", NOW)
    pg_private.stop()
    with pytest.raises(RecordsError, match=f"127.0.0.1:{pg_private.port}/rec"):
        report(dsn, NOW - 60, NOW)


def test_api_reader_pool_survives_a_server_restart(pg_private: Postgres, tmp_path: Path) -> None:
    """The API keeps PostgreSQL sessions between requests; after a restart the stale one is replaced, and the
    request that met it still gets its answer."""
    from proxy.recordstore import ReaderPool

    dsn = pg_private.create_database("rec")
    settings = pg_settings(dsn, tmp_path)
    run_writer(w := make_writer(settings), records(20))
    w.flush_and_close()
    pool = ReaderPool(settings)
    ask = pool.run

    def lookup(reader: Any) -> int:
        return len(traceback(reader, "12125550001", "15551230001", NOW, 3600))

    first = ask(lookup)
    assert first > 0 and len(pool._idle) == 1
    pg_private.restart()
    assert ask(lookup) == first  # the pooled session died with the server: replaced, answered
    pool.close()
    assert pool._idle == []


def test_a_partition_dropped_under_the_writer_is_made_again(pg_server: Postgres, pg_dsn: str, tmp_path: Path) -> None:
    """A DBA (or another node with a shorter retention) drops the partition this writer knows: its next COPY
    fails with "no partition found for row"; the writer makes the partition again and the batch goes in."""
    w = make_writer(pg_settings(pg_dsn, tmp_path))
    assert isinstance(w, PgRecordWriter)
    assert w._write(str(uuid.uuid4()), records(5))
    db = dbname(pg_dsn)
    pg_server.execute(f"DROP TABLE {partition_name(int(NOW) // DAY)}", dbname=db)
    assert w._write(str(uuid.uuid4()), records(7, 5))
    assert (w.written, w.spilled, w.write_errors) == (12, 0, 0)
    assert len(ids_in_db(pg_server, db)) == 7  # the first five went with the dropped partition
    w.flush_and_close()


def test_an_unreachable_database_leaves_no_garbage(tmp_path: Path) -> None:
    """stirgate runs with the automatic cyclic GC off: each failed reconnect while PostgreSQL is down must not leave
    its exception chain for the periodic full pass (before: 67 objects per attempt, one attempt per
    `retry_interval` for as long as the database stays down)."""
    dsn = f"postgresql://stirgate@127.0.0.1:{free_tcp_port()}/records"  # nothing listens there
    writer = PgRecordWriter(RecordsSettings(backend="postgresql", dsn=dsn, retry_interval=1e-6, connect_timeout=2,
                                            spill_path=str(tmp_path / "spill")))
    assert writer._connection() is None
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            assert writer._connection() is None  # refused at once; retry_interval has passed each time
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert writer.write_errors == 21
