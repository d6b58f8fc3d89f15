"""RecordWriter: a full queue drops and counts without blocking; flush on close; retention; unwritable DB."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from proxy.config import RecordsSettings
from proxy.records import COLUMNS, INSERT_SQL, RecordWriter, open_db, prune, record_from_row, row_of
from tests.unit.records.helpers import rec


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    w = RecordWriter(RecordsSettings(path=str(tmp_path / "r.db"), queue_size=100, batch_size=1000))
    r = rec()
    t = time.perf_counter()
    accepted = [w.put(r) for _ in range(10_000)]  # writer not started: nothing drains
    elapsed = time.perf_counter() - t
    assert sum(accepted) == 100 and w.dropped == 9_900 and w.depth == 100
    assert elapsed < 0.5  # ~0.2 us a put; no put ever waits
    assert w.flush_and_close() == 0
    assert _count(tmp_path / "r.db") == 100 and w.written == 100


def test_writer_thread_commits_batches_and_flushes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.db"
    w = RecordWriter(RecordsSettings(path=str(path), batch_size=50, flush_interval=0.05, retention_days=0))
    w.start()
    for i in range(1_234):
        assert w.put(rec(a_call_id=f"c{i}", invite_at=1_700_000_000.0 + i))
    deadline = time.monotonic() + 5
    while w.written < 1_200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.written >= 1_200  # committed while running, not only at close
    assert w.flush_and_close() == 0
    assert not w.alive and w.written == 1_234 and _count(path) == 1_234
    assert not w.put(rec()) and w.dropped == 1  # closed: counted, not queued
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE a_call_id = 'c7'").fetchone()
    assert record_from_row(row) == rec(a_call_id="c7", invite_at=1_700_000_007.0)


def test_put_does_not_wait_for_a_slow_database(tmp_path: Path) -> None:
    """Another process holding the write lock stalls the writer thread, never put()."""
    path = tmp_path / "r.db"
    open_db(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    w = RecordWriter(RecordsSettings(path=str(path), batch_size=10, flush_interval=0.01, queue_size=1000,
                                     retention_days=0))
    w.start()
    worst = 0.0
    for _ in range(500):
        t = time.perf_counter()
        w.put(rec())
        worst = max(worst, time.perf_counter() - t)
        time.sleep(0.0005)
    assert worst < 0.05  # a GIL switch at most; the writer sits in sqlite's busy wait
    blocker.execute("ROLLBACK")
    blocker.close()
    assert w.flush_and_close() == 0 and _count(path) == 500


def test_unwritable_database_is_counted_never_raised(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    w = RecordWriter(RecordsSettings(path=str(not_a_dir / "r.db"), flush_interval=0.01, batch_size=10))
    w.start()
    for _ in range(25):
        assert w.put(rec())
    deadline = time.monotonic() + 5
    while w.write_errors < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.alive and w.write_errors >= 2
    left = w.flush_and_close()
    assert left == 0 and w.written == 0 and w.lost == 25  # all accounted for, nothing raised


def test_database_broken_then_fixed_keeps_the_batch(tmp_path: Path) -> None:
    """A failed batch is retried on the next cycle: a transient failure loses nothing."""
    path = tmp_path / "r.db"
    open_db(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    w = RecordWriter(RecordsSettings(path=str(path), flush_interval=0.01, batch_size=5))
    w._connection().execute("PRAGMA busy_timeout = 0")  # fail at once instead of waiting
    for _ in range(5):
        w.put(rec())
    w._drain()
    assert w.write_errors == 1 and w.written == 0 and w.lost == 0
    blocker.execute("ROLLBACK")
    blocker.close()
    w._drain()
    assert w.written == 5 and _count(path) == 5
    w.flush_and_close()


def test_retention_prunes_old_records(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    now = 1_700_000_000.0
    conn = open_db(path)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(INSERT_SQL, [row_of(rec(invite_at=now - d * 86400 - 1)) for d in range(10)])
    conn.close()
    w = RecordWriter(RecordsSettings(path=str(path), retention_days=3, flush_interval=0.01), clock=lambda: now)
    w.start()
    deadline = time.monotonic() + 5
    while w.pruned < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    w.flush_and_close()
    assert w.pruned == 7 and _count(path) == 3  # days 0, 1, 2 kept
    conn = open_db(path)
    assert prune(conn, now, chunk=1) == 3  # chunked deletes finish the job
    conn.close()


def test_zero_retention_keeps_everything(tmp_path: Path) -> None:
    w = RecordWriter(RecordsSettings(path=str(tmp_path / "r.db"), retention_days=0), clock=lambda: 1e12)
    w.put(rec(invite_at=1.0))
    w._maybe_prune()
    w.flush_and_close()
    assert w.pruned == 0 and _count(tmp_path / "r.db") == 1


def test_put_from_sip_thread_while_writer_runs(tmp_path: Path) -> None:
    """Concurrent producer: every record is either written or counted as dropped."""
    w = RecordWriter(RecordsSettings(path=str(tmp_path / "r.db"), queue_size=500, batch_size=100,
                                     flush_interval=0.01, retention_days=0))
    w.start()

    def produce() -> None:
        for i in range(20_000):
            w.put(rec(a_call_id=str(i)))

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    assert w.flush_and_close() == 0
    assert w.written + w.dropped == 20_000 and _count(tmp_path / "r.db") == w.written


def test_workers_opening_a_new_database_at_once_all_get_it(tmp_path: Path) -> None:
    """`--workers N` on SQLite: every worker's first flush opens the same new file at about the same moment.
    Two processes released together, 20 times over, each on a new file: every open succeeds (before, the one
    that lost the race to switch the file to WAL failed at once, in about two of three trials)."""
    failed = []
    for trial in range(20):
        path = tmp_path / f"records{trial}.sqlite3"
        go = time.time() + 0.05
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:  # a worker
                code = 1
                try:
                    while time.time() < go:  # released together (a spin: a sleep would blur the moment)
                        pass
                    conn = open_db(path)
                    conn.execute("SELECT count(*) FROM calls").fetchone()
                    conn.close()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status):
                failed.append(trial)
    assert failed == []
