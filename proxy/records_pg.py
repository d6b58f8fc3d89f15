"""PostgreSQL call records: one database every node writes and every traceback reads (`records.backend:
postgresql`). Imported only when configured.

Why this shape:
- Schema: the SQLite columns (booleans as boolean, the two JSON columns as jsonb), epoch-second times, so one
  query text serves both backends. `calls` is range-partitioned by UTC day on invite_at (`calls_pYYYYMMDD`):
  retention drops whole partitions instead of deleting rows, and a traceback's window prunes the table to one or
  two partitions, then one range scan of their B-tree on (orig, dest, invite_at), as on SQLite. Report windows
  use a BRIN index on invite_at: rows arrive in time order, so it is tiny and costs the inserts nothing.
- DDL (schema, partitions) runs under a transaction-level advisory lock with a lock timeout: N nodes starting
  at once do not race, and a report holding the table never stalls the writers queued behind a DROP for long.
  Partitions are made `partitions_ahead` days ahead, and on demand for any day a batch needs.
- Writes: one binary COPY per batch in one transaction, with the batch's id in `stirgate_record_batches`.
  Measured on this 2-core machine: ~130,000 records/s from one client, 2.5 us of client CPU a record (psycopg 3;
  asyncpg measured the same; psycopg's blocking API fits the writer thread and the synchronous CLI).
- Unreachable database: the batch goes to the spill (proxy.records_spill) and every later one follows it there
  until the spill is replayed, so the database receives records in the order the node accepted them. A batch
  whose COMMIT outcome is unknown is spilled with its id; a replay checks the id first: never lost, never doubled.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import psycopg
import structlog
from msgspec.structs import astuple
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from proxy.config import RecordsSettings
from proxy.records import COLUMNS, CallRecord, Reader, RecordsError, WriterBase
from proxy.records_spill import Spill
from proxy.tracebacks import forget_frames

__all__ = [
    "BATCHES",
    "COPY_SQL",
    "SCHEMA",
    "PgReader",
    "PgRecordWriter",
    "connect",
    "describe",
    "partition_name",
]

log = structlog.get_logger("stirgate.records", component="records")

DAY: Final = 86400
BATCHES: Final = "stirgate_record_batches"
#: Batch ids are kept this long: enough for any spill to be replayed; older ids are deleted.
BATCH_ID_DAYS: Final = 7
#: Advisory lock held by whoever changes the schema or the partitions ("STIRG" in ASCII).
LOCK_KEY: Final = 0x5354495247
#: How long DDL waits for a table lock before giving up (and retrying later).
LOCK_TIMEOUT: Final = "5s"

_PG_TYPES: Final = {
    "source_port": "integer",
    "status": "integer",
    "invite_at": "double precision",
    "answered_at": "double precision",
    "ended_at": "double precision",
    "duration": "double precision",
    "identity_present": "boolean",
    "signed": "boolean",
    "x5u_fetched": "boolean",
    "failures": "jsonb",
    "policy_decisions": "jsonb",
}
COPY_TYPES: Final = [_PG_TYPES.get(c, "text") for c in COLUMNS]
_COLUMN_DDL: Final = ", ".join(
    f"{c} {_PG_TYPES.get(c, 'text')}{' NOT NULL' if c in ('a_call_id', 'ingress', 'invite_at') else ''}"
    for c in COLUMNS
)
SCHEMA: Final = (
    f"CREATE TABLE IF NOT EXISTS calls ({_COLUMN_DDL}) PARTITION BY RANGE (invite_at)",
    # Traceback: equality on orig and dest, a range on the time: one index range scan per partition.
    "CREATE INDEX IF NOT EXISTS calls_orig_dest_at ON calls (orig, dest, invite_at)",
    # Report windows: rows arrive in time order, so a BRIN of a few pages per partition finds them.
    "CREATE INDEX IF NOT EXISTS calls_at ON calls USING brin (invite_at)",
    f"CREATE TABLE IF NOT EXISTS {BATCHES} (batch_id uuid PRIMARY KEY, written_at double precision NOT NULL, "
    "records integer NOT NULL)",
    "COMMENT ON TABLE calls IS 'stirgate call records (docs/RECORDS.md); times in epoch seconds UTC; "
    "one partition per UTC day'",
)
_SCHEMA_OBJECTS: Final = ("calls", "calls_orig_dest_at", "calls_at", BATCHES)
COPY_SQL: Final = f"COPY calls ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_JSON_INDEXES: Final = tuple(i for i, c in enumerate(COLUMNS) if _PG_TYPES.get(c) == "jsonb")
_TEXT_INDEXES: Final = tuple(i for i, c in enumerate(COLUMNS) if c not in _PG_TYPES)
_PARTITION_RE: Final = re.compile(r"^calls_p(\d{8})$")
#: libpq settings that notice a dead server or network in seconds, unless the DSN sets its own.
_KEEPALIVES: Final = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
                      "keepalives_count": "3", "tcp_user_timeout": "10000"}


def partition_name(day: int) -> str:
    """The partition of UTC day `day` (days since the epoch): calls_pYYYYMMDD."""
    return "calls_p" + datetime.datetime.fromtimestamp(day * DAY, datetime.UTC).strftime("%Y%m%d")


def partition_day(name: str) -> int | None:
    m = _PARTITION_RE.match(name)
    if m is None:
        return None
    try:
        date = datetime.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return int(date.timestamp()) // DAY


def pg_row(rec: CallRecord) -> list[Any]:
    """The COPY values of a record, in COLUMNS order."""
    row: list[Any] = list(astuple(rec))
    for i in _JSON_INDEXES:
        row[i] = Jsonb(list(row[i])) if row[i] else None
    return row


def _clean_text(value: Any) -> Any:
    """PostgreSQL text holds no NUL and no lone surrogate: what a hostile SIP header might carry."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return value


