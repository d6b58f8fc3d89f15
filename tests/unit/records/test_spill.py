"""The spill file (proxy.records_spill) and the PostgreSQL writer's use of it while the database is unreachable.

Real files, real kernel failures (RLIMIT_FSIZE makes write() fail with EFBIG in a child process), no mocks. The
writer tests point it at a loopback port nothing listens on: every connection is refused at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.config import RecordsSettings
from proxy.records import CallRecord
from proxy.records_pg import PgRecordWriter
from proxy.records_spill import Spill, SpillLocked
from proxy.recordstore import make_writer
from tests.services import free_tcp_port
from tests.unit.records.helpers import rec

ROOT = Path(__file__).resolve().parents[3]


def batch(start: int, n: int) -> list[CallRecord]:
    return [rec(a_call_id=f"c{i}", invite_at=1_700_000_000.0 + i, failures=("x5u-fetch",) if i % 2 else (),
                policy_decisions=(("velocity", "enforce", "reject"),) if i % 3 == 0 else ())
            for i in range(start, start + n)]


def replay_all(s: Spill) -> list[tuple[str, list[CallRecord]]]:
    out = []
    while (item := s.next_batch()) is not None:
        b, after = item
        out.append((b.batch, list(b.records)))
        s.advance(after)
    return out


def test_batches_come_back_in_order_field_for_field(tmp_path: Path) -> None:
    s = Spill(tmp_path / "sub" / "spill", 1 << 20)
    s.open()
    assert s.path.exists() and s.pending_bytes == 0
    sent = [(f"b{k}", batch(k * 10, 10)) for k in range(5)]
    for bid, recs in sent:
        assert s.append(bid, recs)
    assert s.pending_bytes == s.path.stat().st_size > 0
    assert replay_all(s) == sent  # CallRecords equal, tuples of tuples included
    # Everything replayed: the file is emptied, and appending starts again from zero.
    assert s.size == s.head == 0 and s.path.stat().st_size == 0
    assert s.append("again", batch(0, 1)) and replay_all(s) == [("again", batch(0, 1))]
    s.close()


def test_head_survives_only_in_memory_a_reopen_replays_from_the_start(tmp_path: Path) -> None:
    """A crash mid-replay: the batches before the head are read again (the batch ids make that harmless)."""
    s = Spill(tmp_path / "spill", 1 << 20)
    s.open()
    for k in range(3):
        s.append(f"b{k}", batch(k, 1))
    first = s.next_batch()
    assert first is not None
    s.advance(first[1])
    s.close()
    again = Spill(tmp_path / "spill", 1 << 20)
    again.open()
    assert [bid for bid, _ in replay_all(again)] == ["b0", "b1", "b2"]


def test_torn_last_line_is_cut_at_open_and_appends_go_on_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "spill"
    s = Spill(path, 1 << 20)
    s.open()
    s.append("b0", batch(0, 3))
    s.append("b1", batch(3, 3))
    whole = path.stat().st_size
    s.close()
    # A crash in the middle of the third append: half a line, no newline.
    line = Spill(tmp_path / "other", 1 << 20)
    line.open()
    line.append("b2", batch(6, 3))
    torn = (tmp_path / "other").read_bytes()[:50]
    with path.open("ab") as fh:
        fh.write(torn)
    reopened = Spill(path, 1 << 20)
    reopened.open()
    assert reopened.torn_bytes == 50 and reopened.size == whole == path.stat().st_size
    assert reopened.append("b3", batch(9, 1))  # starts on a line of its own
    assert [bid for bid, _ in replay_all(reopened)] == ["b0", "b1", "b3"]
    assert reopened.corrupt_lines == 0


def test_a_file_that_is_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "spill"
    torn = b'{"batch":"b0","records":[{"a_call_id":"x"'
    path.write_bytes(torn)
    s = Spill(path, 1 << 20)
    s.open()
    assert s.torn_bytes == len(torn)
    assert s.size == 0 and path.stat().st_size == 0 and s.next_batch() is None


def test_a_corrupt_complete_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spill"
    s = Spill(path, 1 << 20)
    s.open()
    s.append("b0", batch(0, 1))
    s.close()
    with path.open("ab") as fh:
        fh.write(b"this is not a batch\n")
    s = Spill(path, 1 << 20)
    s.open()
    s.append("b2", batch(2, 1))
    assert [bid for bid, _ in replay_all(s)] == ["b0", "b2"]
    assert s.corrupt_lines == 1 and s.torn_bytes == 0


def test_the_bound_refuses_then_compaction_makes_room(tmp_path: Path) -> None:
    probe = Spill(tmp_path / "probe", 1 << 20)
    probe.open()
    probe.append("b0", batch(0, 5))
    line = probe.size
    s = Spill(tmp_path / "spill", 3 * line)
    s.open()
    assert all(s.append(f"b{k}", batch(0, 5)) for k in range(3))
    assert not s.append("b3", batch(0, 5))  # full: refused, file untouched
    assert s.size == 3 * line == s.path.stat().st_size
    first = s.next_batch()
    assert first is not None
    s.advance(first[1])  # one batch replayed: compaction can drop it
    assert s.append("b3", batch(0, 5))
    assert s.head == 0 and s.size == 3 * line == s.path.stat().st_size
    assert [bid for bid, _ in replay_all(s)] == ["b1", "b2", "b3"]


def test_one_process_per_spill_file(tmp_path: Path) -> None:
    a = Spill(tmp_path / "spill", 1 << 20)
    a.open()
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from proxy.records_spill import Spill, SpillLocked
        try:
            Spill({str(tmp_path / "spill")!r}, 1 << 20).open()
        except SpillLocked as exc:
            print("locked:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "locked:" in out.stdout, out.stdout + out.stderr
    a.close()
    b = Spill(tmp_path / "spill", 1 << 20)
    b.open()  # free again once closed
    b.close()
    assert issubclass(SpillLocked, OSError)


def test_a_failed_append_is_cut_back_and_what_was_on_disk_stays(tmp_path: Path) -> None:
    """The file-size limit of a child process makes write() fail with EFBIG part-way through a batch: append
    raises, the partial line is removed, and every batch appended before replays intact."""
    path = tmp_path / "spill"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from proxy.records_spill import Spill
        from tests.unit.records.test_spill import batch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        s = Spill({str(path)!r}, 1 << 20)
        s.open()
        ok = 0
        try:
            while True:
                s.append(f"b{{ok}}", batch(ok * 7, 7))
                ok += 1
        except OSError as exc:
            print(ok, s.size, exc.errno)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    ok, size, errno = map(int, out.stdout.split())
    assert ok >= 2 and errno == 27  # EFBIG
    assert path.stat().st_size == size  # the partial line was cut
    s = Spill(path, 1 << 20)
    s.open()
    assert s.torn_bytes == 0
    assert [bid for bid, _ in replay_all(s)] == [f"b{k}" for k in range(ok)]


# --- the PostgreSQL writer with no database to reach ----------------------------------------------------------


def _unreachable(tmp_path: Path, **kw: object) -> RecordsSettings:
    port = free_tcp_port()  # nothing listens there: every connection is refused at once
    return RecordsSettings(backend="postgresql", dsn=f"postgresql://stirgate@127.0.0.1:{port}/records",
                           spill_path=str(tmp_path / "records.spill"), flush_interval=0.01, retry_interval=60,
                           batch_size=10, **kw)  # type: ignore[arg-type]


def test_unreachable_database_spills_every_record_in_order(tmp_path: Path) -> None:
    settings = _unreachable(tmp_path)
    w = make_writer(settings)
    assert isinstance(w, PgRecordWriter)
    sent = batch(0, 35)
    for r in sent:
        assert w.put(r)
    w._drain()
    assert (w.written, w.spilled, w.spill_dropped, w.lost) == (0, 35, 0, 0)
    assert w.write_errors == 1 and w.db_up is False  # one refused connection; the next waits retry_interval
    assert w.spill_bytes == Path(settings.spill_path).stat().st_size > 0
    for r in batch(35, 5):
        w.put(r)
    assert w.flush_and_close() == 0  # kept in the spill: nothing lost
    assert w.spilled == 40
    s = Spill(settings.spill_path, 1 << 30)
    s.open()
    assert [r for _, recs in replay_all(s) for r in recs] == batch(0, 40)


def test_a_restarted_writer_appends_behind_what_the_last_one_spilled(tmp_path: Path) -> None:
    settings = _unreachable(tmp_path)
    first = make_writer(settings)
    for r in batch(0, 12):
        first.put(r)
    assert first.flush_and_close() == 0
    # A crash in the middle of an append left a torn line: the next writer cuts it, then appends cleanly.
    with Path(settings.spill_path).open("ab") as fh:
        fh.write(b'{"batch":"torn","records":[{"a_call_')
    second = make_writer(settings)
    for r in batch(12, 8):
        second.put(r)
    assert second.flush_and_close() == 0 and second.spilled == 8
    s = Spill(settings.spill_path, 1 << 30)
    s.open()
    assert s.torn_bytes == 0  # cut by the second writer already
    assert [r.a_call_id for _, recs in replay_all(s) for r in recs] == [f"c{i}" for i in range(20)]


def test_a_full_spill_drops_and_counts(tmp_path: Path) -> None:
    settings = _unreachable(tmp_path, spill_max_bytes=12_000)  # about two batches of 10
    w = make_writer(settings)
    for r in batch(0, 60):
        w.put(r)
    assert w.flush_and_close() == 0
    assert w.spilled > 0 and w.spill_dropped > 0 and w.spilled + w.spill_dropped == 60
    assert os.path.getsize(settings.spill_path) <= 12_000


def test_no_spill_configured_counts_every_record_given_up(tmp_path: Path) -> None:
    w = make_writer(_unreachable(tmp_path, spill_max_bytes=0))
    for r in batch(0, 15):
        w.put(r)
    assert w.flush_and_close() == 0
    assert (w.spilled, w.spill_dropped, w.written) == (0, 15, 0)


@pytest.mark.parametrize("worker", [1, 3])
def test_each_worker_has_its_own_spill(tmp_path: Path, worker: int) -> None:
    settings = _unreachable(tmp_path)
    w = make_writer(settings, worker=worker)
    w.put(batch(0, 1)[0])
    w.flush_and_close()
    assert Path(f"{settings.spill_path}.{worker}").stat().st_size > 0
    assert not Path(settings.spill_path).exists()
