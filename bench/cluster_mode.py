"""`python -m bench --mode cluster`: one trunk peer through Kamailio's dispatcher to two stirgate workers (issue 12).

One SIPp UAC (one source address, the way one trunk peer sends) and one SIPp UAS; three systems swept in the
same run, each for its highest passing rate (< 0.1 % failed, >= 97 % of the rate, INVITE->200 p99 <= 200 ms):

- `stirgate`: the peer straight to `stirgate --workers 2`. SO_REUSEPORT hashes the peer's address pair to one
  worker: the other one idles. This is the limit the cluster front lifts.
- `front`: Kamailio alone with examples/cluster/kamailio.cfg (hash over Call-ID, record-route, ingress socket),
  its dispatcher set being the UAS itself: what the front costs and carries on its own.
- `cluster`: the peer -> the front -> `stirgate --workers 2`, each worker a destination of its own (127.0.0.1:5100
  and :5101, probed every 2 s): the hash spreads the one peer over both workers.

CPU per call is the whole chain's (Kamailio + stirgate) and, apart, Kamailio's, stirgate's (all its processes)
and each worker's over the calls that worker carried (its `stopped` counters). The UAC follows Record-Route
(bench/scenarios/uac_rr.xml), as any UA behind a record-routing proxy does.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tests.integration.cluster import CARRIERS_IP, CUSTOMERS_IP, FRONT_IP, Front
from tests.integration.kamailio import kamailio_binary

from .modes import MODES, Mode
from .procs import Addr, _read_stat, descendants, tree_cpu, udp_bound
from .sipp import SCENARIOS
from .step import StepResult
from .suts import SUT, Stirgate, sip_probe

MODE = dataclasses.replace(MODES["relay"], name="cluster", uac_scenario=SCENARIOS / "uac_rr.xml")
WORKERS = 2


class StepRunner(Protocol):
    steps: list[StepResult]

    def run(self, rate: float, confirm: int = 0) -> StepResult: ...

    def sweep(self) -> None: ...

    def best(self) -> StepResult | None: ...


def front_addrs(off: int) -> tuple[Addr, Addr, Addr]:
    """(public, customers, carriers) sockets of the front, moved by --port-offset."""
    return Addr(FRONT_IP, 5060 + off), Addr(CUSTOMERS_IP, 5060 + off), Addr(CARRIERS_IP, 5060 + off)


class StirgateBehindFront(Stirgate):
    """The bench stirgate whose customer trunk also owns the front's customers socket; ready when every worker
    answers a probe from there (the dispatcher's own probe)."""

    def __init__(self, *a: Any, front_source: str, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.front_source = front_source

    def config_text(self) -> str:
        hosts = ", ".join(sorted({a.host for a in self.uacs}))
        return super().config_text().replace(f"sources: [{hosts}]", f"sources: [{hosts}, {self.front_source}]", 1)

    def worker_addrs(self) -> list[Addr]:
        return [Addr(self.listen.host, self.worker_port_base + i) for i in range(self.workers)]

    def ready(self) -> bool:
        return all(sip_probe(Addr(self.front_source, 0), w) == 200 for w in self.worker_addrs())

    def worker_cpu(self) -> dict[str, float]:
        """CPU seconds of each worker process (the main process's children, in fork order) so far."""
        out: dict[str, float] = {}
        kids = sorted(p for p in descendants(self.pid) if p != self.pid)
        for i, pid in enumerate(kids[: self.workers]):
            st = _read_stat(pid)
            if st is not None:
                out[f"stirgate worker {i}"] = st[1]
        return out


class FrontSUT(SUT):
    """Kamailio with examples/cluster/kamailio.cfg; in front of `inner` (a stirgate), or alone in front of the
    UAS (`inner` None: the dispatcher set is the UAS, not probed)."""

    def __init__(self, listen: Addr, uas: Addr, uacs: list[Addr], workdir: Path, *, inner: StirgateBehindFront | None,
                 customers: Addr, carriers: Addr) -> None:  # fmt: skip
        super().__init__(listen, uas, uacs, workdir)
        self.inner = inner
        self.customers, self.carriers = customers, carriers
        self.front: Front | None = None
        self._front_known: set[int] | None = None
        if inner is None:
            self.name, self.label = "front", "Kamailio front alone (dispatcher -> UAS)"
        else:
            self.name = "cluster"
            self.label = f"Kamailio front -> stirgate --workers {inner.workers} (every worker a destination)"

    def available(self) -> str | None:
        if kamailio_binary() is None:
            return "kamailio not installed (make sysdeps-bench)"
        return self.inner.available() if self.inner is not None else None

    def dests(self) -> list[tuple[str, int]]:
        if self.inner is None:
            return [(self.uas.host, self.uas.port)]
        return [(w.host, w.port) for w in self.inner.worker_addrs()]

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self.step_uacs, self.notes, self._cpu_known, self._front_known = None, [], None, None
        if self.inner is not None:
            self.inner.start(stepdir, ready_timeout)
            self.log_path = self.inner.log_path
        front = Front(stepdir / "front", self.dests(), ping_interval=2 if self.inner is not None else 0,
                      failover_ms=1000, children=2, shm_mb=1024, debug=1,
                      public=(self.listen.host, self.listen.port),
                      customers=(self.customers.host, self.customers.port),
                      carriers=(self.carriers.host, self.carriers.port),
                      customer_peers=f"{self.uacs[0].host}/32", carrier_peers=f"{self.uas.host}/32",
                      probe=self.inner is not None)  # fmt: skip
        self.front = front
        try:
            front.start(ready_timeout)
            if self.inner is not None:
                front.wait_state(self.dests(), active=True, seconds=ready_timeout)
        except Exception:
            self.stop()
            raise
        self.proc = front.proc
        if self.inner is None:
            self.log_path = front.log_path

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        if self.inner is not None:
            self.inner.stop()

    @property
    def pid(self) -> int:
        assert self.front is not None and self.front.proc is not None
        return self.front.proc.pid

    def cpu_sample(self) -> tuple[float, dict[str, float]]:
        kam, self._front_known = tree_cpu(self.pid, self._front_known)
        parts = {"kamailio": kam}
        if self.inner is not None:
            sg, _ = self.inner.cpu_sample()
            parts["stirgate"] = sg
            parts.update(self.inner.worker_cpu())
        return sum(v for k, v in parts.items() if k in ("kamailio", "stirgate")), parts

    def extra_addrs(self) -> list[Addr]:
        out = [self.customers, self.carriers]
        if self.inner is not None:
            out += [self.inner.listen, *self.inner.worker_addrs()]
        return out

    def engine_stats(self) -> list[dict[str, object]]:
        return self.inner.engine_stats() if self.inner is not None else []

    def sockets_on_listen(self) -> int:
        return udp_bound(self.listen.host, self.listen.port)


def per_call(step: StepResult) -> dict[str, float]:
    """µs of CPU per successful call: the chain's parts; each worker over the calls it answered."""
    out: dict[str, float] = {}
    if not step.successful:
        return out
    for part, secs in step.sut_cpu_parts_s.items():
        if not part.startswith("stirgate worker"):
            out[part] = round(1e6 * secs / step.successful, 1)
    answered = {int(str(w.get("worker", -1))): int(str(w.get("answered", 0))) for w in step.sut_stats}
    for part, secs in step.sut_cpu_parts_s.items():
        if part.startswith("stirgate worker"):
            i = int(part.rsplit(" ", 1)[1])
            calls = answered.get(i, 0)
            out[f"{part} share"] = round(100.0 * calls / step.successful, 1)
            if calls:
                out[part] = round(1e6 * secs / calls, 1)
    return out


def run_cluster(args: argparse.Namespace, rundir: Path, uacs: list[Addr], uas: Addr,
                make_runner: Callable[[SUT, Mode], StepRunner]) -> tuple[dict[str, Any], dict[str, StepRunner]]:
    off = args.port_offset
    uac = uacs[:1]  # one trunk peer: one source address
    public, customers, carriers = front_addrs(off)
    listen = Addr.parse(args.stirgate_listen).offset(off)
    common = dict(workers=WORKERS, log_level=args.log_level, worker_port_base=5100 + off, records=args.records)
    direct = Stirgate(listen, uas, uac, rundir, **common)  # type: ignore[arg-type]
    direct.label = f"stirgate --workers {WORKERS}, peer straight to it (one worker used)"
    inner = StirgateBehindFront(listen, uas, uac, rundir, front_source=customers.host, **common)
    chain = FrontSUT(public, uas, uac, rundir, inner=inner, customers=customers, carriers=carriers)
    alone = FrontSUT(public, uas, uac, rundir, inner=None, customers=customers, carriers=carriers)
    result: dict[str, Any] = {}
    runners: dict[str, StepRunner] = {}
    wanted = {x.strip() for x in args.sut.split(",")} if args.sut_given else {"stirgate", "front", "cluster"}
    for sut in (direct, alone, chain):
        if sut.name not in wanted:
            continue
        why = sut.available()
        if why:
            print(f"{sut.name}: skipped: {why}", flush=True)
            result.setdefault("skipped", {})[sut.name] = why
            continue
        print(f"{sut.label} [mode cluster]:", flush=True)
        runners[sut.name] = make_runner(sut, MODE)
        runners[sut.name].sweep()
    summary: dict[str, Any] = {}
    for name, r in runners.items():
        best = r.best()
        summary[name] = {
            "max_passing_cps": best.rate if best else None,
            "cpu_us_per_call_at_max_rate": best.cpu_us_per_call if best else None,
            "parts_us_per_call_at_max_rate": per_call(best) if best else {},
            "p99_ms_at_max_rate": best.p99_ms if best else None,
        }
    # Like for like: every system at the highest rate all of them passed (the chain's overhead per call).
    bests = [r.best() for r in runners.values()]
    if bests and all(b is not None for b in bests):
        rate = min(b.rate for b in bests if b is not None)
        for name, r in runners.items():
            at = [s for s in r.steps if s.passed and s.rate == rate] or [r.run(rate)]
            clean = [s for s in at if s.clean and s.cpu_us_per_call]
            summary[name]["cpu_us_per_call_at_common_rate"] = (
                statistics.median(s.cpu_us_per_call for s in clean if s.cpu_us_per_call) if clean else None)
            summary[name]["parts_us_per_call_at_common_rate"] = per_call(clean[-1]) if clean else {}
        result["common_rate_cps"] = rate
    result["summary"] = summary
    print_cluster(result, args)
    return result, runners


def show_parts(parts: dict[str, float]) -> str:
    bits = [f"{k} {parts[k]:.0f}" for k in ("kamailio", "stirgate") if k in parts]
    workers = [f"{parts[f'stirgate worker {i}']:.0f} ({parts.get(f'stirgate worker {i} share', 0):.0f} %)"
               for i in range(WORKERS) if f"stirgate worker {i}" in parts]
    if workers:
        bits.append("per worker " + ", ".join(workers))
    return "; ".join(bits) or "-"


def print_cluster(result: dict[str, Any], args: argparse.Namespace) -> None:
    def fmt(x: float | None, unit: str) -> str:
        return "n/a" if x is None else f"{x:,.0f}{unit}"

    s = result["summary"]
    rate = result.get("common_rate_cps")
    print(f"\nResults, mode cluster ({time.strftime('%Y-%m-%d %H:%M')}, {args.duration:g} s steps, one UAC = one "
          f"trunk peer, stirgate --workers {WORKERS}):")
    print(f"| system | highest passing rate | CPU/call there (whole chain) | CPU/call at {fmt(rate, ' cps')} | parts "
          f"at that rate (µs/call; per worker: µs per call it carried (its share of the calls)) |")
    print("|---|---|---|---|---|")
    for name, e in s.items():
        shown = show_parts(e.get("parts_us_per_call_at_common_rate") or {})
        print(f"| {name} | {fmt(e['max_passing_cps'], ' cps')} | {fmt(e['cpu_us_per_call_at_max_rate'], ' µs')} | "
              f"{fmt(e.get('cpu_us_per_call_at_common_rate'), ' µs')} | {shown} |")
    for name, why in result.get("skipped", {}).items():
        print(f"| {name} | skipped: {why} | | | |")