def _clean_row(row: list[Any]) -> list[Any]:
    for i in _TEXT_INDEXES:
        row[i] = _clean_text(row[i])
    return row


def describe(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages (never its password)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unreadable dsn)"
    host = str(d.get("host") or d.get("hostaddr") or "localhost")
    return f"{host}:{d.get('port') or 5432}/{d.get('dbname') or d.get('user') or ''}"


def connect(dsn: str, timeout: float = 5.0, *, application_name: str = "stirgate") -> psycopg.Connection[Any]:
    """An autocommit connection with keepalives (a dead server is noticed in seconds, not hours)."""
    given = conninfo_to_dict(dsn)
    extra: dict[str, Any] = {k: v for k, v in _KEEPALIVES.items() if k not in given}
    if "application_name" not in given:
        extra["application_name"] = application_name
    if "connect_timeout" not in given:
        extra["connect_timeout"] = max(2, math.ceil(timeout))
    conninfo = make_conninfo(dsn, **extra)
    return psycopg.connect(conninfo, autocommit=True)


# --- reading ----------------------------------------------------------------------------------------------------


class PgReader(Reader):
    """A read-only session (default_transaction_read_only) for traceback and reports."""

    param = "%s"
    minute_sql = "FLOOR(invite_at / 60)::bigint"

    def json_text_sql(self, column: str) -> str:
        return f"{column}::text"

    def __init__(self, conn: psycopg.Connection[Any], where: str) -> None:
        self.conn = conn
        self.where = where

    @classmethod
    def open(cls, dsn: str, timeout: float = 5.0) -> PgReader:
        where = describe(dsn)
        try:
            conn = connect(dsn, timeout, application_name="stirgate-query")
            conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise RecordsError(f"records database {where}: {str(exc).strip()}") from None
        return cls(conn, where)

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, tuple(params))
                return list(cur.fetchall())
        except psycopg.errors.UndefinedTable:
            raise RecordsError(f"records database {self.where}: no calls table (no stirgate wrote to it yet)") \
                from None
        except psycopg.Error as exc:
            raise RecordsError(f"records database {self.where}: {str(exc).strip()}") from None

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


# --- writing ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ddl(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction holding the advisory lock, with a lock timeout for the DDL inside."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        yield


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """The tables and indexes, created when missing (a no-op lookup when they exist: no lock taken)."""
    present = conn.execute("SELECT " + ", ".join(f"to_regclass('{name}')" for name in _SCHEMA_OBJECTS)).fetchone()
    if present is not None and all(present):
        return
    with _ddl(conn):
        for stmt in SCHEMA:
            conn.execute(stmt)


