"""PostgreSQL call-records benchmark (issue 11): the sustained insert rate of one node's writer, and a traceback
lookup among 10 million records. Standalone: `python bench/records_pg_bench.py [--records 10000000]
[--inserts 400000] [--dsn postgresql://...]`; `make bench BENCH_ARGS="--mode records-pg"` runs it.

Targets: >= 20,000 records/s from one node; a traceback lookup under 10 ms.

Method
- The server: without --dsn, a PostgreSQL of the machine's Debian packages started for the run in a temporary
  folder (tests/services.py), durable as in production (fsync and synchronous_commit on), 512 MB shared buffers,
  max_wal_size 4 GB (no checkpoint storm during the fill); deleted afterwards unless --keep.
- Insert rate: the writer stirgate runs (proxy.records_pg.PgRecordWriter, production settings: batches of 2,000,
  binary COPY, one transaction each) fed as fast as its queue takes records by a producer thread standing in for
  the SIP thread. Rate = records / seconds from the first put to the last commit. The writer thread's CPU per
  record is printed too (off the SIP path, but in the same process).
- Lookups: the table is filled to --records rows inside PostgreSQL (INSERT ... SELECT FROM generate_series, 1M
  rows a statement, spread over 7 days = 7 partitions, 2M calling and 5M called numbers; the indexes dropped for
  the load and built again after it, exactly the production schema), ANALYZEd, then 1000 (orig, dest, time)
  triples sampled at random from the table are asked with a
  5-minute window through `proxy.recordstore.traceback` on one warm read-only connection (what the API and CLI do
  per request, minus the connect), and 200 more opening a connection per lookup.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.config import RecordsSettings  # noqa: E402
from proxy.records import COLUMNS, CallRecord  # noqa: E402
from proxy.records_pg import SCHEMA, PgReader, PgRecordWriter, connect, create_partitions, ensure_schema  # noqa: E402
from proxy.recordstore import traceback  # noqa: E402

DAY = 86400
#: A production-like server: durable commits, enough memory for the indexes of a day.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "shared_buffers": "512MB", "max_wal_size": "4GB",
           "checkpoint_timeout": "15min", "max_connections": "20"}


def synthetic(n: int, now: float) -> list[CallRecord]:
    """Records like a carrier's traffic: 2M callers, 5M destinations, verified calls, one in ten with a policy."""
    rng = random.Random(11)
    out = []
    for i in range(n):
        o = f"1{2000000000 + rng.randrange(2_000_000)}"
        d = f"1{3000000000 + rng.randrange(5_000_000)}"
        at = now - 60 + i * 0.0005
        out.append(CallRecord(
            a_call_id=f"{rng.getrandbits(64):016x}@pbx.example", b_call_id=f"{rng.getrandbits(48):012x}",
            ingress=f"carrier{rng.randrange(8)}", source_ip=f"198.51.100.{rng.randrange(250)}", source_port=5060,
            orig_signaled="+" + o, orig=o, dest_signaled="+" + d, dest=d, identity_present=True,
            verification="passed", verstat="TN-Validation-Passed", attest="ABC"[rng.randrange(3)],
            origid=f"{rng.getrandbits(128):032x}", spc=str(1000 + rng.randrange(500)),
            cert_subject=f"CN=SHAKEN {1000 + rng.randrange(500)}",
            policy_decisions=(("velocity", "enforce", "tag"),) if i % 10 == 0 else (), egress="customer",
            status=200, invite_at=at, answered_at=at + 2, ended_at=at + 62, duration=60.0, end_reason="bye-a",
        ))  # fmt: skip
    return out


