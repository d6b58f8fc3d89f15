"""Which records backend, and the queries on any of them: the writer and readers `records.backend` names
(SQLite, or PostgreSQL imported only when configured), a pool of readers for the API, and the traceback lookup.

Kept apart from `proxy.records` (the record model, the SQLite backend and what every backend shares) so that
the PostgreSQL backend builds on that without the two importing each other.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias, TypeVar

from proxy.config import RecordsSettings
from proxy.records import (
    COLUMNS,
    CallRecord,
    Reader,
    RecordsError,
    RecordWriter,
    SqliteReader,
    WriterBase,
    connect_readonly,
    record_from_row,
    tn_variants,
)

__all__ = ["ReaderPool", "Source", "find_call", "is_postgres_dsn", "make_writer", "open_reader", "reading",
           "traceback"]

T = TypeVar("T")

#: What the queries accept: a SQLite path, a PostgreSQL DSN (postgresql://...), a connection or reader the
#: caller keeps, or the `records:` settings (their backend decides).
Source: TypeAlias = "str | Path | sqlite3.Connection | Reader | RecordsSettings"


def is_postgres_dsn(text: str) -> bool:
    """A PostgreSQL URI rather than a SQLite path (the CLI's --db takes either)."""
    return text.startswith(("postgresql://", "postgres://"))


def open_reader(source: Source) -> tuple[Reader, bool]:
    """A Reader on `source`, and whether the caller owns it (must close it). FileNotFoundError: no SQLite file;
    RecordsError: PostgreSQL unreachable."""
    if isinstance(source, Reader):
        return source, False
    if isinstance(source, sqlite3.Connection):
        return SqliteReader(source, own=False), False
    if isinstance(source, RecordsSettings):
        if source.backend == "postgresql":
            from proxy.records_pg import PgReader

            return PgReader.open(source.dsn, source.connect_timeout), True
        return SqliteReader(connect_readonly(source.path)), True
    if isinstance(source, str) and is_postgres_dsn(source):
        from proxy.records_pg import PgReader

        return PgReader.open(source), True
    return SqliteReader(connect_readonly(source)), True


@contextlib.contextmanager
def reading(source: Source) -> Iterator[Reader]:
    """A Reader on `source`, closed afterwards when this opened it."""
    reader, own = open_reader(source)
    try:
        yield reader
    finally:
        if own:
            reader.close()


class ReaderPool:
    """A few idle readers kept open between API requests: a PostgreSQL session costs ~10 ms to open, a traceback
    lookup a fraction of a millisecond. A pooled reader that fails (the server restarted) is replaced once."""

    def __init__(self, source: Source, keep: int = 2) -> None:
        self.source = source
        self.keep = keep
        self._idle: list[Reader] = []
        self._lock = threading.Lock()

    def run(self, query: Callable[[Reader], T]) -> T:
        """query(reader) on a pooled or new reader (from any thread)."""
        with self._lock:
            reader = self._idle.pop() if self._idle else None
        if reader is not None:
            try:
                result = query(reader)
            except RecordsError:
                reader.close()  # stale: the server restarted or dropped us; try once on a fresh session
            else:
                self._give_back(reader)
                return result
        reader, _ = open_reader(self.source)
        try:
            result = query(reader)
        except BaseException:
            reader.close()
            raise
        self._give_back(reader)
        return result

    def _give_back(self, reader: Reader) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(reader)
                return
        reader.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for reader in idle:
            reader.close()



# --- traceback ----------------------------------------------------------------------------------------------------


def traceback(db: Source, orig: str, dest: str, at: float, window: float = 300.0,
              *, country_code: str = "", limit: int = 1000) -> list[CallRecord]:
    """Calls from `orig` to `dest` whose INVITE arrived within `window` seconds either side of `at`.

    One index range scan on (orig, dest, invite_at) per TN spelling: milliseconds among millions of records
    (on PostgreSQL, in the one or two day partitions the window touches).
    """
    origs = tn_variants(orig, country_code)
    dests = tn_variants(dest, country_code)
    params = (*origs, *dests, at - window, at + window, limit)
    with reading(db) as r:
        p = r.param
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM calls WHERE orig IN ({r.placeholders(len(origs))}) "
            f"AND dest IN ({r.placeholders(len(dests))}) AND invite_at BETWEEN {p} AND {p} "
            f"ORDER BY invite_at LIMIT {p}"
        )
        return [record_from_row(row) for row in r.fetch(sql, params)]



def find_call(db: Source, call_id: str, since: float, until: float) -> CallRecord | None:
    """The call with this A-leg Call-ID whose INVITE arrived in [since, until) (the time bounds keep the scan to
    the window's index range / partitions)."""
    with reading(db) as r:
        p = r.param
        rows = r.fetch(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE invite_at >= {p} AND invite_at < {p} "
                       f"AND a_call_id = {p} ORDER BY invite_at LIMIT 1", (since, until, call_id))
    return record_from_row(rows[0]) if rows else None


# --- the writer -----------------------------------------------------------------------------------------------------


def make_writer(settings: RecordsSettings, *, worker: int = 0, clock: Callable[[], float] = time.time) -> WriterBase:
    """The writer `records.backend` names (worker: the index of this worker process, for its own spill file)."""
    if settings.backend == "postgresql":
        from proxy.records_pg import PgRecordWriter

        return PgRecordWriter(settings, worker=worker, clock=clock)
    return RecordWriter(settings, clock=clock)
