"""The spill: a local append-only file that keeps call records while the central database is unreachable.

Why a file of JSON lines: the records a node accepted must outlive a database outage and a restart of the node,
and be replayed in the order they were spilled. One batch per line, `{"batch": "<id>", "records": [...]}`
encoded by msgspec (JSON escapes every newline inside a string, so a line is a batch). An append is one
`write()` on an O_APPEND descriptor, then `fsync` when `fsync` is on: once `append` returns, the batch survives a
crash of the process and, with fsync, a power cut.

Crash safety:
- A crash in the middle of an append leaves a torn last line. `open()` cuts the file back to its last complete
  line and counts the bytes cut (`torn_bytes`): that batch was still in the process's memory when it died, like
  everything in the record queue at that moment.
- A complete line that does not decode (a disk error) is skipped and counted (`corrupt_lines`).
- The replay position (`head`) lives in memory: the writer commits the batch at the head, then `advance()`s.
  When every line is replayed the file is truncated to zero. After a crash mid-replay the file is replayed from
  its start again; the batch ids make that idempotent (the database keeps the ids of the batches it committed).
- The file is bounded (`max_bytes`): an append that would pass the bound first compacts the file (drops the
  replayed prefix), then is refused (`append` returns False; the caller counts the records dropped).
- An exclusive flock: two processes never spill into one file (`SpillLocked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from proxy.records import CallRecord

__all__ = ["Spill", "SpillBatch", "SpillLocked"]

_CHUNK: Final = 1 << 20


class SpillBatch(msgspec.Struct, frozen=True, gc=False):
    """One line of the spill: a batch of records and the id that makes its replay idempotent."""

    batch: str
    records: tuple[CallRecord, ...]


class SpillLocked(OSError):
    """Another process holds the spill file."""


class Spill:
    """An append-only file of record batches with a replay head. Not thread-safe: the writer thread owns it."""

    def __init__(self, path: str | Path, max_bytes: int, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._fd: int | None = None
        #: Bytes in the file, and the offset of the next batch to replay.
        self.size = 0
        self.head = 0
        #: Bytes of a torn last line cut at open; complete lines that did not decode.
        self.torn_bytes = 0
        self.corrupt_lines = 0
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(SpillBatch).decode

    # --- life cycle -------------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Open (creating it and its folder), lock, and cut a torn last line. Raises OSError."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = self._open_locked(self.path)
        try:
            if created:
                self._fsync_dir()
            self.size = os.fstat(fd).st_size
            self.head = 0
            self._fd = fd
            self._cut_torn_tail()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    @staticmethod
    def _open_locked(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpillLocked(f"{path} is in use by another process") from None
        return fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _cut_torn_tail(self) -> None:
        fd = self._require()
        if self.size == 0 or os.pread(fd, 1, self.size - 1) == b"\n":
            return
        end = self.size
        keep = 0
        while end > 0:
            start = max(0, end - _CHUNK)
            nl = os.pread(fd, end - start, start).rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        self.torn_bytes += self.size - keep
        os.ftruncate(fd, keep)
        os.fsync(fd)
        self.size = keep

    def _require(self) -> int:
        if self._fd is None:
            raise OSError(f"spill {self.path} is not open")
        return self._fd

    # --- appending --------------------------------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        """Bytes not replayed yet (what the metrics show)."""
        return self.size - self.head

    def append(self, batch_id: str, records: Sequence[CallRecord]) -> bool:
        """Append one batch; True once it is on disk (fsynced when `fsync`). False: no room (max_bytes).
        Raises OSError when the disk refuses; the file is then cut back to where it was."""
        self._require()
        line = self._encode(SpillBatch(batch_id, tuple(records))) + b"\n"
        if self.size + len(line) > self.max_bytes:
            self.compact()
            if self.size + len(line) > self.max_bytes:
                return False
        fd = self._require()  # compact() may have replaced the file
        view = memoryview(line)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise
        self.size += len(line)
        return True

    def compact(self) -> None:
        """Drop the replayed prefix: copy what is pending to a new file and rename it over this one."""
        fd = self._require()
        if self.head == 0:
            return
        tmp = self.path.with_name(self.path.name + ".compact")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pos = self.head
            while pos < self.size:
                data = os.pread(fd, min(_CHUNK, self.size - pos), pos)
                if not data:
                    break
                os.write(out, data)
                pos += len(data)
            os.fsync(out)
        finally:
            os.close(out)
        new_fd = self._open_locked(tmp)
        os.replace(tmp, self.path)
        self._fsync_dir()
        os.close(fd)
        self._fd = new_fd
        self.size = os.fstat(new_fd).st_size
        self.head = 0

    # --- replaying --------------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[SpillBatch, int] | None:
        """The batch at the head and the offset after it, or None when everything was replayed. Lines that do
        not decode are skipped (counted in `corrupt_lines`) and the head moves past them."""
        fd = self._require()
        while self.head < self.size:
            line, after = self._line_at(fd, self.head)
            try:
                return self._decode(line), after
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.corrupt_lines += 1
                self.advance(after)
        return None

    def _line_at(self, fd: int, offset: int) -> tuple[bytes, int]:
        parts: list[bytes] = []
        pos = offset
        while pos < self.size:
            chunk = os.pread(fd, min(_CHUNK, self.size - pos), pos)
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                parts.append(chunk[:nl])
                return b"".join(parts), pos + nl + 1
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts), self.size  # no newline: only a file changed under us; it will not decode

    def advance(self, offset: int) -> None:
        """The batches before `offset` are in the database. When nothing is left, the file is emptied."""
        fd = self._require()
        self.head = min(offset, self.size)
        if self.head >= self.size:
            os.ftruncate(fd, 0)
            if self.fsync:
                os.fsync(fd)
            self.size = self.head = 0