# --- 1. sustained insert rate -------------------------------------------------------------------------------------
def insert_rate(dsn: str, n: int, spill_dir: Path) -> dict[str, float]:
    print(f"  building {n:,} records ...", flush=True)
    recs = synthetic(n, time.time())
    settings = RecordsSettings(backend="postgresql", dsn=dsn, spill_path=str(spill_dir / "bench.spill"),
                               retention_days=0)  # production batch size, flush interval and queue
    w = PgRecordWriter(settings)
    w.start()
    # Warm up: connection, schema and today's partitions exist before the clock starts.
    w.put(recs[0])
    while w.written < 1:
        time.sleep(0.01)
    t0 = time.perf_counter()

    def produce() -> None:
        put = w.put
        for r in recs[1:]:
            while not put(r):  # queue full: the SIP thread would drop and count; the bench waits instead
                w.dropped -= 1
                time.sleep(0.0005)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    while w.written < n and w.alive:
        time.sleep(0.005)
    secs = time.perf_counter() - t0
    cpu = w.cpu_seconds
    w.flush_and_close()
    if w.written != n or w.spilled or w.write_errors:
        raise RuntimeError(f"writer: written {w.written} of {n}, spilled {w.spilled}, errors {w.write_errors}")
    return {"records_per_s": (n - 1) / secs, "seconds": secs, "writer_cpu_us": cpu / max(w.written, 1) * 1e6}


# --- 2. the 10-million-row table -----------------------------------------------------------------------------------
_EXPRS = {
    "a_call_id": "md5(i::text) || '@pbx.example'",
    "b_call_id": "substr(md5((i + 1)::text), 1, 12)",
    "ingress": "'carrier' || (i % 8)",
    "source_ip": "'198.51.100.' || (i % 250)",
    "source_port": "5060",
    "transport": "'udp'",
    "orig_signaled": "'+1' || o",
    "orig": "'1' || o",
    "dest_signaled": "'+1' || d",
    "dest": "'1' || d",
    "display_name": "NULL",
    "identity_present": "true",
    "verification": "'passed'",
    "verstat": "'TN-Validation-Passed'",
    "attest": "chr(65 + (i % 3))",
    "origid": "md5((i + 2)::text)",
    "spc": "(1000 + i % 500)::text",
    "cert_subject": "'CN=SHAKEN ' || (1000 + i % 500)",
    "failures": "NULL",
    "signed": "false",
    "x5u_fetched": "false",
    "policy_decisions": "NULL",
    "egress": "'customer'",
    "status": "200",
    "invite_at": "t",
    "answered_at": "t + 2",
    "ended_at": "t + 62",
    "duration": "60.0",
    "end_reason": "'bye-a'",
}


def fill(dsn: str, n: int, start: float, chunk: int = 1_000_000) -> float:
    """n rows over 7 days from `start`, generated inside PostgreSQL; seconds taken."""
    assert set(_EXPRS) == set(COLUMNS), set(COLUMNS) ^ set(_EXPRS)
    t0 = time.perf_counter()
    with connect(dsn, 10) as conn:
        ensure_schema(conn)
        first = int(start) // DAY
        create_partitions(conn, set(range(first, first + 8)))
        # A bulk load builds its indexes afterwards (sorted, several times faster than row by row).
        conn.execute("DROP INDEX IF EXISTS calls_orig_dest_at, calls_at")
        cols = ", ".join(COLUMNS)
        exprs = ", ".join(_EXPRS[c] for c in COLUMNS)
        done = 0
        while done < n:
            m = min(chunk, n - done)
            # hashint spreads callers and destinations pseudo-randomly (2M and 5M distinct numbers).
            conn.execute(
                f"INSERT INTO calls ({cols}) SELECT {exprs} FROM ("
                f" SELECT i, {start} + i * {7 * DAY / n} AS t,"
                f" (2000000000 + abs(hashint4(i)) % 2000000)::text AS o,"
                f" (3000000000 + abs(hashint4(i + 7919)) % 5000000)::text AS d"
                f" FROM generate_series({done}, {done + m - 1}) AS i) AS g")
            done += m
            print(f"  {done:>11,} rows  {time.perf_counter() - t0:6.1f} s", end="\r", flush=True)
        print()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for stmt in SCHEMA:
            if "INDEX" in stmt:
                conn.execute(stmt)
        print(f"  indexes built  {time.perf_counter() - t0:6.1f} s", flush=True)
        conn.execute("ANALYZE calls")
        size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'calls'::regclass").fetchone()
    print(f"  table + indexes: {size[0] if size else '?'}")
    return time.perf_counter() - t0


