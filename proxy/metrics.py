"""Prometheus metrics, counted as plain ints on the SIP thread and turned into metric families at scrape time.

Why not prometheus-client's Counter/Histogram objects on the hot path: `.labels(...).inc()` takes a lock and
looks the child up each time (~1-3 us); a dict increment keyed by a tuple costs a tenth of that. The custom
collector below reads these dicts (and the engine's own counters and gauges) only when /metrics is scraped,
so what the SIP thread pays per call is one `observe_call` (~1 us) and, per forwarded INVITE, one bisect.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from proxy.admission import Gate
    from proxy.engine import Engine
    from proxy.records import CallRecord, WriterBase

__all__ = [
    "FETCH_BUCKETS",
    "FORWARD_BUCKETS",
    "Histo",
    "Metrics",
    "call_outcome",
    "engine_snapshot",
]

#: INVITE in -> B-leg INVITE out. The engine alone takes ~50-100 us; x5u fetches add milliseconds to seconds.
FORWARD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0)
FETCH_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: A full GC pass stalls the loop ~20 ms per 1,000 established dialogs (docs/RELIABILITY.md).
GC_BUCKETS: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

#: Engine counters exported as stirgate_sip_events_total{event=...}; the gauges are named on their own.
_GAUGES: Final = frozenset({"active_calls", "transactions", "x5u_http_requests", "state_waiting", "receive_queue",
                            "udp_receive_drops", "shed_memory"})


class Histo:
    """A fixed-bucket histogram with one writer: a bisect and two adds per observation, no lock."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' "le" (value <= bound).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            buckets.append((_fmt(bound), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


def _fmt(bound: float) -> str:
    return repr(float(bound))


def call_outcome(rec: CallRecord) -> str:
    """answered | cancelled | no-answer | rejected | failed | redirected | api | other: a small, stable label
    set (redirected: a 302 in redirect mode; api: an ATIS-1000082 request that was not refused)."""
    if rec.answered_at is not None:
        return "answered"
    reason = rec.end_reason
    if reason == "redirected":
        return "redirected"
    if reason.startswith("api"):
        return "api"
    if reason in ("cancelled", "bye-early"):
        return "cancelled"
    if reason == "no-answer":
        return "no-answer"
    if reason.startswith("rejected"):
        return "rejected"
    if reason.startswith("failed"):
        return "failed"
    return "other"


def engine_snapshot(engine: Engine) -> dict[str, float]:
    """What the collector reads from one engine at scrape time: its counters plus the live gauges."""
    out: dict[str, float] = dict(engine.stats)
    out["active_calls"] = engine.active_calls()
    out["transactions"] = len(engine.txns)
    out["receive_queue"] = engine.receive_queue
    out["udp_receive_drops"] = engine.receive_drops
    out["shed_memory"] = engine.admission.memory_size()
    fetcher = engine.auth.fetcher
    if fetcher is not None:
        out["x5u_http_requests"] = fetcher.requests
    out.update(getattr(engine.state, "stats", {}))  # the Redis state store's batches, ops, failures
    out["state_waiting"] = engine.state_waiting
    return out