def partition_days(conn: psycopg.Connection[Any]) -> set[int]:
    """The days that have a partition now."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'calls'::regclass").fetchall()
    return {d for (name,) in rows if (d := partition_day(str(name))) is not None}


def create_partitions(conn: psycopg.Connection[Any], days: set[int]) -> None:
    with _ddl(conn):
        for d in sorted(days):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {partition_name(d)} PARTITION OF calls "
                         f"FOR VALUES FROM ({d * DAY}) TO ({(d + 1) * DAY})")


def drop_partitions(conn: psycopg.Connection[Any], days: set[int]) -> int:
    """Drop these days' partitions; the rows they held (the planner's estimate: counting would read them)."""
    rows = 0
    with _ddl(conn):
        for d in sorted(days):
            name = partition_name(d)
            found = conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (name,)).fetchone()
            if found is not None:
                rows += max(0, int(found[0]))
            conn.execute(f"DROP TABLE IF EXISTS {name}")
    return rows


class PgRecordWriter(WriterBase):
    """Batches COPYed to PostgreSQL; while it is unreachable, batches go to the spill and are replayed in order.

    Extra counters: `spilled` (records appended to the spill), `replayed` (spilled records later committed; they
    count in `written` too), `spill_dropped` (no room in the spill, or no spill: given up),
    `replay_duplicates` (spilled batches found already committed), `partitions_dropped`.
    """

    backend = "postgresql"
    #: Longest the final drain replays the spill before leaving the rest for the next start (seconds).
    FINAL_REPLAY_SECONDS: Final = 10.0

    def __init__(self, settings: RecordsSettings, *, worker: int = 0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, clock=clock)
        self._conn: psycopg.Connection[Any] | None = None
        self._days: set[int] = set()
        self._next_connect = 0.0
        self._up: bool | None = None
        path = settings.spill_path if worker == 0 else f"{settings.spill_path}.{worker}"
        self.spill: Spill | None = (
            Spill(path, settings.spill_max_bytes, fsync=settings.spill_fsync) if settings.spill_max_bytes > 0 else None)
        self.replay_duplicates = 0
        self.partitions_dropped = 0
        self._corrupt_seen = 0
        self._where_text = describe(settings.dsn)

    # --- what the metrics read ----------------------------------------------------------------------------------
    @property
    def has_spill(self) -> bool:
        return True

    @property
    def spill_bytes(self) -> int:
        s = self.spill
        return s.pending_bytes if s is not None else 0

    @property
    def db_up(self) -> bool | None:
        return self._up

    def _where(self) -> dict[str, Any]:
        return {"db": self._where_text}

    # --- connection -----------------------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any] | None:
        """The connection, (re)connecting at most every retry_interval; None while the database is unreachable."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        now = time.monotonic()
        if now < self._next_connect and not self._stopping:
            return None
        self._next_connect = now + self.settings.retry_interval
        try:
            conn = connect(self.settings.dsn, self.settings.connect_timeout, application_name="stirgate-records")
        except psycopg.Error as exc:
            self._failed("records_db_unreachable", exc)
            return None
        try:
            ensure_schema(conn)
            self._days = partition_days(conn)
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._failed("records_db_setup_failed", exc)
            return None
        try:
            self._ensure_days(conn, self._wanted_days())
        except psycopg.Error as exc:
            # Partitions ahead are a convenience (a batch creates the one it needs): a lock timeout behind a long
            # report must not stop the writes.
            log.warning("records_partitions_ahead_failed", error=str(exc).strip(), **self._where())
            if conn.broken:
                self._failed("records_db_setup_failed", exc)
                return None
        if self._up is False:
            log.info("records_db_reachable", **self._where(), spill_bytes=self.spill_bytes)
        self._up = True
        self._conn = conn
        return conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _failed(self, event: str, exc: BaseException, **kw: Any) -> None:
        """The database refused or vanished: count, log (at most once a minute), reconnect later. (The exception's
        chain is let go: with the cyclic GC off, one per retry for as long as the database is down would wait for
        the full pass.)"""
        forget_frames(exc)
        self.write_errors += 1
        self._up = False
        self._close_conn()
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY:
            self._last_log = now
            # A warning: the records are safe in the spill; a record given up is logged as an error.
            log.warning(event, error=str(exc).strip(), **self._where(), write_errors=self.write_errors,
                        spill_bytes=self.spill_bytes, **kw)

    def _wanted_days(self) -> set[int]:
        today = int(self._clock()) // DAY
        return set(range(today - 1, today + self.settings.partitions_ahead + 1))

    def _ensure_days(self, conn: psycopg.Connection[Any], days: set[int]) -> None:
        missing = days - self._days
        if missing:
            create_partitions(conn, missing)
            self._days |= missing

    # --- one batch ------------------------------------------------------------------------------------------------
    def _write(self, batch_id: str, records: Sequence[CallRecord], *, replay: bool = False) -> bool:
        """Commit one batch (with its id). False: the database is unreachable or refused it for now (the caller
        spills it). A batch the database rejects for its content is given up (counted lost) rather than
        blocking every later one."""
        clean = False
        for attempt in range(3):
            conn = self._connection()
            if conn is None:
                return False
            try:
                self._ensure_days(conn, {int(r.invite_at) // DAY for r in records})
                if self._copy(conn, batch_id, records, replay, clean):
                    self.written += len(records)
                    if replay:
                        self.replayed += len(records)
                else:
                    self.replay_duplicates += len(records)
                self._up = True
                return True
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._failed("records_write_failed", exc, batch=len(records))
                return False
            except psycopg.errors.CheckViolation as exc:
                # "no partition of relation calls found for row": a partition dropped under us. Forget what we
                # knew: the next attempt creates (IF NOT EXISTS) every day the batch needs.
                self._days = set()
                if attempt:
                    self._failed("records_write_failed", exc, batch=len(records))
                    return False
            except (psycopg.DataError, UnicodeError) as exc:
                if clean:
                    self.lost += len(records)
                    log.error("records_batch_rejected", error=str(exc).strip(), **self._where(), batch=len(records))
                    return True
                clean = True  # NUL bytes or broken Unicode from a hostile header: retry with the text cleaned
            except psycopg.Error as exc:
                # Schema changed under us, privileges, ...: keep the records (spill) and look again later.
                self._days = set()
                self._failed("records_write_failed", exc, batch=len(records))
                return False
        return False

    def _copy(self, conn: psycopg.Connection[Any], batch_id: str, records: Sequence[CallRecord], replay: bool,
              clean: bool) -> bool:
        """One transaction: the batch id, then the rows. False: a replayed batch that was already committed."""
        with conn.transaction(), conn.cursor() as cur:
            if replay:
                cur.execute(f"SELECT 1 FROM {BATCHES} WHERE batch_id = %s", (batch_id,))
                if cur.fetchone() is not None:
                    return False
            cur.execute(f"INSERT INTO {BATCHES} (batch_id, written_at, records) VALUES (%s, %s, %s)",
                        (batch_id, self._clock(), len(records)))
            with cur.copy(COPY_SQL) as copy:
                copy.set_types(COPY_TYPES)
                write = copy.write_row
                for rec in records:
                    write(_clean_row(pg_row(rec)) if clean else pg_row(rec))
        return True

    # --- the spill --------------------------------------------------------------------------------------------------
    def _open_spill(self) -> Spill | None:
        s = self.spill
        if s is None or s.is_open:
            return s
        try:
            s.open()
        except OSError as exc:
            self._log_failure("records_spill_unavailable", exc, spill=str(s.path))
            return None
        if s.torn_bytes:
            log.warning("records_spill_torn_tail", spill=str(s.path), cut_bytes=s.torn_bytes)
        if s.size:
            log.info("records_spill_found", spill=str(s.path), bytes=s.size)
        return s

    def _keep(self, spill: Spill | None, batch_id: str, records: Sequence[CallRecord]) -> None:
        """A batch the database cannot take now: into the spill, else counted as given up."""
        problem: BaseException | str | None = None
        if spill is None:
            problem = "no spill (records.spill_max_bytes is 0, or the file cannot be opened)"
        else:
            try:
                if spill.append(batch_id, records):
                    self.spilled += len(records)
                    return
                problem = f"spill full ({spill.size} of {spill.max_bytes} bytes)"
            except OSError as exc:
                problem = exc
        self.spill_dropped += len(records)
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY:
            self._last_log = now
            log.error("records_spill_dropped", error=str(problem), **self._where(), dropped=self.spill_dropped,
                      batch=len(records))

    def _queue_to_spill(self, spill: Spill | None) -> None:
        """Everything queued goes behind what is already spilled (order kept)."""
        q = self._queue
        while q:
            n = min(len(q), self._batch)
            self._keep(spill, str(uuid.uuid4()), [q.popleft() for _ in range(n)])

    def _replay(self, spill: Spill, deadline: float) -> bool:
        """Commit spilled batches from the head. False: the database failed (the rest stays spilled)."""
        while time.monotonic() < deadline:
            if self._stopping and deadline == math.inf:
                return True  # a stop arrived: the final drain takes over, with its time budget
            try:
                item = spill.next_batch()
            except OSError as exc:
                self._log_failure("records_spill_unreadable", exc, spill=str(spill.path))
                return False
            self._note_corrupt(spill)
            if item is None:
                return True
            batch, after = item
            if not self._write(batch.batch, batch.records, replay=True):
                return False
            try:
                spill.advance(after)
            except OSError as exc:
                self._log_failure("records_spill_unwritable", exc, spill=str(spill.path))
                return False
            if spill.size == 0:
                log.info("records_spill_replayed", **self._where(), replayed=self.replayed,
                         duplicates=self.replay_duplicates)
            if len(self._queue) >= self._batch:
                self._queue_to_spill(spill)
        return True

    def _note_corrupt(self, spill: Spill) -> None:
        if spill.corrupt_lines > self._corrupt_seen:
            log.error("records_spill_corrupt_line", spill=str(spill.path),
                      lines=spill.corrupt_lines - self._corrupt_seen)
            self._corrupt_seen = spill.corrupt_lines

    # --- the writer thread ----------------------------------------------------------------------------------------
    def _drain(self, final: bool = False) -> None:
        self._loads.clear()  # per-trunk load rows are kept by the SQLite backend only (docs/RECORDS.md)
        spill = self._open_spill()
        if spill is not None and spill.pending_bytes:
            # Catching up: new records queue behind the spilled ones, which are replayed from the head.
            self._queue_to_spill(spill)
            deadline = time.monotonic() + self.FINAL_REPLAY_SECONDS if final else math.inf
            if not self._replay(spill, deadline) or spill.pending_bytes:
                self._queue_to_spill(spill)
                return
        q = self._queue
        popleft = q.popleft
        while q:
            batch = [popleft() for _ in range(min(len(q), self._batch))]
            batch_id = str(uuid.uuid4())
            if not self._write(batch_id, batch):
                self._keep(spill, batch_id, batch)
                self._queue_to_spill(spill)
                return

    def _maybe_prune(self) -> None:
        """Every prune_interval: partitions ahead, expired partitions dropped, old batch ids deleted."""
        now = self._clock()
        if now < self._next_prune:
            return
        conn = self._connection()
        if conn is None:
            return
        self._next_prune = now + self.settings.prune_interval
        try:
            self._days = partition_days(conn)
            self._ensure_days(conn, self._wanted_days())
            days = self.settings.retention_days
            if days > 0:
                cutoff = now - days * DAY
                expired = {d for d in self._days if (d + 1) * DAY <= cutoff}
                if expired:
                    self.pruned += drop_partitions(conn, expired)
                    self.partitions_dropped += len(expired)
                    self._days -= expired
                    log.info("records_partitions_dropped", **self._where(),
                             days=[partition_name(d) for d in sorted(expired)])
            conn.execute(f"DELETE FROM {BATCHES} WHERE written_at < %s", (now - BATCH_ID_DAYS * DAY,))
        except psycopg.Error as exc:
            if conn.broken:
                self._failed("records_prune_failed", exc)
            else:  # a lock timeout behind a long report, say: the next pass tries again; writes go on
                log.warning("records_prune_failed", error=str(exc).strip(), **self._where())

    def close_spill(self) -> None:
        if self.spill is not None:
            self.spill.close()

    def flush_and_close(self, timeout: float = 30.0) -> int:
        left = super().flush_and_close(timeout)
        if not self.alive:
            self.close_spill()
        return left