def lookups(dsn: str, start: float, count: int = 1000) -> dict[str, float]:
    with connect(dsn, 10) as conn:
        total = conn.execute("SELECT count(*) FROM calls WHERE invite_at >= %s", (start,)).fetchone()
        share = min(100.0, 20.0 * count / max(1, total[0] if total else 1) * 100)  # 20 times what is needed
        rows = conn.execute(f"SELECT orig, dest, invite_at FROM calls TABLESAMPLE SYSTEM ({share}) "
                            f"WHERE invite_at >= {start} ORDER BY random() LIMIT {count}").fetchall()
    rng = random.Random(5)
    probes = [(str(o), str(d), float(t) + rng.uniform(-120, 120)) for o, d, t in rows]
    reader = PgReader.open(dsn)
    warm: list[float] = []
    found = 0
    try:
        for orig, dest, at in probes:
            t = time.perf_counter()
            found += len(traceback(reader, orig, dest, at, 300.0))
            warm.append(time.perf_counter() - t)
    finally:
        reader.close()
    cold: list[float] = []
    for orig, dest, at in probes[:200]:
        t = time.perf_counter()
        traceback(dsn, orig, dest, at, 300.0)  # connects, asks, closes: the CLI's and the API's way
        cold.append(time.perf_counter() - t)
    warm.sort()
    cold.sort()
    return {
        "probes": len(probes),
        "found_per_lookup": found / max(len(probes), 1),
        "warm_median_ms": statistics.median(warm) * 1e3,
        "warm_p99_ms": warm[max(0, int(len(warm) * 0.99) - 1)] * 1e3,
        "warm_max_ms": warm[-1] * 1e3,
        "open_and_lookup_median_ms": statistics.median(cold) * 1e3,
        "open_and_lookup_p99_ms": cold[max(0, int(len(cold) * 0.99) - 1)] * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000, help="rows in the table for the lookups")
    ap.add_argument("--inserts", type=int, default=400_000, help="records through the writer for the rate")
    ap.add_argument("--dsn", help="an existing database (default: a PostgreSQL started for the run)")
    ap.add_argument("--keep", action="store_true", help="keep the server's folder (printed)")
    args = ap.parse_args()

    server: Any = None
    if args.dsn is None:
        from tests.services import Postgres

        server = Postgres(DURABLE).start()
        dsn = server.create_database("records_bench")
        print(f"records-pg bench: PostgreSQL {server.port} in {server.root}", flush=True)
    else:
        dsn = args.dsn
        print(f"records-pg bench: {dsn}", flush=True)
    try:
        with tempfile.TemporaryDirectory() as spill_dir:
            ins = insert_rate(dsn, args.inserts, Path(spill_dir))
        print(f"insert rate (one writer, batches of 2,000, binary COPY, durable commits): "
              f"{ins['records_per_s']:,.0f} records/s over {ins['seconds']:.1f} s   (target >= 20,000)")
        print(f"  writer thread CPU per record (off the SIP path): {ins['writer_cpu_us']:.2f} us")
        start = time.time() - 8 * DAY
        secs = fill(dsn, args.records, start)
        print(f"  filled {args.records:,} rows in {secs:.1f} s ({args.records / secs:,.0f} rows/s)")
        lk = lookups(dsn, start)
        print(f"traceback lookup among {args.records:,} rows (5-minute window, {lk['probes']:.0f} probes, "
              f"{lk['found_per_lookup']:.2f} calls found on average):")
        print(f"  warm connection: median {lk['warm_median_ms']:.3f} ms, p99 {lk['warm_p99_ms']:.3f} ms, "
              f"max {lk['warm_max_ms']:.3f} ms   (target < 10 ms)")
        print(f"  connect + lookup: median {lk['open_and_lookup_median_ms']:.3f} ms, "
              f"p99 {lk['open_and_lookup_p99_ms']:.3f} ms")
    finally:
        if server is not None:
            if args.keep:
                server.stop()
                print(f"server folder kept: {server.root}")
            else:
                server.cleanup()
    ok = ins["records_per_s"] >= 20_000 and lk["warm_p99_ms"] < 10
    print("PASS" if ok else "FAIL: a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