class Metrics:
    """Every stirgate metric. `observe_*` run on the SIP thread; `render` at scrape time (same thread)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        #: (ingress trunk, outcome, verstat, attest) -> calls
        self.calls: dict[tuple[str, str, str, str], int] = {}
        #: (policy, mode, action) -> decisions
        self.policy_hits: dict[tuple[str, str, str], int] = {}
        #: failed check name -> calls
        self.verification_failures: dict[str, int] = {}
        self.x5u_hits = 0
        self.x5u_misses = 0
        #: (operation, HTTP status) -> ATIS-1000082 API requests
        self.api_requests: dict[tuple[str, str], int] = {}
        self.forward_delay = Histo(FORWARD_BUCKETS)
        self.x5u_fetch = Histo(FETCH_BUCKETS)
        #: The periodic full GC passes (proxy.server): how long each held the loop, and what they found.
        self.gc_pass = Histo(GC_BUCKETS)
        self.gc_unreachable = 0
        self.engine_stats: Callable[[], Mapping[str, float]] | None = None
        #: The engine's per-trunk gates (proxy.admission): offered INVITEs, calls taken, INVITEs shed by reason.
        self.trunk_gates: Callable[[], Sequence[Gate]] | None = None
        self.writer: WriterBase | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)

    def bind(self, engine_stats: Callable[[], Mapping[str, float]] | None = None,
             writer: WriterBase | None = None) -> None:
        """Where the scrape-time gauges come from (the engine, the record writer)."""
        if engine_stats is not None:
            self.engine_stats = engine_stats
        if writer is not None:
            self.writer = writer

    # --- SIP thread ---------------------------------------------------------------------------------------------
    def observe_call(self, rec: CallRecord) -> None:
        """Count one ended call (a call-end observer for `records.call_end_hook`)."""
        key = (rec.ingress, call_outcome(rec), rec.verstat or "none", rec.attest or "none")
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        if rec.policy_decisions:
            hits = self.policy_hits
            for d in rec.policy_decisions:
                hit = (d[0], d[1], d[2])
                hits[hit] = hits.get(hit, 0) + 1
        if rec.failures:
            fails = self.verification_failures
            for check in rec.failures:
                fails[check] = fails.get(check, 0) + 1
        if rec.verification is not None and rec.verification != "missing":
            if rec.x5u_fetched:
                self.x5u_misses += 1
            else:
                self.x5u_hits += 1

    def observe_api(self, op: str, status: int) -> None:
        """One ATIS-1000082 API request answered (`op`: signing | verification)."""
        key = (op, str(status))
        self.api_requests[key] = self.api_requests.get(key, 0) + 1

    def observe_forward_delay(self, seconds: float) -> None:
        """The time from an INVITE's arrival to its B-leg INVITE leaving (transport measures it)."""
        self.forward_delay.observe(seconds)

    def observe_x5u_fetch(self, seconds: float) -> None:
        """One x5u certificate fetch (the transport's `_fetch_certs`)."""
        self.x5u_fetch.observe(seconds)

    def observe_gc_pass(self, seconds: float, found: int) -> None:
        """One full GC pass: `seconds` the loop waited for it, `found` unreachable objects it freed."""
        self.gc_pass.observe(seconds)
        self.gc_unreachable += found

    # --- scrape ---------------------------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        calls = CounterMetricFamily("stirgate_calls", "Ended calls by ingress trunk, outcome, verstat and attest",
                                    labels=["trunk", "outcome", "verstat", "attest"])
        for key, n in list(m.calls.items()):
            calls.add_metric(list(key), n)
        yield calls
        hits = CounterMetricFamily("stirgate_policy_hits", "Policy decisions by policy, mode and action",
                                   labels=["policy", "mode", "action"])
        for pkey, n in list(m.policy_hits.items()):
            hits.add_metric(list(pkey), n)
        yield hits
        fails = CounterMetricFamily("stirgate_verification_failures",
                                    "Verified calls with this failed check (one call may fail several)",
                                    labels=["reason"])
        for reason, n in list(m.verification_failures.items()):
            fails.add_metric([reason], n)
        yield fails
        api = CounterMetricFamily("stirgate_sti_api_requests", "ATIS-1000082 API requests by operation and status",
                                  labels=["op", "status"])
        for akey, n in list(m.api_requests.items()):
            api.add_metric(list(akey), n)
        yield api
        yield CounterMetricFamily("stirgate_x5u_cache_hits", "Verified calls whose certificates were cached",
                                  value=m.x5u_hits)
        yield CounterMetricFamily("stirgate_x5u_cache_misses", "Verified calls that waited for an x5u fetch",
                                  value=m.x5u_misses)
        yield m.x5u_fetch.family("stirgate_x5u_fetch_seconds", "x5u certificate fetch time")
        yield m.gc_pass.family("stirgate_gc_pass_seconds", "Full cyclic-GC passes: how long each held the event loop")
        yield CounterMetricFamily("stirgate_gc_unreachable", "Objects the full GC passes found unreachable "
                                  "(reference cycles: garbage only they free)", value=m.gc_unreachable)
        yield m.forward_delay.family("stirgate_invite_forward_delay_seconds",
                                     "Delay stirgate adds between an INVITE in and its B-leg INVITE out")
        if m.trunk_gates is not None:
            yield from _trunk_families(m.trunk_gates())
        stats = m.engine_stats() if m.engine_stats is not None else {}
        if stats:
            yield GaugeMetricFamily("stirgate_active_calls", "Calls in progress", value=stats.get("active_calls", 0))
            yield GaugeMetricFamily("stirgate_transactions", "Live SIP transactions",
                                    value=stats.get("transactions", 0))
            yield GaugeMetricFamily("stirgate_udp_receive_queue_ratio",
                                    "Share of the fullest UDP socket's receive buffer in use (last sample)",
                                    value=stats.get("receive_queue", 0.0))
            yield CounterMetricFamily("stirgate_udp_receive_drops",
                                      "Datagrams the kernel dropped on a full UDP receive queue",
                                      value=stats.get("udp_receive_drops", 0))
            yield GaugeMetricFamily("stirgate_shed_memory", "Refused INVITEs remembered for their retransmissions",
                                    value=stats.get("shed_memory", 0))
            if "x5u_http_requests" in stats:
                yield CounterMetricFamily("stirgate_x5u_http_requests", "x5u HTTP requests sent",
                                          value=stats["x5u_http_requests"])
            events = CounterMetricFamily("stirgate_sip_events", "Engine counters (requests, invites, ...)",
                                         labels=["event"])
            for name, value in stats.items():
                if name not in _GAUGES:
                    events.add_metric([name], value)
            yield events
        w = m.writer
        if w is not None:
            yield GaugeMetricFamily("stirgate_record_queue_depth", "Call records waiting for the writer",
                                    value=w.depth)
            yield CounterMetricFamily("stirgate_records_dropped", "Records dropped: queue full", value=w.dropped)
            yield CounterMetricFamily("stirgate_records_written", "Records committed", value=w.written)
            yield CounterMetricFamily("stirgate_record_write_errors", "Failed commits/opens of the records database",
                                      value=w.write_errors)
            yield CounterMetricFamily("stirgate_records_lost", "Records given up after failed writes", value=w.lost)
            yield CounterMetricFamily("stirgate_records_pruned", "Records deleted by retention", value=w.pruned)
            yield GaugeMetricFamily("stirgate_records_writer_up", "1 while the writer thread runs",
                                    value=1.0 if w.alive else 0.0)
            if w.has_spill:
                yield CounterMetricFamily("stirgate_records_spilled", "Records kept in the local spill file while "
                                          "the database was unreachable", value=w.spilled)
                yield CounterMetricFamily("stirgate_records_replayed", "Spilled records committed to the database "
                                          "since (they count in records_written too)", value=w.replayed)
                yield CounterMetricFamily("stirgate_records_spill_dropped", "Records given up: the database "
                                          "unreachable and the spill full or unwritable", value=w.spill_dropped)
                yield GaugeMetricFamily("stirgate_records_spill_bytes", "Spilled bytes not replayed yet",
                                        value=w.spill_bytes)
                if w.db_up is not None:
                    yield GaugeMetricFamily("stirgate_records_db_up", "1 when the last database operation worked, "
                                            "0 when it failed (records go to the spill)", value=1.0 if w.db_up else 0.0)


