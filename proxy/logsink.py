"""Where structlog's JSON lines go: stderr, with the per-call lines batched.

A line per call at thousands of calls/s was a tenth of stirgate's CPU (stdlib JSON plus one write(2) and flush
per line). Here lines are encoded by msgspec and the per-call ones (`stirgate.call`) are buffered and written
together by `flush()`, which the server calls every few hundred milliseconds and at stop; every other line
(start, reload, errors) is written at once, after whatever is buffered, so the order on stderr is kept.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec

__all__ = ["BATCHED_LOGGERS", "LineLogger", "LineSink", "logger_factory", "render_json", "render_line", "sink",
           "utc_timestamp"]

#: Logger names whose lines are batched (high volume, nobody waits on them one by one).
BATCHED_LOGGERS = frozenset({"stirgate.call"})

_encoder = msgspec.json.Encoder(enc_hook=str)


def render_json(_logger: object, _method: str, event: MutableMapping[str, Any]) -> bytes:
    """structlog's last processor: the event as one JSON line (objects msgspec does not know become str)."""
    return render_line(event)


def render_line(event: MutableMapping[str, Any]) -> bytes:
    """An event as one JSON line, for a line built without structlog (the per-call line)."""
    return _encoder.encode(event) + b"\n"


_second = -1
_second_text = ""


def utc_timestamp(t: float) -> str:
    """`t` (Unix time) as structlog's TimeStamper(fmt="iso", utc=True) writes it: 2026-12-05T22:40:01.123456Z;
    the date and time of day formatted once per second."""
    global _second, _second_text
    sec = int(t)
    if sec != _second:
        _second = sec
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second_text}.{int((t - sec) * 1_000_000):06d}Z"


class LineSink:
    """A file descriptor and the batched lines not yet written to it."""

    __slots__ = ("_fd", "_limit", "_pending", "_size")

    def __init__(self, fd: int = 2, limit: int = 256 * 1024) -> None:
        self._fd = fd
        self._limit = limit
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, line: bytes) -> None:
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self._limit:
            self.flush()

    def write_now(self, line: bytes) -> None:
        self._pending.append(line)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass  # stderr closed or broken: logging must never take a call down


#: The process's sink (one per worker: each forked worker has its own buffer).
sink = LineSink()
atexit.register(sink.flush)


class LineLogger:
    """The structlog logger: every method takes the rendered line."""

    __slots__ = ("_emit",)

    def __init__(self, batched: bool) -> None:
        self._emit = sink.add if batched else sink.write_now

    def msg(self, message: bytes) -> None:
        self._emit(message)

    log = debug = info = warning = msg

    def error(self, message: bytes) -> None:
        sink.write_now(message)

    critical = exception = fatal = error


def logger_factory(*args: Any) -> LineLogger:
    """structlog passes get_logger's positional arguments: the first is the logger's name."""
    name = args[0] if args and isinstance(args[0], str) else ""
    return LineLogger(batched=name in BATCHED_LOGGERS)

