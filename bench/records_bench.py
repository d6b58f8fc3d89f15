"""Call-records benchmark (issue 5): traceback lookup among 10 million records, and the CPU a record costs the
SIP thread. Standalone: `python bench/records_bench.py [--records 10000000] [--db PATH] [--keep]`.

Targets: a traceback lookup under 10 ms; recording (build + metrics + enqueue) at most 15 us of CPU per call.

Method
- The database is generated inside SQLite (a recursive CTE in 1M-row transactions: several times faster than
  executemany from Python), rows spread over 7 days, 2M calling and 5M called numbers, then the indexes are
  built, exactly the schema stirgate writes (proxy.records.SCHEMA).
- Lookups: 1000 (orig, dest, time) triples taken from random rows, each asked with a 5-minute window through
  `proxy.recordstore.traceback` on one warm read-only connection (the API and CLI shape), plus a cold series that
  opens a new connection per lookup. The page cache is warm after generation: a first lookup on a cold disk
  costs a few random reads more.
- SIP side: N calls run through an in-memory engine (INVITE/100/180/200/ACK/BYE/200, like
  scripts/engine_profile.py); the ended Call objects are kept, then the call-end hook stirgate installs
  (record_from_call + Metrics.observe_call + RecordWriter.put) is timed over them with time.thread_time while
  the writer thread runs and commits, so GIL hand-offs are included. The writer thread's own CPU per record
  is printed too (it is off the SIP path but shares the process).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.b2bua import Call  # noqa: E402
from proxy.config import RecordsSettings, load_config  # noqa: E402
from proxy.engine import Engine  # noqa: E402
from proxy.metrics import Metrics  # noqa: E402
from proxy.records import (  # noqa: E402
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    RecordWriter,
    call_end_hook,
    record_from_call,
)
from proxy.recordstore import traceback  # noqa: E402
from proxy.sip.message import parse  # noqa: E402

DAY = 86400.0
START = 1_717_000_000.0


# --- 1. the database ------------------------------------------------------------------------------------------------
def generate(path: Path, n: int, chunk: int = 1_000_000) -> float:
    """Fill `path` with n synthetic records; returns seconds taken."""
    t0 = time.perf_counter()
    if path.exists():
        path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # bulk load only; stirgate itself runs WAL
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute(SCHEMA[0])  # the table; indexes after the load
    exprs = {
        "a_call_id": "lower(hex(randomblob(8))) || '@pbx.example'",
        "b_call_id": "lower(hex(randomblob(6)))",
        "ingress": "'carrier' || (abs(random()) % 8)",
        "source_ip": "'198.51.100.' || (abs(random()) % 250)",
        "source_port": "5060",
        "transport": "'udp'",
        "orig_signaled": "'+1' || (2000000000 + (abs(random()) % 2000000))",
        "orig": "substr(orig_signaled, 2)",
        "dest_signaled": "'+1' || (3000000000 + (abs(random()) % 5000000))",
        "dest": "substr(dest_signaled, 2)",
        "display_name": "NULL",
        "identity_present": "1",
        "verification": "'passed'",
        "verstat": "'TN-Validation-Passed'",
        "attest": "char(65 + abs(random()) % 3)",
        "origid": "lower(hex(randomblob(16)))",
        "spc": "CAST(1000 + abs(random()) % 500 AS TEXT)",
        "cert_subject": "'CN=SHAKEN ' || (1000 + abs(random()) % 500)",
        "failures": "NULL",
        "signed": "0",
        "x5u_fetched": "0",
        "policy_decisions": "NULL",
        "egress": "'customer'",
        "status": "200",
        "invite_at": f"{START} + (i * {7 * DAY / n})",
        "answered_at": "invite_at + 2",
        "ended_at": "invite_at + 62",
        "duration": "60.0",
        "end_reason": "'bye-a'",
    }
    assert set(exprs) == set(COLUMNS), set(COLUMNS) ^ set(exprs)
    # Columns that refer to others are computed in a second SELECT level.
    inner = ", ".join(f"{exprs[c]} AS {c}" for c in COLUMNS if c not in ("orig", "dest", "answered_at", "ended_at"))
    outer = ", ".join(exprs[c] if c in ("orig", "dest", "answered_at", "ended_at") else c for c in COLUMNS)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        conn.execute("BEGIN")
        conn.execute(
            f"WITH RECURSIVE seq(i) AS (SELECT {done} UNION ALL SELECT i + 1 FROM seq WHERE i < {done + m - 1}) "
            f"INSERT INTO calls ({', '.join(COLUMNS)}) SELECT {outer} FROM (SELECT i, {inner} FROM seq)")
        conn.execute("COMMIT")
        done += m
        print(f"  {done:>11,} rows  {time.perf_counter() - t0:6.1f} s", end="\r", flush=True)
    print()
    for stmt in SCHEMA[1:]:
        conn.execute(stmt)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def lookups(path: Path, count: int = 1000) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    total = conn.execute("SELECT max(id) FROM calls").fetchone()[0]
    rng = random.Random(5)
    probes: list[tuple[str, str, float]] = []
    while len(probes) < count:
        row = conn.execute("SELECT orig, dest, invite_at FROM calls WHERE id = ?",
                           (rng.randint(1, total),)).fetchone()
        if row is not None:
            probes.append((row[0], row[1], row[2] + rng.uniform(-120, 120)))
    warm: list[float] = []
    found = 0
    for orig, dest, at in probes:
        t = time.perf_counter()
        found += len(traceback(conn, orig, dest, at, 300.0))
        warm.append(time.perf_counter() - t)
    conn.close()
    cold: list[float] = []
    for orig, dest, at in probes[:200]:
        t = time.perf_counter()
        traceback(path, orig, dest, at, 300.0)  # opens and closes its own connection
        cold.append(time.perf_counter() - t)
    warm.sort()
    cold.sort()
    return {
        "found_per_lookup": found / count,
        "warm_median_ms": statistics.median(warm) * 1e3,
        "warm_p99_ms": warm[int(len(warm) * 0.99) - 1] * 1e3,
        "warm_max_ms": warm[-1] * 1e3,
        "open_and_lookup_median_ms": statistics.median(cold) * 1e3,
        "open_and_lookup_p99_ms": cold[int(len(cold) * 0.99) - 1] * 1e3,
    }


# --- 2. the SIP side --------------------------------------------------------------------------------------------------
A = ("udp", "127.0.0.10", 5060)
B = ("udp", "127.0.0.20", 5060)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.10\r\ns=-\r\nc=IN IP4 127.0.0.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def _invite(i: int) -> bytes:
    return (
        f"INVITE sip:+15551234567@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-{i}-1\r\n"
        f"From: \"Caller {i % 97}\" <sip:+1212555{i % 10000:04d}@127.0.0.10:5060>;tag={i}x\r\n"
        f"To: <sip:+15551234567@127.0.0.1:5060>\r\nCall-ID: {i}-call@127.0.0.10\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.10:5060>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
    ).encode() + SDP


def _answer(req: bytes, code: int, body: bytes = b"") -> bytes:
    m = parse(req)
    hs = "".join(f"{h.raw}\r\n" for h in m.headers if h.key in ("via", "from", "call-id", "cseq"))
    to = m.header("to") or ""
    if code > 100 and ";tag=" not in to:
        to += ";tag=uas1"
    reason = "OK" if code == 200 else "Ringing"
    return (f"SIP/2.0 {code} {reason}\r\n{hs}To: {to}\r\nContact: <sip:127.0.0.20:5060>\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def ended_calls(n: int) -> tuple[Engine, list[Call]]:
    engine = Engine(load_config(ROOT / "examples" / "loopback.yaml"), {"udp": ("127.0.0.1", 5060)})
    engine.wall_offset = time.time()
    calls: list[Call] = []
    engine.call_end_hooks.append(calls.append)
    now = 0.0
    for i in range(n):
        now += 0.0005
        engine.receive(_invite(i), A, now)
        binv = engine.outbox[-1][0]
        engine.outbox.clear()
        engine.receive(_answer(binv, 180), B, now)
        engine.receive(_answer(binv, 200, SDP), B, now)
        a200 = parse(engine.outbox[-1][0])
        engine.outbox.clear()
        to = a200.header("to")
        ack = (f"ACK sip:x@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-{i}-2\r\n"
               f"From: <sip:+1212555{i % 10000:04d}@127.0.0.10:5060>;tag={i}x\r\nTo: {to}\r\n"
               f"Call-ID: {i}-call@127.0.0.10\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(b"-2\r\n", b"-3\r\n")
        engine.receive(ack, A, now + 1)
        engine.receive(bye, A, now + 30)
        bbye = engine.outbox[-1][0]
        engine.outbox.clear()
        engine.receive(_answer(bbye, 200), B, now + 30)
        engine.outbox.clear()
    assert len(calls) == n, (len(calls), n)
    return engine, calls


def sip_side(n: int, rounds: int = 5) -> dict[str, float]:
    engine, calls = ended_calls(n)
    wall = engine.wall_offset
    policy = engine.auth.tn_policy

    def per_call(fn: Callable[[Call], object]) -> float:
        best = float("inf")
        for _ in range(rounds):
            t = time.thread_time()
            for c in calls:
                fn(c)
            best = min(best, time.thread_time() - t)
        return best / n * 1e6

    build = per_call(lambda c: record_from_call(c, wall, policy))
    recs = [record_from_call(c, wall, policy) for c in calls]
    metrics = Metrics(process_metrics=False)
    t = time.thread_time()
    for r in recs:
        metrics.observe_call(r)
    observe = (time.thread_time() - t) / n * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        writer = RecordWriter(RecordsSettings(path=os.path.join(tmp, "r.db"), queue_size=n * rounds + 1,
                                              retention_days=0))
        writer.start()
        hook = call_end_hook(writer, [metrics.observe_call], policy)
        total = per_call(hook)  # the writer thread commits meanwhile (GIL contention included)
        writer.flush_and_close()
        writer_cpu = writer.cpu_seconds / max(writer.written, 1) * 1e6
    return {"build_us": build, "metrics_us": observe, "hook_total_us": total, "writer_thread_us": writer_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--db", help="database path (default: a temporary file, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the generated database")
    ap.add_argument("--reuse", action="store_true", help="reuse --db if it exists (skip generation)")
    ap.add_argument("--calls", type=int, default=20_000, help="engine calls for the SIP-side figure")
    args = ap.parse_args()

    path = Path(args.db) if args.db else Path(tempfile.gettempdir()) / "stirgate-records-bench.sqlite3"
    print(f"records bench: {args.records:,} records at {path}")
    if args.reuse and path.exists():
        print("  reusing the existing database")
    else:
        secs = generate(path, args.records)
        print(f"  generated in {secs:.1f} s ({args.records / secs:,.0f} rows/s), "
              f"{path.stat().st_size / 1e9:.2f} GB")
    lk = lookups(path)
    print(f"traceback lookup (5-minute window, {lk['found_per_lookup']:.2f} calls found on average):")
    print(f"  warm connection: median {lk['warm_median_ms']:.3f} ms, p99 {lk['warm_p99_ms']:.3f} ms, "
          f"max {lk['warm_max_ms']:.3f} ms   (target < 10 ms)")
    print(f"  open + lookup:   median {lk['open_and_lookup_median_ms']:.3f} ms, "
          f"p99 {lk['open_and_lookup_p99_ms']:.3f} ms")
    sip = sip_side(args.calls)
    print(f"SIP thread CPU per call ({args.calls:,} engine calls, best of 5):")
    print(f"  record_from_call {sip['build_us']:.2f} us, metrics {sip['metrics_us']:.2f} us, "
          f"whole hook (build + metrics + put) {sip['hook_total_us']:.2f} us   (target <= 15 us)")
    print(f"  writer thread (off the SIP path): {sip['writer_thread_us']:.2f} us CPU per record")
    if args.db is None and not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    ok = lk["warm_p99_ms"] < 10 and sip["hook_total_us"] <= 15
    print("PASS" if ok else "FAIL: a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
