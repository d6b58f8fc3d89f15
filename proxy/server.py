"""Process life cycle: workers, event loop, signals, graceful drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog

from policies.loader import PolicySet, load_policies
from proxy import compiled
from proxy.api import start_api
from proxy.b2bua import Call
from proxy.config import Config, ConfigError, load_config
from proxy.engine import Engine
from proxy.logsink import logger_factory, render_json, sink
from proxy.metrics import Metrics, engine_snapshot
from proxy.records import RecordWriter, TrunkLoadMeter, call_end_hook
from proxy.stir.signer import SignedCall
from proxy.transport import SipServer

__all__ = ["configure_logging", "run"]

log = structlog.get_logger("stirgate", component="server")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL, "exception": logging.ERROR}


def configure_logging(level: str, components: Mapping[str, str] | None = None) -> None:
    """JSON lines on stderr; `components` raise or lower the level of one part (the `component` key each
    module's logger binds), so a carrier can silence the per-call lines and keep the rest."""
    levels = {name: _LEVELS[lvl] for name, lvl in (components or {}).items()}
    floor = min([_LEVELS[level], *levels.values()])
    default = _LEVELS[level]

    def by_component(_logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if _LEVELS.get(method, logging.INFO) < levels.get(event.get("component", ""), default):
            raise structlog.DropEvent
        return event

    structlog.configure(
        processors=[
            by_component,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            render_json,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(floor),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )


def tune_gc() -> None:
    """Calls and transactions are freed by reference counting (their links are broken when they end), so the
    cyclic GC only costs time: every young collection walks the transactions that must linger for their
    RFC 3261 timers (measured: 7 % of the engine's CPU per call), and older collections stall the loop for a
    large fraction of a second under load. So start-up objects are frozen out of it and automatic collection is
    off; `_full_gc` collects whatever cycles did form (x5u fetches, API requests) every `gc_full_interval`."""
    gc.collect()
    gc.freeze()
    gc.disable()


async def _flush_logs(interval: float = 0.25) -> None:
    """Per-call log lines are batched (see proxy.logsink): written out at least this often."""
    while True:
        await asyncio.sleep(interval)
        sink.flush()


async def _full_gc(interval: float) -> None:
    while interval > 0:
        await asyncio.sleep(interval)
        t = time.perf_counter()
        found = gc.collect()
        log.info("gc_full", unreachable=found, ms=round((time.perf_counter() - t) * 1000, 1))


def _call_logger() -> Callable[[Call], None]:
    """One JSON line per call, written when it ends: the decision and its identifiers (not one per message)."""
    call_log = structlog.get_logger("stirgate.call", component="call").bind()  # bound once, not per line

    def log_call(call: Call) -> None:
        inbound = call.inbound
        signed = call.signed
        call_log.info(
            "call",
            call_id=call.a.call_id,
            b_call_id=call.b.call_id if call.b is not None else None,
            trunk=call.ingress.name,
            egress=call.egress.trunk.name if call.egress is not None else None,
            status=call.final_status,
            end=call.end_reason,
            verstat=inbound.result.verstat if inbound is not None else None,
            attest=(inbound.result.attest if inbound is not None
                    else signed.attest if isinstance(signed, SignedCall) else None),
            duration=round(call.ended_at - call.answered_at, 3)
            if call.answered_at is not None and call.ended_at is not None else 0,
        )

    return log_call


#: Seconds between the per-trunk load rows (INVITEs offered, admitted, refused by reason) of the records.
TRUNK_LOAD_INTERVAL = 10.0


async def _record_trunk_load(engine: Engine, writer: RecordWriter, meter: TrunkLoadMeter) -> None:
    """Refused INVITEs leave no call record (refusing them must cost nothing): their counts per trunk go to the
    records every TRUNK_LOAD_INTERVAL seconds instead, so that a flood shows in `stirgate report`."""
    while True:
        await asyncio.sleep(TRUNK_LOAD_INTERVAL)
        writer.put_load(meter.rows(engine.admission.gates(), time.time()))


async def _refresh_crls(engine: Engine, interval: float) -> None:
    while interval > 0:
        await asyncio.sleep(interval)
        try:
            if engine.auth.refresh_crls():
                log.info("crl_refreshed")
        except Exception as exc:  # a half-written CRL file must not stop verification: keep the old store
            log.warning("crl_refresh_failed", error=str(exc))


async def load_policy_set(config: Config, engine: Engine) -> PolicySet | None:
    """The config's policy file, validated and with its data loaded (lists are read in threads)."""
    if config.policies is None:
        return None
    pset = load_policies(config.policies, trunks=[t.name for t in config.trunks], tn_policy=engine.auth.tn_policy,
                         counters=engine.policy_counters, previous=engine.policies)
    await pset.setup()
    return pset


async def reload(engine: Engine, worker: int) -> None:
    """SIGHUP: re-read the config and policy files; on any error keep running on the old ones.

    Calls in progress keep the routes and policy chain they started with; new calls get the new ones.
    """
    path = engine.config.path
    try:
        config = load_config(path)
        policies = await load_policy_set(config, engine)
        engine.reconfigure(config, policies)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("reload_failed", worker=worker, error=str(exc))
        return
    log.info("reloaded", worker=worker, config=path, policies=config.policies)


async def _serve(config: Config, worker: int, workers: int) -> int:
    loop = asyncio.get_running_loop()
    udp_listens = [(x.transport, x.host, x.port) for x in config.listen]
    first_udp = next((x for x in config.listen if x.transport == "udp"), config.listen[0])
    first_tcp = next((x for x in config.listen if x.transport == "tcp"), None)
    private: tuple[str, int] | None = None
    local = {"udp": (first_udp.host, first_udp.port)}
    if first_tcp is not None:
        local["tcp"] = (first_tcp.host, first_tcp.port)
    if workers > 1:
        private = (first_udp.host, config.sip.worker_port_base + worker)
        local["udp"] = private
    engine = Engine(config, local)
    engine.call_end_hooks.append(_call_logger())
    server = SipServer(engine, loop, config.sip.max_tcp_message)
    metrics = Metrics()
    metrics.trunk_gates = lambda: engine.admission.gates()
    server.metrics = metrics
    writer = RecordWriter(config.records) if config.records.enabled else None
    if writer is not None:
        writer.start()
    engine.call_end_hooks.append(call_end_hook(writer, [metrics.observe_call], engine.auth.tn_policy))
    try:
        engine.policies = await load_policy_set(config, engine)
    except ConfigError as exc:
        log.error("policies_invalid", error=str(exc))
        if writer is not None:
            writer.flush_and_close()
        return 2
    try:
        await server.start(udp_listens, reuse_port=workers > 1, private_udp=private)
    except OSError as exc:
        log.error("bind_failed", listen=[f"{t}:{h}:{p}" for t, h, p in udp_listens], error=str(exc))
        server.close()
        if writer is not None:
            writer.flush_and_close()
        return 2
    stop = asyncio.Event()
    drained = asyncio.Event()

    def on_term() -> None:
        if not engine.accepting:
            stop.set()  # a second SIGTERM: stop now
            return
        log.info("draining", worker=worker, active_calls=engine.active_calls())
        engine.accepting = False
        server.on_idle = check_drained  # from now on, after every message and timer: are we done?
        stop.set()

    def check_drained() -> None:
        if not engine.accepting and not engine.calls:
            drained.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    reloading: list[asyncio.Task[None]] = []
    loop.add_signal_handler(signal.SIGHUP, lambda: reloading.append(loop.create_task(reload(engine, worker))))
    api = None
    if config.api.enabled:
        try:
            api = await start_api(config.api, lambda: engine_snapshot(engine),
                                  config.records.path if writer is not None else None, metrics=metrics,
                                  writer=writer, country_code=config.stir.country_code,
                                  port=config.api.host_port[1] + worker if workers > 1 else None)
        except OSError as exc:
            # Calls matter more than metrics: carry them without the API rather than not at all.
            log.error("api_unavailable", listen=config.api.listen, error=str(exc))
    tune_gc()
    background = [
        loop.create_task(_full_gc(config.sip.gc_full_interval)),
        loop.create_task(_flush_logs()),
        loop.create_task(_refresh_crls(engine, config.stir.crl_refresh if config.stir.crl_dir else 0)),
    ]
    meter = TrunkLoadMeter(time.time())
    if writer is not None:
        background.append(loop.create_task(_record_trunk_load(engine, writer, meter)))
    log.info("listening", worker=worker, hot_path="compiled" if compiled.is_compiled() else "python",
             listen=[f"{t}:{h}:{p}" for t, h, p in udp_listens],
             trunks=len(config.trunks))
    await stop.wait()
    check_drained()
    try:
        await asyncio.wait_for(drained.wait(), timeout=config.sip.drain_grace)
    except TimeoutError:
        log.warning("drain_timeout", worker=worker, active_calls=engine.active_calls())
    for task in background:
        task.cancel()
    server.close()
    if api is not None:
        await api.cleanup()
    if writer is not None:
        writer.put_load(meter.rows(engine.admission.gates(), time.time()))
        unwritten = writer.flush_and_close()
        log.info("records_closed", worker=worker, written=writer.written, dropped=writer.dropped,
                 lost=writer.lost + unwritten, write_errors=writer.write_errors)
    log.info("stopped", worker=worker, **engine.stats)  # written at once, after the batched call lines
    return 0


def _run_worker(config: Config, worker: int, workers: int) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        log.warning("uvloop_missing")
    return asyncio.run(_serve(config, worker, workers))


def run(config: Config, workers: int = 1) -> int:
    configure_logging(config.logging.level, {str(k): v for k, v in config.logging.components.items()})
    if workers <= 1:
        return _run_worker(config, 0, 1)
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_worker(config, i, workers)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    rc = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        rc = rc or os.waitstatus_to_exitcode(status)
    return rc
