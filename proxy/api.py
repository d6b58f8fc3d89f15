"""HTTP API on the worker's event loop: /healthz, /metrics, /traceback, /report (127.0.0.1:8080 by default).

Why database queries go to a thread: this loop also carries SIP; a report over a busy hour must not stall
it. The metrics render runs on the loop (it reads the dicts the SIP thread writes, so no lock is needed).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.config import ApiSettings
from proxy.metrics import Metrics
from proxy.records import RecordWriter, traceback
from proxy.reports import parse_duration, parse_time, report

__all__ = ["build_app", "start_api"]

_METRICS_KEY = web.AppKey("metrics", Metrics)
_DB_KEY = web.AppKey("db_path", str)
_CC_KEY = web.AppKey("country_code", str)
_WRITER_KEY = web.AppKey("writer", object)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=1), status=status, content_type="application/json")


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


async def _healthz(request: web.Request) -> web.Response:
    writer = request.app[_WRITER_KEY]
    body: dict[str, Any] = {"status": "ok"}
    if isinstance(writer, RecordWriter):
        body["records_writer"] = "up" if writer.alive else "down"
        body["record_write_errors"] = writer.write_errors
    return _json(body)


async def _metrics(request: web.Request) -> web.Response:
    data = request.app[_METRICS_KEY].render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _db(request: web.Request) -> str | None:
    path = request.app[_DB_KEY]
    return path if path and Path(path).exists() else None


async def _traceback(request: web.Request) -> web.Response:
    q = request.query
    missing = [k for k in ("orig", "dest", "at") if not q.get(k)]
    if missing:
        return _bad(f"missing parameter(s): {', '.join(missing)} (orig, dest, at; window optional, default 5m)")
    try:
        at = parse_time(q["at"])
        window = parse_duration(q.get("window", "5m"))
    except ValueError as exc:
        return _bad(str(exc))
    db = _db(request)
    if db is None:
        return _json({"error": "no records database"}, status=503)
    cc = request.app[_CC_KEY]
    try:
        records = await asyncio.to_thread(traceback, db, q["orig"], q["dest"], at, window, country_code=cc)
    except ValueError as exc:
        return _bad(str(exc))
    return _json({
        "orig": q["orig"],
        "dest": q["dest"],
        "at": datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(),
        "window_seconds": window,
        "calls": [r.as_dict() for r in records],
    })


async def _report(request: web.Request) -> web.Response:
    q = request.query
    try:
        now = time.time()
        since = now - parse_duration(q.get("since", "1h"))
        until = parse_time(q["until"], now) if q.get("until") else now
        limit = int(q.get("limit", "20"))
    except ValueError as exc:
        return _bad(str(exc))
    db = _db(request)
    if db is None:
        return _json({"error": "no records database"}, status=503)
    return _json(await asyncio.to_thread(report, db, since, until, limit))


def build_app(metrics: Metrics, db_path: str | None, *, writer: RecordWriter | None = None,
              country_code: str = "",
              extra_routes: Callable[[web.Application], None] | None = None) -> web.Application:
    """`extra_routes` adds more endpoints (the ATIS-1000082 API when it has no listener of its own)."""
    app = web.Application()
    app[_METRICS_KEY] = metrics
    app[_DB_KEY] = db_path or ""
    app[_CC_KEY] = country_code
    app[_WRITER_KEY] = writer
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/traceback", _traceback)
    app.router.add_get("/report", _report)
    if extra_routes is not None:
        extra_routes(app)
    return app


async def start_api(settings: ApiSettings, engine_stats_getter: Callable[[], Mapping[str, float]] | None,
                    db_path: str | None, *, metrics: Metrics | None = None, writer: RecordWriter | None = None,
                    country_code: str = "", port: int | None = None,
                    extra_routes: Callable[[web.Application], None] | None = None) -> web.AppRunner:
    """Serve the API; stop it with `await runner.cleanup()`. `port` overrides the configured one (a worker
    other than the first uses port + worker index: each worker has its own engine and counters)."""
    m = metrics if metrics is not None else Metrics()
    m.bind(engine_stats_getter, writer)
    runner = web.AppRunner(build_app(m, db_path, writer=writer, country_code=country_code,
                                     extra_routes=extra_routes), access_log=None)
    await runner.setup()
    host, configured = settings.host_port
    site = web.TCPSite(runner, host, configured if port is None else port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