def _trunk_families(gates: Sequence[Gate]) -> Iterator[Metric]:
    offered = CounterMetricFamily("stirgate_trunk_invites", "INVITEs offered by each trunk (taken or not)",
                                  labels=["trunk"])
    admitted = CounterMetricFamily("stirgate_trunk_calls_admitted", "New calls taken from each trunk",
                                   labels=["trunk"])
    calls = GaugeMetricFamily("stirgate_trunk_calls", "Calls in progress per ingress trunk", labels=["trunk"])
    share = GaugeMetricFamily("stirgate_trunk_limit_share",
                              "The part of each limited trunk's contract this process holds (1 alone; with "
                              "state.trunk_limits: shared, its part of the trunk's offered INVITEs)",
                              labels=["trunk"])
    shed = CounterMetricFamily("stirgate_calls_shed",
                               "New INVITEs refused at the door (503 or dropped) by trunk and reason: max-cps, "
                               "max-calls (the trunk's limits), calls-in-setup, dialogs, transactions, "
                               "pending-fetches, loop-lag, receive-queue (overload), source-share, draining",
                               labels=["trunk", "reason"])
    for g in gates:
        offered.add_metric([g.name], g.offered)
        admitted.add_metric([g.name], g.admitted)
        calls.add_metric([g.name], g.calls)
        if g.limited:
            share.add_metric([g.name], g.share)
        for reason, n in list(g.shed.items()):
            shed.add_metric([g.name, reason], n)
    yield offered
    yield admitted
    yield calls
    yield share
    yield shed
