"""Call records: one per call, built on the SIP thread in a few microseconds, written to a database by a thread.

Why this shape: the SIP path must not wait for a disk. At call end `record_from_call` copies what the Call
already holds into a frozen `CallRecord` (no parsing beyond the user part of two URIs), and `put` appends it to
a bounded deque: no lock, no syscall, and a full queue drops and counts instead of blocking. A writer thread
commits batches, prunes old records and, when the database cannot be written, counts and logs the failure
while calls carry on. Queries (traceback, reports) open their own connections through a `Reader`.

Two backends share the record model, the queue and the queries: SQLite here (`RecordWriter`, a file per host),
PostgreSQL in `proxy.records_pg` (one database for every node). `proxy.recordstore` picks by `records.backend`
(`make_writer`, `reading`) and runs the queries (`traceback`) on either.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
import structlog

from proxy.config import RecordsSettings
from proxy.stir.signer import SignedCall
from proxy.stir.tn import DEFAULT_TN_POLICY, TNPolicy, try_canonical_tn, user_part
from proxy.tracebacks import forget_frames

if TYPE_CHECKING:
    from proxy.admission import Gate
    from proxy.authentication import InboundOutcome
    from proxy.b2bua import Call
    from proxy.redirect import Redirected
    from proxy.sip.transaction import Target

__all__ = [
    "COLUMNS",
    "CallRecord",
    "PolicyDecision",
    "Reader",
    "RecordWriter",
    "RecordsError",
    "SqliteReader",
    "TrunkLoad",
    "TrunkLoadMeter",
    "WriterBase",
    "call_end_hook",
    "connect_readonly",
    "open_db",
    "record_from_call",
    "record_from_redirect",
    "record_from_row",
    "redirect_end_hook",
    "tn_variants",
]

log = structlog.get_logger("stirgate.records", component="records")

T = TypeVar("T")

#: (policy name, mode such as "enforce" or "dry-run", action such as "reject" or "tag", note: which rule fired
#: with what value). Records written before notes were kept have three elements.
PolicyDecision = tuple[str, ...]

SCHEMA_VERSION: Final = 2


class CallRecord(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Everything a traceback or a fraud analyst asks about one call. Times are wall-clock epoch seconds.

    gc=False: records are acyclic plain data; keeping them out of the cyclic GC matters at 10k calls/s.
    """

    a_call_id: str
    b_call_id: str | None = None
    ingress: str
    source_ip: str
    source_port: int
    transport: str = "udp"
    #: User parts as signalled (PAI or From per stir.orig_order; R-URI, else To) and canonical digits.
    orig_signaled: str | None = None
    orig: str | None = None
    dest_signaled: str | None = None
    dest: str | None = None
    display_name: str | None = None
    #: None when unknown (the Call did not keep it).
    identity_present: bool | None = None
    #: STI-VS outcome on verified (carrier) calls: passed | failed | missing; None when not verified.
    verification: str | None = None
    verstat: str | None = None
    attest: str | None = None
    origid: str | None = None
    spc: str | None = None
    cert_subject: str | None = None
    #: Machine names of the failed verification checks.
    failures: tuple[str, ...] = ()
    #: True when stirgate signed the call itself (STI-AS); attest/origid are then ours.
    signed: bool = False
    #: The call waited for an x5u certificate fetch (a cache miss).
    x5u_fetched: bool = False
    policy_decisions: tuple[PolicyDecision, ...] = ()
    egress: str | None = None
    status: int | None = None
    invite_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    #: Seconds from answer to end; 0 for unanswered calls.
    duration: float = 0.0
    end_reason: str = ""

    @property
    def identity_verified(self) -> bool:
        return self.verification == "passed"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        out["identity_verified"] = self.identity_verified
        return out


def _user(uri: str | None) -> str | None:
    """User part of a URI or name-addr, parameters dropped; None for none. Plain URIs take a short path
    (this runs twice per call on the SIP thread)."""
    if not uri:
        return None
    if uri[0] == "<" or '"' in uri or " " in uri:
        user, _ = user_part(uri)
    else:
        colon = uri.find(":")
        scheme = uri[:colon].lower() if colon > 0 else ""
        if scheme == "tel":
            user = uri[colon + 1 :]
        elif scheme in ("sip", "sips"):
            rest = uri[colon + 1 :]
            at = rest.rfind("@")
            if at < 0:
                return None
            user = rest[:at]
        else:
            user, _ = user_part(uri)
    semi = user.find(";")
    if semi >= 0:
        user = user[:semi]
    return user or None


