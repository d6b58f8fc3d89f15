"""The standard library's log records (aiohttp, asyncio, redis, psycopg, the policy chain) as stirgate's JSON lines.

Without this, a record from one of those loggers reached Python's last-resort handler: a plain-text line, and
for an exception a multi-line traceback, among the JSON lines on stderr, which breaks any log shipper that reads
one JSON object per line. Here each record becomes one structlog event, so it is rendered, timestamped and
filtered by component level like every other line: the component is named after the logger (`stirgate.X` -> X,
aiohttp -> `api`, asyncio -> `server`, others their package), the event is the record's message and `logger` its
logger's name; an exception travels as `exc_info` and lands, formatted, in the line's `exception` key.

A malformed HTTP request to one of stirgate's HTTP listeners (the API, the STI service) is the client's fault,
not stirgate's: aiohttp logs it as an error with a traceback; here it is one `api_bad_request` line (warning,
or debug where aiohttp says debug: non-HTTP bytes on the port) with the peer and the parser's complaint. Its
exception's frames are let go at once (`forget_frames`): with the automatic GC off, a traceback kept alive by
the frames it holds is garbage only the periodic full pass frees.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from proxy.tracebacks import forget_frames

__all__ = ["StructlogHandler", "component_of", "install", "uninstall"]

#: Loggers outside the `stirgate` tree, by their first name, and the component they log under.
_COMPONENTS: Final = {"aiohttp": "api", "asyncio": "server"}
#: aiohttp's logger for what its HTTP servers cannot serve: its records are always wanted here (its debug ones
#: too), so their exceptions' frames are let go whatever the level.
AIOHTTP_SERVER: Final = "aiohttp.server"


def component_of(name: str) -> str:
    """The component a standard-library logger's records are filtered and shown under."""
    first, _, rest = name.partition(".")
    if first == "stirgate":
        return rest.partition(".")[0] or "server"
    return _COMPONENTS.get(first, first)


class StructlogHandler(logging.Handler):
    """Hands every record to structlog (its processors render it; its filter drops it below the level)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger("stirgate", component=component_of(record.name))
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, HttpProcessingError):
                forget_frames(exc)
                level = logging.DEBUG if record.levelno <= logging.DEBUG else logging.WARNING
                peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
                log.log(level, "api_bad_request", peer=peer, status=exc.code, error=" ".join(exc.message.split()))
                return
            kw: dict[str, Any] = {"logger": record.name}
            if exc is not None:  # (`logger.exception` outside a handler gives (None, None, None): nothing to show)
                kw["exc_info"] = record.exc_info
            log.log(record.levelno, record.getMessage(), **kw)
        except Exception:  # a record that cannot be shown must not take its caller down
            self.handleError(record)


def install(level: int) -> None:
    """Make the root logger's only handler a StructlogHandler, from `level` up (the lowest level any component
    is shown at; the components' own levels are applied by structlog)."""
    uninstall()
    root = logging.getLogger()
    root.addHandler(StructlogHandler())
    root.setLevel(level)
    logging.getLogger(AIOHTTP_SERVER).setLevel(logging.DEBUG)


def uninstall() -> None:
    """The standard library's defaults again (tests that configured logging clean up with it)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StructlogHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(AIOHTTP_SERVER).setLevel(logging.NOTSET)
