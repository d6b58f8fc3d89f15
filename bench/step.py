"""One step: a fresh SUT, a SIPp UAS, N SIPp UACs at a target rate; pass/fail and CPU per call."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .procs import Addr, system_busy, udp_bound
from .sipp import UAC, UAS, UACResult
from .suts import SUT

FAIL_MAX = 0.001     # failed calls < 0.1 %
RATE_MIN = 0.97      # >= 97 % of the target rate
P99_MAX_MS = 200.0   # INVITE->200 p99 <= 200 ms


@dataclass
class StepResult:
    sut: str
    rate: float
    duration: float
    target_calls: int
    created: int = 0
    successful: int = 0
    failed: int = 0
    fail_pct: float = 100.0
    achieved_rate: float = 0.0
    achieved_pct: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    slow_seconds: list[list[int]] = field(default_factory=list)  # [second, answers, max ms] with max >= 100 ms
    answered: int = 0                   # INVITEs answered 200 (SIPp's repartition count)
    slow_answers: int = 0               # of which took >= 200 ms
    sut_cpu_s: float = 0.0
    sut_cpu_parts_s: dict[str, float] = field(default_factory=dict)  # a SUT of several processes: each one's
    cpu_us_per_call: float | None = None
    sut_cpu_pct: float = 0.0            # of one core, over the measured window
    sipp_cpu_s: float = 0.0
    machine_busy_pct: float = 0.0       # of all cores, over the measured window
    others_cpu_pct: float = 0.0         # busy time neither the SUT nor SIPp used (other users), % of all cores
    window_s: float = 0.0
    uac_retransmissions: int = 0
    uac_timeouts: int = 0
    uac_unexpected: int = 0
    uac_counts: dict[str, int] = field(default_factory=dict)
    shed: int = 0                       # INVITEs answered 503 (flood mode: load shed), from SIPp's counts
    mode: str = "relay"
    uas: dict[str, Any] = field(default_factory=dict)
    sut_log_warnings: int = 0
    sut_log_sample: list[str] = field(default_factory=list)
    sut_stats: list[dict[str, Any]] = field(default_factory=list)  # stirgate's own counters, per worker
    listen_sockets: int = 0
    uac_addrs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: bool = False
    clean: bool = False                 # no failed calls and the rate reached (p99 aside): CPU/call usable
    reasons: list[str] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.0f}"
        cpu = "-" if self.cpu_us_per_call is None else f"{self.cpu_us_per_call:.0f}"
        verdict = "PASS" if self.passed else "fail"
        split = ""
        if len(self.sut_stats) > 1:
            split = "  per worker " + "/".join(str(w.get("invites", "?")) for w in self.sut_stats) + " INVITEs"
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        if self.error:
            why = f" (error: {self.error})"
        shed = f"  503 {self.shed}" if self.shed else ""
        return (f"{self.sut:<9} {self.mode:<6} {self.rate:>7.0f} cps  {verdict}"
                f"  ok {self.successful}/{self.target_calls}"
                f"  fail {self.fail_pct:.3f}%  rate {self.achieved_pct:.1f}%  p99 {p99} ms"
                f"  cpu {cpu} us/call  sut {self.sut_cpu_pct:.0f}%  others {self.others_cpu_pct:.0f}%"
                f"  retrans uac {self.uac_retransmissions} uas {self.uas.get('retransmissions_sent', 0)}"
                f"{shed}{split}{why}")


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, math.ceil(q * len(v)) - 1))
    return float(v[k])


def wait_free(addrs: list[Addr], wait: float) -> list[Addr]:
    """Wait (bounded) until nobody holds these UDP addresses; the ones still busy."""
    deadline = time.monotonic() + wait
    while True:
        busy = [a for a in addrs if udp_bound(a.host, a.port)]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(1.0)


def _log_warnings(path: Path | None, limit: int = 8) -> tuple[int, list[str]]:
    if path is None or not path.exists():
        return 0, []
    n, sample = 0, list[str]()
    with open(path, errors="replace") as f:
        for line in f:
            low = line.lower()
            if any(w in low for w in ('"warning"', '"error"', '"critical"', "traceback", "error:", " err ",
                                       "warning:", "exception")):
                n += 1
                if len(sample) < limit:
                    sample.append(line.strip()[:300])
    return n, sample


def run_step(sut: SUT, rate: float, duration: float, stepdir: Path, *, uac_addrs: list[Addr],
             uas_addr: Addr, drain: float, busy_wait: float, tail: float, keep_traces: bool = False,
             mode: str = "relay", scenario: Path | None = None,
             uac_args: Callable[[int, Path, int], list[str]] | None = None) -> StepResult:
    """One step. `uac_args(i, stepdir, calls)` (run before the SUT starts: e.g. signing the Identity values the
    UACs send, so that their iat is the step's start) gives extra SIPp arguments for UAC i."""
    stepdir.mkdir(parents=True, exist_ok=True)
    n = len(uac_addrs)
    per_uac_calls = max(1, round(rate * duration / n))
    res = StepResult(sut=sut.name, rate=rate, duration=duration, target_calls=per_uac_calls * n, mode=mode)

    busy = wait_free([sut.listen, *sut.extra_addrs(), uas_addr, *uac_addrs], busy_wait)
    if busy:
        res.error = f"address busy (someone else is using it): {', '.join(map(str, busy))}"
        return res

    uas = UAS(uas_addr, stepdir)
    uacs: list[UAC] = []
    try:
        extra = [uac_args(i, stepdir, per_uac_calls) if uac_args else [] for i in range(n)]
        sut.start(stepdir)
        res.listen_sockets = sut.sockets_on_listen()
        uas.start()
        time.sleep(0.3)
        cpu0, parts0 = sut.cpu_sample()
        busy0, total0 = system_busy()
        t0 = time.monotonic()
        time_limit = duration * 1.3 + tail
        if sut.step_uacs:
            uac_addrs = sut.step_uacs
        res.uac_addrs = [str(a) for a in uac_addrs]
        res.notes.extend(sut.notes)
        for i, a in enumerate(uac_addrs):
            u = UAC(i, a, sut.listen, rate / n, per_uac_calls, stepdir, time_limit, keep_traces,
                    scenario=scenario, extra_args=extra[i])
            u.start()
            uacs.append(u)
        results: list[UACResult] = [u.wait() for u in uacs]
        time.sleep(drain)
        cpu1, parts1 = sut.cpu_sample()
        busy1, total1 = system_busy()
        window = time.monotonic() - t0
        if sut.proc is not None and sut.proc.poll() is not None:
            raise RuntimeError(f"{sut.name} exited during the step (code {sut.proc.returncode})")
        if sut.sockets_on_listen() > res.listen_sockets:
            raise RuntimeError(f"another process bound {sut.listen} during the step: figures unusable")
    except Exception as e:  # a step that cannot run is reported, the sweep goes on
        res.error = str(e)
        return res
    finally:
        for u in uacs:
            if u.proc is not None and u.proc.returncode is None:
                u.proc.kill()
                u.proc.wait()
        uas.stop()
        sut.stop()

    res.window_s = round(window, 2)
    res.created = sum(r.created for r in results)
    res.successful = sum(r.successful for r in results)
    res.failed = max(0, res.created - res.successful)  # calls never created show in the rate instead
    res.fail_pct = 100.0 * res.failed / max(res.created, 1)
    res.achieved_rate = sum(r.answered_rate for r in results)
    res.achieved_pct = 100.0 * res.achieved_rate / rate
    rtts = [x for r in results for x in r.rtts_ms]
    res.p50_ms = percentile(rtts, 0.50)
    res.p99_ms = percentile(rtts, 0.99)
    res.max_ms = float(max(rtts)) if rtts else None
    # Seconds of the step (from each UAC's start) whose slowest answer took 100 ms or more: stalls show here.
    slow_secs: dict[int, list[int]] = {}
    for r in results:
        for sec, (cnt, mx) in r.by_second.items():
            if mx >= 100:
                cur = slow_secs.setdefault(sec, [0, 0])
                cur[0] += cnt
                cur[1] = max(cur[1], mx)
    res.slow_seconds = [[sec, c, m] for sec, (c, m) in sorted(slow_secs.items())]
    # The pass test uses SIPp's repartition, which counts every answered call (the RTT file may miss the
    # last few): p99 <= 200 ms <=> under 1 % of the answers took 200 ms or more.
    buckets: dict[tuple[float, float], int] = {}
    for r in results:
        for lo, hi, c in r.rt_buckets:
            buckets[(lo, hi)] = buckets.get((lo, hi), 0) + c
    answered = sum(buckets.values())
    slow = sum(c for (lo, _hi), c in buckets.items() if lo >= P99_MAX_MS)
    res.answered = answered
    res.slow_answers = slow
    res.sut_cpu_s = round(cpu1 - cpu0, 3)
    res.sut_cpu_parts_s = {k: round(v - parts0.get(k, 0.0), 3) for k, v in parts1.items()}
    if res.successful:
        res.cpu_us_per_call = round(1e6 * res.sut_cpu_s / res.successful, 1)
    res.sut_cpu_pct = round(100.0 * res.sut_cpu_s / window, 1)
    res.sipp_cpu_s = round(sum(r.cpu_s for r in results) + uas.cpu, 3)
    machine_busy = busy1 - busy0
    res.machine_busy_pct = round(100.0 * machine_busy / max(total1 - total0, 1e-9), 1)
    # uas.cpu covers the UAS's whole life (slightly longer than the window): others may read low.
    others = max(0.0, machine_busy - res.sut_cpu_s - res.sipp_cpu_s)
    res.others_cpu_pct = round(100.0 * others / max(total1 - total0, 1e-9), 1)
    res.uac_retransmissions = sum(r.retransmissions for r in results)
    res.uac_timeouts = sum(r.timeouts_on_recv for r in results)
    res.uac_unexpected = sum(r.unexpected for r in results)
    merged: dict[str, int] = {}
    for r in results:
        for k, v in r.counts.items():
            merged[k] = merged.get(k, 0) + v
    res.uac_counts = merged
    res.shed = sum(v for k, v in merged.items() if "_503_" in k and k.endswith("_Recv"))
    res.uas = uas.results()
    res.sut_log_warnings, res.sut_log_sample = _log_warnings(sut.log_path)
    res.sut_stats = sut.engine_stats()

    if res.created == 0:
        res.reasons.append("no call created (see the uac*/screen.txt files)")
    elif res.failed / res.created >= FAIL_MAX:
        res.reasons.append(f"{res.failed} failed calls ({res.fail_pct:.2f}% >= 0.1%)")
    if res.achieved_rate < RATE_MIN * rate:
        res.reasons.append(f"rate {res.achieved_rate:.0f} < 97% of {rate:.0f}")
    if answered == 0:
        res.reasons.append("no INVITE answered")
    elif slow > 0.01 * answered:
        res.reasons.append(f"p99 > 200 ms ({slow} of {answered} answers took >= 200 ms; p99 ~{res.p99_ms} ms)")
    res.passed = not res.reasons
    # CPU per call is comparable when every call went through at the rate asked, even if p99 was high.
    res.clean = res.created > 0 and res.failed / res.created < FAIL_MAX and res.achieved_rate >= RATE_MIN * rate
    return res


def as_dict(r: StepResult) -> dict[str, Any]:
    return asdict(r)