def _canonical(user: str | None, policy: TNPolicy) -> str | None:
    """try_canonical_tn with a short path for "+digits" (canonical_tn has its own for plain digits)."""
    if user and user[0] == "+":
        digits = user[1:]
        if digits.isdigit() and digits.isascii() and len(digits) <= policy.max_length:
            return digits
    return try_canonical_tn(user, policy)


def _display(text: str | None) -> str | None:
    if not text:
        return None
    if text[0] == '"' and text[-1] == '"' and len(text) > 1:
        text = text[1:-1]
        if "\\" in text:
            text = text.replace('\\"', '"').replace("\\\\", "\\")
        return text or None
    return text


def record_from_call(call: Call, wall_offset: float, tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> CallRecord:
    """The record of an ended call, from what the Call still holds (its INVITE is gone by then).

    Reads, beyond the documented attributes, three optional ones the B2BUA may keep from the A-leg INVITE:
    `ruri` (Request-URI), `pai` (first P-Asserted-Identity value), `identity_present` (bool), and the
    policies' `decisions` list. Without `ruri` the To URI stands in for the dialled number.
    """
    a = call.a
    from_na = a.remote_na
    ruri: str | None = getattr(call, "ruri", None)
    identity_present: bool | None = getattr(call, "identity_present", None)
    inbound = call.inbound
    if identity_present is None and inbound is not None:
        identity_present = inbound.result.status != "missing"
    signed = call.signed
    decisions = getattr(call, "decisions", None)
    egress = call.egress
    b = call.b
    created = call.created_at
    answered = call.answered_at
    ended = call.ended_at
    return _record(
        call.source, getattr(call, "pai", None), from_na.uri, _user(ruri) or _user(a.local_na.uri), from_na.display,
        inbound, signed if isinstance(signed, SignedCall) else None, tn_policy,
        a_call_id=a.call_id,
        b_call_id=b.call_id if b is not None else None,
        ingress=call.ingress.name,
        identity_present=identity_present,
        x5u_fetched=call.verify_waited,
        policy_decisions=tuple(decisions) if decisions else (),
        egress=egress.trunk.name if egress is not None else None,
        status=call.final_status,
        invite_at=created + wall_offset,
        answered_at=answered + wall_offset if answered is not None else None,
        ended_at=ended + wall_offset if ended is not None else None,
        duration=(ended - answered) if answered is not None and ended is not None else 0.0,
        end_reason=call.end_reason,
    )


def record_from_redirect(r: Redirected, wall_offset: float, tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> CallRecord:
    """The record of an INVITE answered in redirect mode: a call that was signed or verified and judged, whose
    "egress" is the first Contact's trunk and whose status is the 302 (or the rejection) stirgate answered."""
    at = r.at + wall_offset
    return _record(
        r.source, r.pai, r.from_uri, _user(r.ruri), r.display, r.inbound, r.signed, tn_policy,
        a_call_id=r.call_id,
        ingress=r.ingress.name,
        identity_present=r.identity_present,
        x5u_fetched=r.x5u_fetched,
        policy_decisions=tuple(r.decisions),
        egress=r.egress,
        status=r.status,
        invite_at=at,
        ended_at=at,
        end_reason=r.end_reason,
    )


def _record(source: Target, pai: str | None, from_uri: str, dest_signaled: str | None, display: str | None,
            inbound: InboundOutcome | None, signed: SignedCall | None, tn_policy: TNPolicy,
            **rest: Any) -> CallRecord:
    """A record's fields that a call and a redirected INVITE fill alike (where it came from, who called whom,
    what verification and signing said); `rest` are the others."""
    orig_signaled = _orig_signaled(pai, from_uri, tn_policy)
    verification = verstat = attest = origid = spc = subject = None
    failures: tuple[str, ...] = ()
    if inbound is not None:
        r = inbound.result
        verification, verstat, attest, origid, spc, subject = (r.status, r.verstat, r.attest, r.origid, r.spc,
                                                               r.cert_subject)
        failures = tuple(f.check for f in r.failures) if r.failures else ()
    if signed is not None:
        attest, origid = signed.attest, signed.origid
    return CallRecord(
        source_ip=source[1],
        source_port=source[2],
        transport=source[0],
        orig_signaled=orig_signaled,
        orig=_canonical(orig_signaled, tn_policy),
        dest_signaled=dest_signaled,
        dest=_canonical(dest_signaled, tn_policy),
        display_name=_display(display),
        verification=verification,
        verstat=verstat,
        attest=attest,
        origid=origid,
        spc=spc,
        cert_subject=subject,
        failures=failures,
        signed=signed is not None,
        **rest,
    )


def _orig_signaled(pai: str | None, from_uri: str, tn_policy: TNPolicy) -> str | None:
    """The caller's user part as signalled: PAI or From first, per `stir.orig_order`."""
    if pai is not None and tn_policy.orig_order[0] == "pai":
        return _user(pai) or _user(from_uri)
    return _user(from_uri) or _user(pai)


class TrunkLoad(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What one trunk asked of stirgate over an interval and what it got: new INVITEs offered, calls admitted,
    INVITEs refused at the door (503 or dropped) by reason. Refused INVITEs leave no call record (refusing them
    must cost nothing), so these counts are how a flood shows up in `stirgate report`."""

    at: float
    seconds: float
    trunk: str
    offered: int
    admitted: int
    shed: int
    reasons: dict[str, int] = {}


class TrunkLoadMeter:
    """Turns the engine's running per-trunk counters (proxy.admission gates) into one TrunkLoad per trunk and
    interval, for the trunks that offered INVITEs in it."""

    __slots__ = ("_last", "_since")

    def __init__(self, now: float) -> None:
        self._last: dict[str, tuple[int, int, dict[str, int]]] = {}
        self._since = now

    def rows(self, gates: Iterable[Gate], now: float) -> list[TrunkLoad]:
        """The rows since the previous call (wall-clock `now`, epoch seconds)."""
        out: list[TrunkLoad] = []
        seconds = max(0.0, now - self._since)
        for g in gates:
            offered, admitted, shed = g.offered, g.admitted, dict(g.shed)
            last = self._last.get(g.name)
            self._last[g.name] = (offered, admitted, shed)
            if last is not None and g.offered < last[0]:
                last = None  # counters restarted (a reload that renamed the trunk, say)
            d_offered = offered - (last[0] if last else 0)
            if d_offered <= 0:
                continue
            before = last[2] if last else {}
            reasons = {r: n - before.get(r, 0) for r, n in shed.items() if n - before.get(r, 0) > 0}
            out.append(TrunkLoad(at=self._since, seconds=round(seconds, 3), trunk=g.name, offered=d_offered,
                                 admitted=admitted - (last[1] if last else 0), shed=sum(reasons.values()),
                                 reasons=reasons))
        self._since = now
        return out


# --- SQLite -----------------------------------------------------------------------------------------------------

#: Table columns, in CallRecord field order (failures and policy_decisions stored as JSON text).
COLUMNS: Final = CallRecord.__struct_fields__
_JSON_COLUMNS: Final = frozenset({"failures", "policy_decisions"})
_BOOL_COLUMNS: Final = frozenset({"identity_present", "signed", "x5u_fetched"})
_SQL_TYPES: Final = {
    "source_port": "INTEGER",
    "status": "INTEGER",
    "invite_at": "REAL NOT NULL",
    "answered_at": "REAL",
    "ended_at": "REAL",
    "duration": "REAL",
    **dict.fromkeys(_BOOL_COLUMNS, "INTEGER"),
}

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{c} {_SQL_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    + ")",
    # Traceback: equality on orig and dest, a range on the time: one index range scan.
    "CREATE INDEX IF NOT EXISTS calls_orig_dest_at ON calls (orig, dest, invite_at)",
    # Reports over a window and retention pruning.
    "CREATE INDEX IF NOT EXISTS calls_at ON calls (invite_at)",
    # Schema 2: per-trunk load at the door, one row per trunk per interval with INVITEs offered.
    "CREATE TABLE IF NOT EXISTS trunk_load (id INTEGER PRIMARY KEY, at REAL NOT NULL, seconds REAL, trunk TEXT, "
    "offered INTEGER, admitted INTEGER, shed INTEGER, reasons TEXT)",
    "CREATE INDEX IF NOT EXISTS trunk_load_at ON trunk_load (at)",
)
LOAD_SQL: Final = ("INSERT INTO trunk_load (at, seconds, trunk, offered, admitted, shed, reasons) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_SQL: Final = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_JSON_INDEXES: Final = tuple(i for i, c in enumerate(COLUMNS) if c in _JSON_COLUMNS)


def row_of(rec: CallRecord) -> tuple[Any, ...]:
    """The INSERT parameters of a record (runs on the writer thread)."""
    row = list(msgspec.structs.astuple(rec))
    for i in _JSON_INDEXES:
        row[i] = json.dumps(row[i]) if row[i] else None
    return tuple(row)


def record_from_row(row: Sequence[Any]) -> CallRecord:
    """A CallRecord back from a SELECT of COLUMNS."""
    kw: dict[str, Any] = {}
    for name, value in zip(COLUMNS, row, strict=True):
        # JSON columns: text from SQLite, already decoded lists from PostgreSQL's jsonb.
        if name == "failures":
            value = tuple(json.loads(value) if isinstance(value, str) else value) if value else ()
        elif name == "policy_decisions":
            decoded = json.loads(value) if isinstance(value, str) else value
            value = tuple(tuple(d) for d in decoded) if value else ()
        elif name in _BOOL_COLUMNS and value is not None:
            value = bool(value)
        kw[name] = value
    if kw.get("signed") is None:
        kw["signed"] = False
    if kw.get("x5u_fetched") is None:
        kw["x5u_fetched"] = False
    return CallRecord(**kw)


def open_db(path: str | Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A read-write connection with the schema in place: WAL, NORMAL sync (a process crash loses nothing
    committed; a power cut may lose the last batches), and a busy timeout for workers sharing the file.

    Workers that open a new file at the same moment race to switch it to WAL, and SQLite answers the loser
    "database is locked" at once, without waiting its busy timeout (measured: 39 of 60 simultaneous first opens
    by two processes): the set-up is then tried again, within the busy timeout. (Called in the writer thread.)"""
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        while True:
            try:
                _set_up(conn)
                return conn
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
                forget_frames(exc)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    except BaseException:
        conn.close()
        raise


def _set_up(conn: sqlite3.Connection) -> None:
    """WAL, the sync level and the schema (each step may meet another worker's lock)."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in SCHEMA:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for queries (traceback, reports): never creates or locks the writer out."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no records database at {p}")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


# --- reading, whatever the backend -------------------------------------------------------------------------------


class RecordsError(Exception):
    """The records cannot be read (database unreachable, refused, missing): said to the user, never a crash."""


class Reader(ABC):
    """A read-only connection to the records. Traceback and reports write their SQL once for both backends;
    the few spots where the dialects differ are attributes here."""

    #: The driver's parameter placeholder.
    param: str = "?"
    #: SQL for the epoch minute of invite_at, as an integer (SQLite's CAST truncates; PostgreSQL's rounds).
    minute_sql: str = "CAST(invite_at / 60 AS INTEGER)"

    @abstractmethod
    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of one query (`param` placeholders). Raises RecordsError (or sqlite3.Error)."""

    @abstractmethod
    def close(self) -> None: ...

    def placeholders(self, n: int) -> str:
        return ", ".join([self.param] * n)

    def json_text_sql(self, column: str) -> str:
        """A JSON column as text (SQLite stores text; PostgreSQL's jsonb needs a cast)."""
        return column


class SqliteReader(Reader):
    def __init__(self, conn: sqlite3.Connection, *, own: bool = True) -> None:
        self.conn = conn
        self.own = own

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        if self.own:
            self.conn.close()


# --- traceback ----------------------------------------------------------------------------------------------------


def tn_variants(tn: str, country_code: str = "") -> list[str]:
    """The canonical forms a queried TN may be stored under: as given, and completed with the country code
    (a national number asked for on a gateway that stores E.164, or the reverse)."""
    out: list[str] = []
    policy = TNPolicy(country_code=country_code)
    for candidate in (try_canonical_tn(tn, policy), try_canonical_tn(tn)):
        if candidate and candidate not in out:
            out.append(candidate)
    if country_code:
        for candidate in list(out):
            if candidate.startswith(country_code) and len(candidate) - len(country_code) == policy.national_length:
                national = candidate[len(country_code) :]
                if national not in out:
                    out.append(national)
    if not out:
        raise ValueError(f"not a telephone number: {tn!r}")
    return out


# --- the writer -----------------------------------------------------------------------------------------------------


class WriterBase(ABC):
    """Bounded queue in front of a writer thread. `put` is the only method the SIP thread calls; the backends
    (SQLite below, PostgreSQL in proxy.records_pg) say how a batch reaches the database.

    Counters (read them from any thread): `dropped` (queue full), `written` (committed), `write_errors`
    (failed commits or opens), `lost` (records given up after failed retries), `pruned`; with a spill (the
    PostgreSQL backend) also `spilled`, `replayed` and `spill_dropped` (no room in the spill).
    """

    #: A failed batch is retried this many times (one per flush cycle) before it is counted as lost.
    RETRIES: Final = 3
    #: Failures are logged at most once per this many seconds (plus the first one).
    LOG_EVERY: Final = 60.0
    #: What `records.backend` names this writer.
    backend: str = ""

    def __init__(self, settings: RecordsSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._queue: deque[CallRecord] = deque()
        #: Per-trunk load rows (a few per interval): written with the next batch, bounded like the records.
        self._loads: deque[TrunkLoad] = deque()
        self._max = settings.queue_size
        self._batch = settings.batch_size
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_log = -1e18
        self._next_prune = 0.0
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.lost = 0
        self.pruned = 0
        self.spilled = 0
        self.replayed = 0
        self.spill_dropped = 0
        #: CPU seconds the writer thread spent (bench: what a record costs off the SIP path).
        self.cpu_seconds = 0.0

    # --- SIP thread -------------------------------------------------------------------------------------------
    def put(self, rec: CallRecord) -> bool:
        """Queue a record; False (and `dropped` + 1) when the queue is full. Never blocks."""
        q = self._queue
        if len(q) >= self._max or self._stopping:
            self.dropped += 1
            return False
        q.append(rec)
        if len(q) >= self._batch and not self._wake.is_set():
            self._wake.set()
        return True

    def put_load(self, rows: Iterable[TrunkLoad]) -> None:
        """Queue per-trunk load rows (from the SIP thread, a few every interval). Never blocks."""
        loads = self._loads
        for row in rows:
            if len(loads) >= self._max or self._stopping:
                self.dropped += 1
                continue
            loads.append(row)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def has_spill(self) -> bool:
        """Whether this backend spills to a local file while its database is unreachable."""
        return False

    @property
    def spill_bytes(self) -> int:
        """Bytes spilled and not replayed yet."""
        return 0

    @property
    def db_up(self) -> bool | None:
        """Whether the last attempt to reach the database worked (None: not known, or a local file)."""
        return None

    # --- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (in the worker process: threads do not survive fork)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="stirgate-records", daemon=True)
        self._thread.start()

    def flush_and_close(self, timeout: float = 30.0) -> int:
        """Stop taking records, commit (or spill) every queued one, close. Returns how many could not be kept."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("records_flush_timeout", queued=len(self._queue))
                return self._unwritten()
        else:
            self._drain(final=True)
            self._close_conn()
        return self._unwritten()

    # --- writer thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                self._wake.wait(self.settings.flush_interval)
                self._wake.clear()
                stopping = self._stopping
                self._drain(final=stopping)
                if stopping:
                    break
                self._maybe_prune()
                self.cpu_seconds = time.thread_time() - t0
        except Exception:  # pragma: no cover - a bug here must not take the SIP worker down
            log.exception("records_writer_crashed")
        finally:
            self._close_conn()
            self.cpu_seconds = time.thread_time() - t0

    @abstractmethod
    def _drain(self, final: bool = False) -> None:
        """Write the queue out. `final`: the last call before the thread ends."""

    @abstractmethod
    def _maybe_prune(self) -> None:
        """Retention (and other upkeep) when its interval has passed."""

    @abstractmethod
    def _close_conn(self) -> None: ...

    def _unwritten(self) -> int:
        """Records neither written nor kept anywhere (after the final drain: lost)."""
        return len(self._queue)

    def _where(self) -> dict[str, Any]:
        """Which database, for log lines."""
        return {"path": self.settings.path}

    def _log_failure(self, event: str, exc: BaseException, **kw: Any) -> None:
        """Log a failed write (at most every LOG_EVERY); its exception's chain is let go (the cyclic GC is off:
        one per flush for as long as the disk refuses would otherwise wait for the full pass)."""
        forget_frames(exc)
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY:
            self._last_log = now
            log.error(event, error=str(exc).strip(), **self._where(), write_errors=self.write_errors,
                      lost=self.lost, **kw)


class RecordWriter(WriterBase):
    """The SQLite writer: batches committed in WAL mode; a failing batch is retried, then counted lost."""

    backend = "sqlite"

    def __init__(self, settings: RecordsSettings, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, clock=clock)
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Any, ...]] = []
        self._pending_tries = 0

    def _unwritten(self) -> int:
        return len(self._queue) + len(self._pending)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_db(self.settings.path)
        return self._conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _drain(self, final: bool = False) -> None:
        """Commit the queue in batches. `final`: retry a failing batch a few times right now, then give up."""
        self._write_loads()
        q = self._queue
        tries = self.RETRIES + 1 if final else 1
        while True:
            if not self._pending:
                if not q:
                    return
                n = min(len(q), self._batch)
                popleft = q.popleft
                self._pending = [row_of(popleft()) for _ in range(n)]
                self._pending_tries = 0
            if not self._commit_pending():
                tries -= 1
                if tries <= 0:
                    if final:
                        # Stopping and the database refuses: count everything left as lost.
                        self.lost += len(self._pending) + len(q)
                        self._pending = []
                        q.clear()
                    return

    def _write_loads(self) -> None:
        """The queued trunk-load rows, in one transaction; on failure they are dropped (aggregates, not call
        records: the error is counted and logged, the next interval's rows carry on)."""
        loads = self._loads
        if not loads:
            return
        rows = []
        while loads:
            r = loads.popleft()
            rows.append((r.at, r.seconds, r.trunk, r.offered, r.admitted, r.shed,
                         json.dumps(r.reasons, sort_keys=True) if r.reasons else None))
        try:
            self._insert(LOAD_SQL, rows)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self._close_conn()
            self._log_failure("records_write_failed", exc, batch=len(rows))

    def _commit_pending(self) -> bool:
        rows = self._pending
        try:
            self._insert(INSERT_SQL, rows)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self._pending_tries += 1
            self._close_conn()
            if self._pending_tries > self.RETRIES:
                self.lost += len(rows)
                self._pending = []
            self._log_failure("records_write_failed", exc, batch=len(rows))
            return False
        self.written += len(rows)
        self._pending = []
        return True

    def _insert(self, sql: str, rows: list[Any]) -> None:
        """`rows` in one transaction, taking the write lock at once (WAL: other workers' writers wait their
        busy timeout rather than fail mid-transaction)."""
        conn = self._connection()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)

    def _maybe_prune(self) -> None:
        days = self.settings.retention_days
        now = self._clock()
        if days <= 0 or now < self._next_prune:
            return
        self._next_prune = now + self.settings.prune_interval
        try:
            self.pruned += prune(self._connection(), now - days * 86400.0)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self._close_conn()
            self._log_failure("records_prune_failed", exc)


def prune(conn: sqlite3.Connection, before: float, chunk: int = 20_000) -> int:
    """Delete records whose INVITE is older than `before`, in short transactions (the writer keeps going)."""
    total = 0
    while True:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE invite_at < ? ORDER BY invite_at LIMIT ?)",
                (before, chunk),
            )
            n = cur.rowcount
        total += n
        if n < chunk:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM trunk_load WHERE at < ?", (before,))
            return total


# --- the engine hook --------------------------------------------------------------------------------------------


def call_end_hook(writer: WriterBase | None, observers: Iterable[Callable[[CallRecord], None]] = (),
                  tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> Callable[[Call], None]:
    """What goes in `engine.call_end_hooks`: build the record once, feed the metrics, queue it for the disk."""
    obs = tuple(observers)
    put = writer.put if writer is not None else None

    def on_call_end(call: Call) -> None:
        rec = record_from_call(call, call.host.wall_offset, tn_policy)
        for observe in obs:
            observe(rec)
        if put is not None:
            put(rec)

    return on_call_end


def redirect_end_hook(writer: WriterBase | None, observers: Iterable[Callable[[CallRecord], None]] = (),
                      tn_policy: TNPolicy = DEFAULT_TN_POLICY,
                      wall_offset: Callable[[], float] = lambda: 0.0) -> Callable[[Redirected], None]:
    """What goes in `engine.redirector.hooks`: the same record, metrics and queue as an inline call's."""
    obs = tuple(observers)
    put = writer.put if writer is not None else None

    def on_redirected(r: Redirected) -> None:
        rec = record_from_redirect(r, wall_offset(), tn_policy)
        for observe in obs:
            observe(rec)
        if put is not None:
            put(rec)

    return on_redirected
