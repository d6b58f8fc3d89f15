"""Process life cycle: workers, event loop, signals, graceful drain."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

import msgspec
import structlog

from policies.loader import PolicySet, load_policies
from proxy import compiled, logbridge
from proxy.api import start_api
from proxy.b2bua import Call
from proxy.config import Config, ConfigError, load_config
from proxy.engine import Engine
from proxy.feedback import apply_feedback
from proxy.limit_shares import ShareBoard, board_for, limit_shares
from proxy.logsink import logger_factory, render_json, render_line, sink, utc_timestamp
from proxy.metrics import Metrics, engine_snapshot
from proxy.records import TrunkLoadMeter, WriterBase, call_end_hook, redirect_end_hook
from proxy.recordstore import make_writer
from proxy.redirect import Redirected
from proxy.redis_state import RedisState
from proxy.sdnotify import Notifier
from proxy.sti_api import StiApi, start_sti_api
from proxy.stir.signer import SignedCall
from proxy.transport import SipServer

__all__ = ["configure_logging", "run"]

log = structlog.get_logger("stirgate", component="server")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL, "exception": logging.ERROR}


def configure_logging(level: str, components: Mapping[str, str] | None = None) -> None:
    """JSON lines on stderr; `components` raise or lower the level of one part (the `component` key each
    module's logger binds), so a carrier can silence the per-call lines and keep the rest. The standard
    library's loggers (aiohttp, asyncio, the policy chain's) write the same lines (`proxy.logbridge`)."""
    levels = {name: _LEVELS[lvl] for name, lvl in (components or {}).items()}
    floor = min([_LEVELS[level], *levels.values()])
    default = _LEVELS[level]
    global _call_lines
    _call_lines = levels.get("call", default) <= logging.INFO

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
    logbridge.install(floor)


#: Whether the per-call lines (component "call", level info) are wanted: set by `configure_logging`.
_call_lines = True
#: The keys structlog would add to a per-call line.
_CALL_LINE = {"event": "call", "component": "call", "level": "info"}


def tune_gc() -> None:
    """Calls and transactions are freed by reference counting (their links are broken when they end), so the
    cyclic GC only costs time: every young collection walks the transactions that must linger for their
    RFC 3261 timers (measured: 7 % of the engine's CPU per call), and older collections stall the loop for a
    large fraction of a second under load. So start-up objects are frozen out of it and automatic collection is
    off; `_full_gc` collects whatever cycles do form (aiohttp's answers to unknown or malformed API requests; a
    failed fetch's exception chain is cut where it is caught), from every `gc_full_interval` to every
    `gc_full_max_interval` as its passes find nothing."""
    gc.collect()
    gc.freeze()
    gc.disable()


async def _flush_logs(interval: float = 0.25) -> None:
    """Per-call log lines are batched (see proxy.logsink): written out at least this often."""
    while True:
        await asyncio.sleep(interval)
        sink.flush()


#: A full pass that finds at most this many unreachable objects counts as clean (a few failed requests' worth).
GC_CLEAN_PASS: Final = 1000


def next_gc_wait(wait: float, found: int, base: float, cap: float) -> float:
    """The wait before the next full GC pass, after one that waited `wait` and found `found` objects: back to
    `base` when it found garbage, else doubled, up to `cap` (never below `base`)."""
    if found > GC_CLEAN_PASS:
        return base
    return min(max(cap, base), wait * 2.0)


async def _full_gc(base: float, cap: float, metrics: Metrics) -> None:
    wait = base
    while wait > 0:
        await asyncio.sleep(wait)
        t = time.perf_counter()
        found = gc.collect()
        seconds = time.perf_counter() - t
        metrics.observe_gc_pass(seconds, found)
        wait = next_gc_wait(wait, found, base, cap)
        log.info("gc_full", unreachable=found, ms=round(seconds * 1000, 1), next_s=wait)


def _call_logger() -> Callable[[Call], None]:
    """One JSON line per call, written when it ends: the decision and its identifiers (not one per message).

    The line structlog would render (same keys, level and timestamp), built and queued here directly: through
    structlog's processors it cost ~15 us per call, a tenth of a relayed call's CPU in memory."""
    if not _call_lines:
        return lambda call: None
    add = sink.add

    def log_call(call: Call) -> None:
        inbound = call.inbound
        signed = call.signed
        decisions = [d for d in call.decisions if d[2] != "continue" or d[3]]
        add(render_line({
            "call_id": call.a.call_id,
            "b_call_id": call.b.call_id if call.b is not None else None,
            "trunk": call.ingress.name,
            "egress": call.egress.trunk.name if call.egress is not None else None,
            "status": call.final_status,
            "end": call.end_reason,
            "verstat": inbound.result.verstat if inbound is not None else None,
            "attest": (inbound.result.attest if inbound is not None
                       else signed.attest if isinstance(signed, SignedCall) else None),
            "duration": round(call.ended_at - call.answered_at, 3)
            if call.answered_at is not None and call.ended_at is not None else 0,
            # what the policies did, and why (dry-run ones too): only the entries that acted or explained
            "policies": decisions or None,
            **_CALL_LINE,
            "timestamp": utc_timestamp(time.time()),
        }))

    return log_call


def _redirect_logger() -> Callable[[Redirected], None]:
    """One JSON line per INVITE answered in redirect mode, like the inline call line."""
    if not _call_lines:
        return lambda r: None
    add = sink.add

    def log_redirect(r: Redirected) -> None:
        inbound = r.inbound
        add(render_line({
            "call_id": r.call_id,
            "b_call_id": None,
            "trunk": r.ingress.name,
            "egress": r.egress,
            "status": r.status,
            "end": r.end_reason,
            "verstat": inbound.result.verstat if inbound is not None else None,
            "attest": (inbound.result.attest if inbound is not None
                       else r.signed.attest if r.signed is not None else None),
            "duration": 0,
            **_CALL_LINE,
            "timestamp": utc_timestamp(time.time()),
        }))

    return log_redirect


#: Seconds between the per-trunk load rows (INVITEs offered, admitted, refused by reason) of the records.
TRUNK_LOAD_INTERVAL = 10.0


async def _record_trunk_load(engine: Engine, writer: WriterBase, meter: TrunkLoadMeter) -> None:
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


async def refresh_trust_list(engine: Engine) -> None:
    """Download the STI-PA trust list once; a good new list replaces the anchors, a bad one is reported and the
    previous list stays (proxy.stir.trust_list)."""
    auth = engine.auth
    fetcher = auth.trust_list
    if fetcher is None:
        return
    result = await fetcher.refresh()
    if result.anchors is not None:
        auth.apply_trust_list(result.anchors)
        log.info("trust_list_updated", url=fetcher.url, anchors=len(result.anchors))
    elif result.error is not None:
        log.warning("trust_list_refresh_failed", url=fetcher.url, error=result.error, kept=len(fetcher.anchors))


async def _refresh_trust_list(engine: Engine) -> None:
    """At start, then every `stir.trust_list_refresh` seconds (read each time: a reload may change it)."""
    while True:
        try:
            await refresh_trust_list(engine)
        except Exception:  # never let a refresh bug stop the loop: the old list keeps working
            log.exception("trust_list_refresh_error")
        await asyncio.sleep(engine.config.stir.trust_list_refresh)


async def load_policy_set(config: Config, engine: Engine) -> PolicySet | None:
    """The config's policy file, validated and with its data loaded (lists are read in threads)."""
    if config.policies is None:
        return None
    pset = load_policies(config.policies, trunks=[t.name for t in config.trunks], tn_policy=engine.auth.tn_policy,
                         counters=engine.policy_counters)
    await pset.setup()
    return pset


#: Config sections a reload cannot apply (their stores, listeners, connections and loggers are made at start) ...
RESTART_ONLY: Final = ("state", "records", "api", "hep", "logging")
#: ... but for these `state:` settings, which are read call by call and so are applied.
STATE_LIVE: Final = ("timeout_ms", "on_error")


def kept_running(config: Config, running: Config) -> tuple[Config, list[str]]:
    """`config` with the RESTART_ONLY sections as they run (`state`'s STATE_LIVE settings taken from `config`),
    and the names of those whose file version differs from what runs."""
    state = msgspec.structs.replace(running.state, **{f: getattr(config.state, f) for f in STATE_LIVE})
    kept: dict[str, Any] = {name: getattr(running, name) for name in RESTART_ONLY} | {"state": state}
    changed = [name for name in RESTART_ONLY if getattr(config, name) != kept[name]]
    return dataclasses.replace(config, **kept), changed


async def reload(engine: Engine, worker: int, notifier: Notifier | None = None, sti: StiApi | None = None) -> None:
    """SIGHUP: re-read the config and policy files; on any error keep running on the old ones.

    Calls in progress keep the routes and policy chain they started with; new calls get the new ones. Under
    systemd (one worker) the reload is bracketed by RELOADING=1 and READY=1, so `systemctl reload` shows it.
    A changed section a reload cannot apply (`RESTART_ONLY`) is named in a `settings_need_restart` warning and
    the running one is kept (`state`'s per-call settings, STATE_LIVE, are applied), so the engine's config says
    what runs, and the next reload warns again.
    """
    path = engine.config.path
    if notifier is not None:
        notifier.reloading()
    try:
        config = load_config(path)
        if sti is not None and (config.sti_api.listen, config.sti_api.tls) != (sti.settings.listen,
                                                                               sti.settings.tls):
            raise ValueError("sti_api listener changed: restart stirgate to apply it")
        policies = await load_policy_set(config, engine)
        config, changed = kept_running(config, engine.config)
        if changed:
            log.warning("settings_need_restart", worker=worker, sections=changed)
        engine.reconfigure(config, policies)
        if sti is not None:
            sti.reconfigure(config.sti_api)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("reload_failed", worker=worker, error=str(exc))
        if notifier is not None:
            notifier.ready(f"reload failed, running the previous configuration: {exc}")
        return
    log.info("reloaded", worker=worker, config=path, policies=config.policies)
    try:
        await refresh_trust_list(engine)  # SIGHUP also refreshes the STI-PA list
    except Exception as exc:
        log.warning("trust_list_refresh_failed", worker=worker, error=str(exc))
    if notifier is not None:
        notifier.ready("reloaded; carrying calls")


async def _serve(config: Config, worker: int, workers: int, on_ready: Callable[[str], object],
                 notifier: Notifier | None, board: ShareBoard | None = None) -> int:
    """One worker's life. `on_ready(status)` once its sockets are bound and its policies loaded; `notifier`
    (the single process under systemd, else None) hears of the drain and of reloads; `board`: where the workers
    of this node share their trunks' limits (several workers, `state: memory`)."""
    loop = asyncio.get_running_loop()
    inline = [x for x in config.listen if x.mode != "redirect"]
    udp_listens = [(x.transport, x.host, x.port) for x in inline]
    redirect_listens = [(x.transport, x.host, x.port) for x in config.listen if x.mode == "redirect"]
    first_udp = next((x for x in inline if x.transport == "udp"), inline[0])
    private: tuple[str, int] | None = None
    local = {"udp": (first_udp.host, first_udp.port)}
    for stream in ("tcp", "tls"):  # Via and Contact name the first listen address of each transport
        first = next((x for x in inline if x.transport == stream), None)
        if first is not None:
            local[stream] = (first.host, first.port)
    if workers > 1:
        private = (first_udp.host, config.sip.worker_port_base + worker)
        local["udp"] = private
    engine = Engine(config, local)
    engine.call_end_hooks.append(_call_logger())
    server = SipServer(engine, loop, config.sip.max_tcp_message)
    if config.state.backend == "redis":
        server.state = RedisState(config.state, lambda call_id, results: engine.state_ready(call_id, results,
                                                                                           loop.time()),
                                  server.flush)
        engine.state = server.state
    metrics = Metrics()
    metrics.trunk_gates = lambda: engine.admission.gates()
    server.metrics = metrics
    writer = make_writer(config.records, worker=worker) if config.records.enabled else None
    if writer is not None:
        writer.start()
    engine.call_end_hooks.append(call_end_hook(writer, [metrics.observe_call], engine.auth.tn_policy))
    engine.redirector.hooks.append(_redirect_logger())
    engine.redirector.hooks.append(redirect_end_hook(writer, [metrics.observe_call], engine.auth.tn_policy,
                                                     lambda: engine.wall_offset))
    try:
        engine.policies = await load_policy_set(config, engine)
    except ConfigError as exc:
        log.error("policies_invalid", error=str(exc))
        if writer is not None:
            writer.flush_and_close()
        return 2
    try:
        await server.start(udp_listens, reuse_port=workers > 1, private_udp=private,
                           redirect_listens=redirect_listens)
    except OSError as exc:
        log.error("bind_failed", listen=[f"{t}:{h}:{p}" for t, h, p in udp_listens + redirect_listens],
                  error=str(exc))
        server.close()
        if writer is not None:
            writer.flush_and_close()
        return 2
    stop = asyncio.Event()
    drained = asyncio.Event()

    def on_term() -> None:
        if engine.draining:
            begin_drain()  # a second SIGTERM: no more probe delay
            stop.set()
            return
        # Probes answered 503 from now on; with sip.drain_probe_delay, INVITEs are still taken that long so
        # that a load balancer takes this node out of rotation before it refuses any call.
        engine.draining = True
        delay = config.sip.drain_probe_delay
        if notifier is not None:
            notifier.stopping(f"draining {engine.active_calls()} calls for up to {delay + config.sip.drain_grace:g} s")
        if delay > 0:
            log.info("drain_probes", worker=worker, active_calls=engine.active_calls(), refuse_in=delay)
            loop.call_later(delay, begin_drain)
        else:
            begin_drain()

    def begin_drain() -> None:
        if not engine.accepting:
            return
        log.info("draining", worker=worker, active_calls=engine.active_calls())
        engine.accepting = False
        server.on_idle = check_drained  # from now on, after every message and timer: are we done?
        stop.set()

    def check_drained() -> None:
        if not engine.accepting and not engine.calls and not engine.redirector.pending:
            drained.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    sti = StiApi(config.sti_api, engine, metrics, writer) if config.sti_api.enabled else None
    reloading: list[asyncio.Task[None]] = []
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: reloading.append(loop.create_task(reload(engine, worker, notifier, sti))))
    api = None
    if config.api.enabled:
        try:
            api = await start_api(config.api, lambda: engine_snapshot(engine),
                                  config.records if writer is not None else None, metrics=metrics,
                                  writer=writer, country_code=config.stir.country_code,
                                  port=config.api.host_port[1] + worker if workers > 1 else None,
                                  feedback=lambda rec, label: apply_feedback(engine, rec, label, server.flush),
                                  readiness=engine.not_ready,
                                  extra_routes=sti.add_routes if sti is not None and not config.sti_api.listen
                                  else None)
        except OSError as exc:
            # Calls matter more than metrics: carry them without the API rather than not at all.
            log.error("api_unavailable", listen=config.api.listen, error=str(exc))
    sti_runner = None
    if sti is not None and config.sti_api.listen:
        try:
            sti_runner = await start_sti_api(sti, reuse_port=workers > 1)
        except (OSError, ValueError) as exc:
            log.error("sti_api_unavailable", listen=config.sti_api.listen, error=str(exc))
    tune_gc()
    background = [
        loop.create_task(_full_gc(config.sip.gc_full_interval, config.sip.gc_full_max_interval, metrics)),
        loop.create_task(_flush_logs()),
        loop.create_task(_refresh_crls(engine, config.stir.crl_refresh if config.stir.crl_dir else 0)),
        loop.create_task(_refresh_trust_list(engine)),
    ]
    shares = limit_shares(config.state, engine.instance_id, worker, board, lambda: engine.admission.gates())
    if shares is not None:
        background.append(loop.create_task(shares.run()))
    meter = TrunkLoadMeter(time.time())
    if writer is not None:
        background.append(loop.create_task(_record_trunk_load(engine, writer, meter)))
    listening = [f"{t}:{h}:{p}" for t, h, p in udp_listens]
    log.info("listening", worker=worker, instance=engine.instance_id,
             hot_path="compiled" if compiled.is_compiled() else "python",
             version=compiled.installed_version(), listen=listening,
             redirect=[f"{t}:{h}:{p}" for t, h, p in redirect_listens],
             sti_api=(config.sti_api.listen or config.api.listen) if sti is not None else None,
             trunks=len(config.trunks))
    on_ready(f"listening on {', '.join(listening)}")
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
    if server.state is not None:
        await server.state.close()
    if shares is not None:
        await shares.close()
    if sti_runner is not None:
        await sti_runner.cleanup()
    if writer is not None:
        writer.put_load(meter.rows(engine.admission.gates(), time.time()))
        unwritten = writer.flush_and_close()
        _log_records_closed(writer, worker, unwritten)
    log.info("stopped", worker=worker, **engine.stats)  # written at once, after the batched call lines
    return 0


def _log_records_closed(writer: WriterBase, worker: int, unwritten: int) -> None:
    extra = {}
    if writer.has_spill:
        extra = {"spilled": writer.spilled, "replayed": writer.replayed, "spill_dropped": writer.spill_dropped,
                 "spill_bytes": writer.spill_bytes}
    log.info("records_closed", worker=worker, backend=writer.backend, written=writer.written,
             dropped=writer.dropped, lost=writer.lost + unwritten, write_errors=writer.write_errors, **extra)


def _run_worker(config: Config, worker: int, workers: int, on_ready: Callable[[str], object],
                notifier: Notifier | None, board: ShareBoard | None = None) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        log.warning("uvloop_missing")
    return asyncio.run(_serve(config, worker, workers, on_ready, notifier, board))


def _warn_if_python() -> None:
    """A pure install runs, slower: say so once at start (the `listening` line says which one runs, too)."""
    if not compiled.is_compiled():
        log.warning("hot_path_not_compiled", hot_path=compiled.describe())


def _wait_workers_ready(ready_r: int, workers: int) -> bool:
    """Block until every worker wrote its byte to the pipe (True) or every writer closed it first (False)."""
    got = 0
    while got < workers:
        chunk = os.read(ready_r, workers - got)
        if not chunk:
            return False
        got += len(chunk)
    return True


def _die_with_parent() -> None:
    """A worker whose parent is killed outright (SIGKILL, OOM) stops too: else it would keep its ports and serve
    on alone, out of the supervisor's sight. Linux prctl(PR_SET_PDEATHSIG); elsewhere nothing is done."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a normal drain, like the parent's own SIGTERM
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run(config: Config, workers: int = 1) -> int:
    configure_logging(config.logging.level, {str(k): v for k, v in config.logging.components.items()})
    _warn_if_python()
    notifier = Notifier()  # systemd's NOTIFY_SOCKET, if any: only this process may use it
    if workers <= 1:
        return _run_worker(config, 0, 1, notifier.ready, notifier)
    # Several workers: each tells the parent it is listening through a pipe; once all have, the parent tells
    # systemd. Workers never notify themselves (systemd would ignore them and log it).
    ready_r, ready_w = os.pipe()
    board = board_for(config.state, workers)  # mapped before the forks, so that every worker shares it
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent()
                os.close(ready_r)

                def worker_ready(_status: str, fd: int = ready_w) -> None:
                    os.write(fd, b"r")
                    os.close(fd)

                code = _run_worker(config, i, workers, worker_ready, None, board)
            finally:
                os._exit(code)
        children.append(pid)
    os.close(ready_w)
    stopping: list[bool] = []

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM and not stopping:
            stopping.append(True)
            notifier.stopping(f"draining {workers} workers for up to {config.sip.drain_grace:g} s")
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        if _wait_workers_ready(ready_r, workers) and not stopping:
            notifier.ready(f"{workers} workers listening")
    finally:
        os.close(ready_r)
    rc = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        rc = rc or os.waitstatus_to_exitcode(status)
    return rc
