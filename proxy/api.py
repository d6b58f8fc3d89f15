"""HTTP API on the worker's event loop: /healthz, /metrics, /traceback, /report (127.0.0.1:8080 by default).

Why database queries go to a thread: this loop also carries SIP; a report over a busy hour must not stall
it. The metrics render runs on the loop (it reads the dicts the SIP thread writes, so no lock is needed).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.campaigns import campaigns
from proxy.config import ApiSettings, RecordsSettings
from proxy.feedback import LABELS
from proxy.http_answers import plain_http_errors
from proxy.metrics import Metrics
from proxy.records import CallRecord, RecordsError, WriterBase
from proxy.recordstore import ReaderPool, Source, find_call, traceback
from proxy.reports import parse_duration, parse_time, report

__all__ = ["build_app", "start_api"]

T = TypeVar("T")

_METRICS_KEY = web.AppKey("metrics", Metrics)
_DB_KEY = web.AppKey("db", object)
_CC_KEY = web.AppKey("country_code", str)
_POOL_KEY = web.AppKey("readers", object)
_WRITER_KEY = web.AppKey("writer", object)
_FEEDBACK_KEY = web.AppKey("feedback", object)
_READINESS_KEY = web.AppKey("readiness", object)
log = structlog.get_logger("stirgate.api", component="server")


def _json(data: Any, status: int = 200) -> web.Response:
    # Indented for people reading with curl. Not json.dumps(indent=...): its pure-Python encoder's closures form
    # reference cycles on every call (~11 objects), left for the periodic full GC pass (see proxy.server).
    body = msgspec.json.format(msgspec.json.encode(data), indent=1)
    return web.Response(body=body, status=status, content_type="application/json")


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


async def _healthz(request: web.Request) -> web.Response:
    writer = request.app[_WRITER_KEY]
    body: dict[str, Any] = {"status": "ok"}
    if isinstance(writer, WriterBase):
        body["records_backend"] = writer.backend
        body["records_writer"] = "up" if writer.alive else "down"
        body["record_write_errors"] = writer.write_errors
        if writer.has_spill:
            up = writer.db_up
            body["records_db"] = "unknown" if up is None else "up" if up else "down"
            body["records_spill_bytes"] = writer.spill_bytes
    return _json(body)


async def _readyz(request: web.Request) -> web.Response:
    """Whether this worker takes new calls, as its answer to an OPTIONS probe says: 200 `ready`, or 503 with why
    not (`draining` after SIGTERM, `overloaded: <bound>`). For load balancers and orchestrators that probe over
    HTTP; /healthz stays 200 while the process serves (a liveness probe must not restart a draining or
    overloaded node)."""
    readiness = request.app[_READINESS_KEY]
    reason = readiness() if callable(readiness) else ""
    if reason:
        return _json({"status": reason}, status=503)
    return _json({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    data = request.app[_METRICS_KEY].render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _db(request: web.Request) -> Source | None:
    """Where /traceback and /report read: the SQLite file once it exists, or the PostgreSQL database."""
    db = request.app[_DB_KEY]
    if isinstance(db, RecordsSettings):
        return db if db.backend == "postgresql" or Path(db.path).exists() else None
    return db if isinstance(db, str) and db and Path(db).exists() else None


def _query(request: web.Request, db: Source, query: Callable[[Source], T]) -> T:
    """Run a query (on a worker thread): PostgreSQL sessions are kept between requests, SQLite opens per request."""
    pool = request.app[_POOL_KEY]
    if isinstance(pool, ReaderPool):
        return pool.run(query)
    return query(db)


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
        records = await asyncio.to_thread(
            _query, request, db, lambda src: traceback(src, q["orig"], q["dest"], at, window, country_code=cc))
    except ValueError as exc:
        return _bad(str(exc))
    except RecordsError as exc:
        return _json({"error": str(exc)}, status=503)
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
        gap = parse_duration(q.get("gap", "1h"))
    except ValueError as exc:
        return _bad(str(exc))
    db = _db(request)
    if db is None:
        return _json({"error": "no records database"}, status=503)
    if q.get("campaigns") in ("1", "true", "yes"):
        def query(src: Source) -> dict[str, Any]:
            return campaigns(src, since, until, gap=gap, limit=limit)
    else:
        def query(src: Source) -> dict[str, Any]:
            return report(src, since, until, limit)
    try:
        return _json(await asyncio.to_thread(_query, request, db, query))
    except RecordsError as exc:
        return _json({"error": str(exc)}, status=503)


async def _feedback(request: web.Request) -> web.Response:
    """{"call_id": ..., "label": "robocall"|"wanted"} (or orig, dest, at instead of call_id): the label goes to
    the risk score's reputation of the call's gateway and number, and to the log."""
    apply = request.app[_FEEDBACK_KEY]
    if not callable(apply):
        return _json({"error": "no policies take feedback"}, status=503)
    if request.content_type != "application/json":
        return _json({"error": "expected application/json"}, status=415)
    try:
        body = await request.json()
    except ValueError as exc:
        return _bad(f"not JSON: {exc}")
    if not isinstance(body, dict):
        return _bad("expected a JSON object")
    label = body.get("label")
    if label not in LABELS:
        return _bad(f"label must be one of {', '.join(LABELS)}")
    call_id = body.get("call_id")
    try:
        now = time.time()
        at = parse_time(str(body["at"]), now) if body.get("at") is not None else None
    except ValueError as exc:
        return _bad(str(exc))
    if not isinstance(call_id, str) and not (body.get("orig") and body.get("dest") and at is not None):
        return _bad("give call_id (and optionally at), or orig, dest and at")
    db = _db(request)
    if db is None:
        return _json({"error": "no records database"}, status=503)
    cc = request.app[_CC_KEY]

    def lookup(src: Source) -> CallRecord | None:
        if isinstance(call_id, str):
            since, until = (at - 86400, at + 86400) if at is not None else (now - 7 * 86400, now + 60)
            return find_call(src, call_id, since, until)
        assert at is not None
        found = traceback(src, str(body["orig"]), str(body["dest"]), at, 300.0, country_code=cc, limit=1)
        return found[0] if found else None

    try:
        rec = await asyncio.to_thread(_query, request, db, lookup)
    except ValueError as exc:
        return _bad(str(exc))
    except RecordsError as exc:
        return _json({"error": str(exc)}, status=503)
    if rec is None:
        return _json({"error": "no such call in the records"}, status=404)
    result = apply(rec, label)
    log.info("feedback", **result)
    return _json(result)


def build_app(metrics: Metrics, db: str | RecordsSettings | None, *, writer: WriterBase | None = None,
              country_code: str = "",
              feedback: Callable[[CallRecord, str], dict[str, Any]] | None = None,
              extra_routes: Callable[[web.Application], None] | None = None,
              readiness: Callable[[], str] | None = None) -> web.Application:
    """`db`: the SQLite path, or the `records:` settings (their backend decides); None: no records.
    `extra_routes` adds more endpoints (the ATIS-1000082 API when it has no listener of its own); `readiness`
    says why no new call is taken ("" when they are), for /readyz."""
    app = web.Application(middlewares=[plain_http_errors])
    app[_METRICS_KEY] = metrics
    app[_DB_KEY] = db or ""
    pool = ReaderPool(db) if isinstance(db, RecordsSettings) and db.backend == "postgresql" else None
    app[_POOL_KEY] = pool
    if pool is not None:
        async def close_pool(_app: web.Application) -> None:
            await asyncio.to_thread(pool.close)

        app.on_cleanup.append(close_pool)
    app[_CC_KEY] = country_code
    app[_WRITER_KEY] = writer
    app[_FEEDBACK_KEY] = feedback
    app[_READINESS_KEY] = readiness
    app.router.add_post("/feedback", _feedback)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/traceback", _traceback)
    app.router.add_get("/report", _report)
    if extra_routes is not None:
        extra_routes(app)
    return app


async def start_api(settings: ApiSettings, engine_stats_getter: Callable[[], Mapping[str, float]] | None,
                    db: str | RecordsSettings | None, *, metrics: Metrics | None = None,
                    writer: WriterBase | None = None,
                    country_code: str = "", port: int | None = None,
                    feedback: Callable[[CallRecord, str], dict[str, Any]] | None = None,
                    extra_routes: Callable[[web.Application], None] | None = None,
                    readiness: Callable[[], str] | None = None) -> web.AppRunner:
    """Serve the API; stop it with `await runner.cleanup()`. `port` overrides the configured one (a worker
    other than the first uses port + worker index: each worker has its own engine and counters)."""
    m = metrics if metrics is not None else Metrics()
    m.bind(engine_stats_getter, writer)
    runner = web.AppRunner(build_app(m, db, writer=writer, country_code=country_code, feedback=feedback,
                                     extra_routes=extra_routes, readiness=readiness), access_log=None)
    await runner.setup()
    host, configured = settings.host_port
    site = web.TCPSite(runner, host, configured if port is None else port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
