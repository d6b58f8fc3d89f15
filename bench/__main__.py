"""python -m bench: sweep the call rate through stirgate, Kamailio and Sippy; print and save the figures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster_mode import run_cluster
from .concurrency import QUICK_DIALOGS, run_concurrency
from .fairness import MULTIPLIERS, run_fairness
from .modes import (
    MODES,
    SERVICE_MODES,
    SIP_MODES,
    STANDALONE_MODES,
    HepSink,
    Mode,
    Pki,
    X5uServer,
    make_pki,
    write_identity_pool,
)
from .procs import Addr
from .rest import run_rest
from .state_cost import run_state
from .step import StepResult, as_dict, run_step
from .suts import REPO, SUT, VENV_BIN, Kamailio, Sippy, Stirgate
from .wheel_mode import run_wheel_mode

LADDER = [50, 100, 250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000,
          12000, 14000, 16000, 20000]
QUICK_LADDER = [50, 100, 250, 500, 1000, 2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="SIPp UAC -> SUT -> SIPp UAS over UDP (INVITE, 200, ACK, immediate BYE), sweeping the "
                    "call rate. A step passes with < 0.1%% failed calls, >= 97%% of the target rate answered "
                    "and INVITE->200 p99 <= 200 ms. CPU per call = the SUT's own utime+stime (all its "
                    "processes) over the step / successful calls.")
    p.add_argument("--mode", default="relay",
                   help="comma-separated: relay (default), sign, verify, flood, redirect, hep, hep-tcp, tls "
                        "(SIP sweeps, in that order, same run; redirect/hep: stirgate only; flood also runs the "
                        "fairness steps), fairness (bench/fairness.py alone: a flood at 2x, 5x, 10x capacity "
                        "beside a modest trunk), rest (the ATIS-1000082 API under wrk, after the sweeps), "
                        "crypto (python -m bench.crypto), policies (python -m bench.policy_chain), "
                        "records (bench/records_bench.py: SQLite), records-pg (bench/records_pg_bench.py: "
                        "PostgreSQL insert rate and traceback among 10M rows), concurrency (N long calls held: "
                        "memory per dialog), state (CPU per call the Redis state backend adds over the memory one, "
                        "bench/state_cost.py), wheel (stirgate installed by `pip install` into a fresh virtualenv, "
                        "beside Kamailio: --common-rate, 1 worker, --pairs pairs; CPU per call ratio against the "
                        "0.75 target), campaigns (seeded robocall campaigns in "
                        "legitimate traffic through the engine in memory: share caught after 5 calls, legitimate "
                        "calls flagged, added CPU; python -m bench.campaigns), policy-path (that traffic's "
                        "policy path recorded from the engine and replayed alone: CPU per part; "
                        "python -m bench.policy_path), cluster (one trunk peer through "
                        "Kamailio's dispatcher to stirgate --workers 2, against the peer straight to stirgate "
                        "--workers 2 and against the Kamailio front alone: highest passing rates, CPU per call of "
                        "the chain, of Kamailio and of each worker; bench/cluster_mode.py)")
    p.add_argument("--sut", default=None,
                   help="comma-separated systems to measure: stirgate, kamailio, sippy (default: all; "
                        "mode concurrency: stirgate alone unless given, kamailio with the dialog module; "
                        "mode cluster: stirgate, front, cluster)")
    p.add_argument("--workers", type=int, default=1, choices=(1, 2), help="stirgate worker processes")
    p.add_argument("--pin-sut", type=int, default=None, metavar="CPU",
                   help="SIP modes: run the SUT alone on this CPU and the bench's other processes (SIPp, sinks, x5u "
                        "server) on the others: its CPU per call then leaves out what sharing a core with them "
                        "costs it")
    p.add_argument("--uacs", type=int, default=None, choices=(1, 2),
                   help="SIPp UACs (source addresses) sharing the load, for every SUT (default: --workers; "
                        "SO_REUSEPORT pins one source to one stirgate worker)")
    p.add_argument("--quick", action="store_true", help="short sweep (~2 minutes): 4 s steps, coarse ladder")
    p.add_argument("--duration", type=float, default=None, help="seconds of traffic per step (default 10, quick 4)")
    p.add_argument("--max-rate", type=float, default=None, help="highest rate tried (default 20000, quick 12000)")
    p.add_argument("--start-rate", type=float, default=500, help="first rate of the ladder (default 500)")
    p.add_argument("--common-rate", type=float, default=1000,
                   help="rate at which CPU per call is compared (default 1000)")
    p.add_argument("--rates", default=None, help="explicit comma-separated rates instead of the sweep")
    p.add_argument("--refine", type=int, default=None,
                   help="bisection steps between the last pass and the first failure (default 2, quick 0)")
    p.add_argument("--confirm", type=int, default=None,
                   help="re-runs of a failed ladder step before giving up (noise; default 1, quick 0)")
    p.add_argument("--pairs", type=int, default=None,
                   help="extra alternating stirgate/peer steps at the comparison rate for the CPU ratio "
                        "(median of the pairs; default 2, quick 0)")
    p.add_argument("--drain", type=float, default=1.0, help="seconds after the UACs end still counted as CPU")
    p.add_argument("--port-offset", type=int, default=0,
                   help="add N to every SIP port (run beside tests that hold the TOPOLOGY.md addresses)")
    p.add_argument("--stirgate-listen", default="127.0.0.1:5060")
    p.add_argument("--peer-listen", default="127.0.0.1:5070", help="Kamailio / Sippy listen address")
    p.add_argument("--uac", default="127.0.0.10:5060,127.0.0.11:5060", help="UAC addresses (first --uacs used)")
    p.add_argument("--uas", default="127.0.0.20:5060", help="UAS address (the carrier trunk)")
    p.add_argument("--log-level", default="info",
                   help="stirgate logging level (default info, as shipped in examples/loopback.yaml)")
    p.add_argument("--busy-wait", type=float, default=60.0,
                   help="seconds to wait for a busy address before a step gives up")
    p.add_argument("--records", action="store_true",
                   help="stirgate writes call records (SQLite in the run folder); default off, like the relay")
    p.add_argument("--keep-traces", action="store_true", help="keep SIPp's per-call RTT files")
    p.add_argument("--x5u-listen", default="127.0.0.1:8443",
                   help="the bench's x5u https server (verify mode; --port-offset applies)")
    p.add_argument("--hep-listen", default="127.0.0.1:9060",
                   help="hep modes: the HEP sink stirgate sends its copies to (--port-offset applies)")
    p.add_argument("--max-calls-in-setup", type=int, default=100,
                   help="flood mode: stirgate's overload.max_calls_in_setup (default 100)")
    p.add_argument("--no-pike", action="store_true", help="flood mode: Kamailio without pike")
    p.add_argument("--capacity", type=float, default=None,
                   help="flood/fairness mode: the capacity (calls/s) the flood is a multiple of (default: "
                        "stirgate's highest passing relay rate, measured first on a short ladder)")
    p.add_argument("--flood-multipliers", default=",".join(f"{m:g}" for m in MULTIPLIERS),
                   help="flood/fairness mode: flood rates as multiples of the capacity (default 2,5,10)")
    p.add_argument("--modest-rate", type=float, default=30.0,
                   help="flood/fairness mode: calls/s of the modest trunk beside the flood (default 30)")
    p.add_argument("--fair-duration", type=float, default=None,
                   help="flood/fairness mode: seconds of flood per step (default 10, quick 6)")
    p.add_argument("--flood-uac", default="127.0.0.12:5060",
                   help="flood/fairness mode: first flood UAC address (more on the next addresses)")
    p.add_argument("--pike-density", type=int, default=None,
                   help="flood/fairness mode: Kamailio pike reqs_density_per_unit (default: 4x the modest "
                        "trunk's requests per 2 s)")
    p.add_argument("--dialogs", type=int, default=None,
                   help="concurrency mode: calls held open at once (default 100000, quick 20000)")
    p.add_argument("--setup-rate", type=float, default=None,
                   help="concurrency mode: calls/s at which they are set up (and later ended; default 2000, "
                        "quick 1000)")
    p.add_argument("--hold-mode", choices=("relay", "sign", "verify"), default="relay",
                   help="concurrency mode: stirgate relays the held calls (relay), signs them on the way (sign: "
                        "an Identity header on each B-leg INVITE, the bench PKI) or verifies the caller's Identity "
                        "(verify: one PASSporT per call from the UAC, x5u served by the bench); with --records it "
                        "also writes their records")
    p.add_argument("--hold-transport", choices=("udp", "tcp"), default="udp",
                   help="concurrency mode: the transport of both SIPp trunks (tcp: SIPp -t t1, one connection "
                        "each way; stirgate also listens on TCP)")
    p.add_argument("--hold-reinvite", nargs="?", const="before", choices=("before", "during"), default=None,
                   help="concurrency mode: each held call sends a re-INVITE (answered, ACKed) right after its ACK, "
                        "before the hold, or with `during` in the middle of it (the bench then also measures the "
                        "dialogs once the re-INVITEs' transactions expired); not with --hold-mode verify")
    p.add_argument("--api-listen", default="127.0.0.1:8180",
                   help="concurrency mode: stirgate's HTTP API, polled for its gauges (--port-offset applies)")
    p.add_argument("--rest-listen", default="127.0.0.1:8190",
                   help="rest mode: stirgate's HTTP API for the ATIS-1000082 load (--port-offset applies)")
    p.add_argument("--rest-duration", type=float, default=None,
                   help="rest mode: seconds of load per operation (default 10, quick 4)")
    p.add_argument("--rest-connections", type=int, default=8, help="rest mode: keep-alive connections (default 8)")
    p.add_argument("--campaign-seed", type=int, default=1, help="campaigns mode: traffic seed (default 1)")
    p.add_argument("--campaign-hours", type=float, default=None,
                   help="campaigns mode: simulated hours, the first half only warming the state up and not judged "
                        "(default 48, quick 12)")
    p.add_argument("--campaign-scale", type=int, default=None,
                   help="campaigns mode: calls over the simulated hours (default 120000, quick 30000)")
    p.add_argument("--campaign-policies", default=None,
                   help="campaigns mode: policy file (default examples/policies-campaigns.yaml when present, "
                        "else bench/baseline-policies.yaml)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON and per-step files")
    a = p.parse_args(argv)
    a.uacs = a.uacs or a.workers
    a.duration = a.duration or (4.0 if a.quick else 10.0)
    a.max_rate = a.max_rate or (12000.0 if a.quick else 20000.0)
    a.refine = (0 if a.quick else 2) if a.refine is None else a.refine
    a.confirm = (0 if a.quick else 1) if a.confirm is None else a.confirm
    a.pairs = (0 if a.quick else 2) if a.pairs is None else a.pairs
    a.modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    a.multipliers = [float(x) for x in a.flood_multipliers.split(",") if x.strip()]
    a.fair_duration = a.fair_duration or (6.0 if a.quick else 10.0)
    known = (*SIP_MODES, *STANDALONE_MODES, *SERVICE_MODES, "concurrency", "state", "wheel", "cluster", "fairness")
    bad = [m for m in a.modes if m not in known]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}: {', '.join(known)}")
    if a.hold_reinvite and a.hold_mode == "verify":
        p.error("--hold-reinvite has no scenario with the caller's Identity: not with --hold-mode verify")
    a.sut_given = a.sut is not None
    a.sut = a.sut or "stirgate,kamailio,sippy"
    a.dialogs = a.dialogs or (QUICK_DIALOGS if a.quick else 100_000)
    a.setup_rate = a.setup_rate or (1000.0 if a.quick else 2000.0)
    a.rest_duration = a.rest_duration or (4.0 if a.quick else 10.0)
    # The figures of docs/ANALYTICS.md: two days, the second judged (a gateway's history is a day old).
    a.campaign_hours = a.campaign_hours or (12.0 if a.quick else 48.0)
    a.campaign_scale = a.campaign_scale or (30_000 if a.quick else 120_000)
    return a


class Sweep:
    def __init__(self, sut: SUT, args: argparse.Namespace, rundir: Path, uacs: list[Addr], uas: Addr,
                 mode: Mode = MODES["relay"], pki: Pki | None = None) -> None:
        self.sut = sut
        self.mode = mode
        self.pki = pki
        sut.set_mode(mode, pki)
        self.args = args
        self.rundir = rundir
        self.uacs = uacs
        self.uas = uas
        self.steps: list[StepResult] = []
        self.n = 0

    def run(self, rate: float, confirm: int = 0) -> StepResult:
        rate = float(round(rate))
        for attempt in range(confirm + 1 + 2):
            self.n += 1
            d = self.rundir / self.mode.name / self.sut.name / f"{self.n:02d}-{rate:.0f}cps"
            self.sut.set_mode(self.mode, self.pki)
            r = run_step(self.sut, rate, self.args.duration, d, uac_addrs=self.uacs, uas_addr=self.uas,
                         drain=self.args.drain, busy_wait=self.args.busy_wait,
                         tail=3.0 if self.args.quick else 6.0, keep_traces=self.args.keep_traces,
                         mode=self.mode.name, scenario=self.mode.uac_scenario,
                         uac_args=self.identity_args if self.mode.identity_pool else None)
            self.steps.append(r)
            print("  " + r.summary(), flush=True)
            if r.error and "busy" in r.error:
                break
            if r.error and attempt < 2:
                time.sleep(2)
                continue  # a step that could not run says nothing about the SUT: run it again
            if r.passed or attempt >= confirm:
                break
            print(f"  {self.sut.name}: confirming the failure at {rate:.0f} cps", flush=True)
        return r

    def identity_args(self, i: int, stepdir: Path, calls: int) -> list[str]:
        """Verify mode: sign one Identity per call of UAC i now (iat = the step's start), as its -inf file."""
        assert self.pki is not None
        path = stepdir / f"identities-uac{i}.csv"
        n, took = write_identity_pool(self.pki, path, calls)
        print(f"    uac{i}: {n} Identity values signed in {took:.1f} s", flush=True)
        return ["-inf", str(path)]

    def passed(self, rate: float) -> StepResult | None:
        ok = [s for s in self.steps if s.passed and s.rate == round(rate)]
        return ok[-1] if ok else None

    def best(self) -> StepResult | None:
        ok = [s for s in self.steps if s.passed]
        return max(ok, key=lambda s: s.rate) if ok else None

    def sweep(self) -> None:
        a = self.args
        if a.rates:
            for rate in (float(x) for x in a.rates.split(",")):
                self.run(rate)
            return
        ladder = QUICK_LADDER if a.quick else LADDER
        rungs = sorted({r for r in ladder if r <= a.max_rate} | {a.start_rate, a.common_rate})
        rungs = [r for r in rungs if r <= a.max_rate]
        i = rungs.index(a.start_rate)
        first_fail: float | None = None
        r = self.run(rungs[i], a.confirm)
        if r.passed:
            while i + 1 < len(rungs):
                i += 1
                r = self.run(rungs[i], a.confirm)
                if not r.passed:
                    first_fail = rungs[i]
                    break
        else:
            first_fail = rungs[i]
            while i > 0:
                i -= 1
                r = self.run(rungs[i], a.confirm)
                if r.passed:
                    break
                first_fail = rungs[i]
        best = self.best()
        if best and a.common_rate <= best.rate and not self.passed(a.common_rate):
            self.run(a.common_rate)
        lo = best.rate if best else 0.0
        for _ in range(a.refine):
            if first_fail is None:
                break
            grain = 50 if first_fail > 500 else 10
            mid = round((lo + first_fail) / 2 / grain) * grain
            if mid <= lo or mid >= first_fail or (first_fail - lo) <= max(grain, 0.05 * lo):
                break
            if self.run(mid).passed:
                lo = mid
            else:
                first_fail = mid


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=20, text=True)
        text = (out.stdout or out.stderr).strip().splitlines()
        return next((ln.strip() for ln in text if ln.strip()), "?")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def describe_failure(f: StepResult) -> str:
    c, u = f.uac_counts, f.uas.get("counts", {})

    def pick(d: dict[str, int], suffix: str, what: str) -> int:
        return sum(v for k, v in d.items() if k.endswith(suffix) and what in k)

    bits = [
        f"{f.failed} failed of {f.created}",
        f"p50/p99/max {f.p50_ms}/{f.p99_ms}/{f.max_ms} ms",
        f"UAC: INVITE retrans {pick(c, '_Retrans', 'INVITE')}, BYE retrans {pick(c, '_Retrans', 'BYE')}, "
        f"200 retrans received {pick(c, '_Retrans', '_200_')}, unexpected {pick(c, '_Unexp', '')}, "
        f"timeouts {pick(c, '_Timeout', '')}",
        f"UAS: INVITE retrans received {pick(u, '_Retrans', 'INVITE')}, "
        f"200 retrans sent {pick(u, '_Retrans', '_200_')}, "
        f"ACK missing {max(0, pick(u, '_Recv', 'INVITE') - pick(u, '_Recv', 'ACK'))}, "
        f"BYE timeouts {pick(u, '_Timeout', 'BYE')}",
        f"SUT CPU {f.sut_cpu_pct:.0f}% of a core, others {f.others_cpu_pct:.0f}% of the machine",
    ]
    if f.sut_stats:
        keys = ("invites", "answered", "calls_ended", "stray_responses", "internal_errors", "not_accepting")
        tot = {k: sum(int(w.get(k, 0)) for w in f.sut_stats) for k in keys}
        bits.append("stirgate counters " + ", ".join(f"{k} {v}" for k, v in tot.items()))
    if f.sut_log_warnings:
        bits.append(f"{f.sut_log_warnings} warning/error log lines")
    return "; ".join(bits)


def fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:,.0f}{unit}"


def compare(sg: Sweep, pw: Sweep, args: argparse.Namespace) -> dict[str, Any]:
    """CPU per call compared like for like: at the common rate, or (when one of the pair cannot pass it) at
    the highest rate both pass, measuring the faster one there if needed; then --pairs back-to-back pairs."""
    peer = pw.sut.name
    rate = min(args.common_rate, sg.best().rate, pw.best().rate)  # type: ignore[union-attr]
    for sw in (sg, pw):
        if not sw.passed(rate):
            print(f"{sw.sut.label} [{sw.mode.name}]: CPU at {rate:.0f} cps for the comparison with {peer}",
                  flush=True)
            sw.run(rate, args.confirm)
    # Paired, alternating re-measurements: the background load drifts, so each pair of steps run back to back
    # gives one ratio; the median of those ratios is the figure.
    pair_ratios: list[float] = []
    a, b = sg.passed(rate), pw.passed(rate)
    if args.pairs == 0 and a and b and a.cpu_us_per_call and b.cpu_us_per_call:
        pair_ratios.append(a.cpu_us_per_call / b.cpu_us_per_call)
    paired: list[StepResult] = []
    for k in range(args.pairs):
        print(f"CPU pair {k + 1}/{args.pairs} at {rate:.0f} cps [{sg.mode.name}]: stirgate then {peer}", flush=True)
        a, b = sg.run(rate), pw.run(rate)
        if a.clean and b.clean and a.cpu_us_per_call and b.cpu_us_per_call:
            pair_ratios.append(a.cpu_us_per_call / b.cpu_us_per_call)
            paired += [a, b]
    entry: dict[str, Any] = {"cpu_rate_cps": rate}
    if pair_ratios:
        entry["cpu_ratio"] = round(statistics.median(pair_ratios), 3)
        entry["cpu_ratio_pairs"] = [round(x, 3) for x in pair_ratios]
        pool = paired or [x for x in (*sg.steps, *pw.steps) if x.passed and x.rate == rate]
        entry["cpu_us_stirgate"] = statistics.median(
            x.cpu_us_per_call for x in pool if x.sut == "stirgate" and x.cpu_us_per_call)
        entry[f"cpu_us_{peer}"] = statistics.median(
            x.cpu_us_per_call for x in pool if x.sut == peer and x.cpu_us_per_call)
    ba, bb = sg.best(), pw.best()
    if ba and bb:
        entry["max_rate_ratio"] = round(ba.rate / bb.rate, 3)
        if ba.cpu_us_per_call and bb.cpu_us_per_call:
            entry["cpu_ratio_at_max_rates"] = round(ba.cpu_us_per_call / bb.cpu_us_per_call, 3)
    return entry


def cpu_at(sw: Sweep, rate: float) -> float | None:
    """Median CPU per call of the clean steps at `rate` (passed, or clean with p99 over: CPU is comparable)."""
    vals = [x.cpu_us_per_call for x in sw.steps if x.clean and x.rate == rate and x.cpu_us_per_call]
    return statistics.median(vals) if vals else None


def run_standalone(mode: str, rundir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """crypto / policies / records / records-pg / campaigns: the benchmarks run as their own commands, output
    kept."""
    py = str(VENV_BIN / "python")
    campaigns = [py, "-m", "bench.campaigns", "--seed", str(args.campaign_seed), "--hours", f"{args.campaign_hours:g}",
                 "--warmup-hours", f"{args.campaign_hours / 2:g}", "--scale", str(args.campaign_scale),
                 "--json", str(rundir / "campaigns.json")]
    if args.campaign_policies:
        campaigns += ["--policies", args.campaign_policies]
    else:  # the shipped profile: its analytics' CPU is what it adds to the same profile without risk_score
        campaigns += ["--baseline", str(REPO / "bench" / "profile-without-risk.yaml")]
    cmd = {
        "crypto": [py, "-m", "bench.crypto", "--json", str(rundir / "crypto.json")],
        "policies": [py, "-m", "bench.policy_chain"],
        "records": [py, str(REPO / "bench" / "records_bench.py")],
        "records-pg": [py, str(REPO / "bench" / "records_pg_bench.py")],
        "campaigns": campaigns,
        "policy-path": [py, "-m", "bench.policy_path", "--seed", str(args.campaign_seed)]
        + (["--policies", args.campaign_policies] if args.campaign_policies else []),
    }[mode]
    print(f"{mode}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    (rundir / f"{mode}.txt").write_text(r.stdout + r.stderr)
    print(r.stdout.rstrip() + ("\n" + r.stderr.rstrip() if r.returncode else ""), flush=True)
    out = {"command": " ".join(cmd), "returncode": r.returncode, "seconds": round(time.monotonic() - t0, 1),
           "output": r.stdout[-8000:]}
    summary = rundir / "campaigns.json"
    if mode == "campaigns" and summary.exists():
        out["summary"] = json.loads(summary.read_text())
    return out


def print_mode(mode: str, sweeps: dict[str, Sweep], skipped: dict[str, str], ratios: dict[str, Any],
               summary: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"Results, mode {mode} ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {args.duration:g} s "
          f"steps, {args.uacs} UAC(s), stirgate --workers {args.workers}):")
    top = "highest rate answered (200 or 503) in 200 ms p99" if mode == "flood" else "highest passing rate"
    print(f"| system | {top} | CPU/call at {args.common_rate:.0f} cps | CPU/call at highest rate |")
    print("|---|---|---|---|")
    for s in summary.values():
        shed = f" ({s['shed_at_max_rate']} shed with 503)" if s.get("shed_at_max_rate") else ""
        print(f"| {s['label']} | {fmt(s['max_passing_cps'], ' cps')}{shed} | "
              f"{fmt(s['cpu_us_per_call_at_common_rate'], ' µs')} | {fmt(s['cpu_us_per_call_at_max_rate'], ' µs')} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} | | |")
    for pair, e in ratios.items():
        bits = []
        if "cpu_ratio" in e:
            pairs = ", ".join(f"{x:.2f}" for x in e["cpu_ratio_pairs"])
            peer = pair.split("/")[1]
            bits.append(f"CPU/call {e['cpu_ratio']:.2f} at {e['cpu_rate_cps']:.0f} cps ({e['cpu_us_stirgate']:.0f} vs "
                        f"{e['cpu_us_' + peer]:.0f} µs; ratio of each pair {pairs})")
        if "max_rate_ratio" in e:
            bits.append(f"highest passing rate {e['max_rate_ratio']:.2f}")
        if "cpu_ratio_at_max_rates" in e:
            bits.append(f"CPU/call at each one's highest rate {e['cpu_ratio_at_max_rates']:.2f}")
        print(f"{pair} [{mode}]: " + "; ".join(bits))
    header = "Behaviour at the first failing rate (retransmissions show where messages were late or lost):"
    for name, sw in sweeps.items():
        best = sw.best()
        fails = [x for x in sw.steps if not x.passed and not x.error and (best is None or x.rate > best.rate)]
        if not fails:
            continue
        if header:
            print(header)
            header = ""
        f = min(fails, key=lambda x: x.rate)
        print(f"  {name} at {f.rate:.0f} cps: {describe_failure(f)}; 503 received {f.shed}")


def added_over_relay(all_sweeps: dict[str, dict[str, Sweep]], args: argparse.Namespace,
                     hep_sink: Callable[[str], None]) -> dict[str, Any]:
    """What each mode adds to each system's CPU per call over its relay at the common rate: relay and mode steps
    run back to back (--pairs times; the background load drifts between sweeps), the relay first in odd pairs and
    second in even ones (the second step of a pair ran slower on the 2-core VM), median of the differences.
    `hep_sink(transport)` starts the sink a HEP mode sends to."""
    relay = all_sweeps.get("relay")
    added: dict[str, dict[str, Any]] = {}
    for m in ("sign", "verify", "hep", "hep-tcp"):
        for name, sw in all_sweeps.get(m, {}).items() if relay else ():
            base = relay.get(name) if relay else None
            if base is None or base.best() is None or sw.best() is None:
                continue
            rate = min(args.common_rate, base.best().rate, sw.best().rate)  # type: ignore[union-attr]
            hep = MODES[m].hep
            if hep:
                hep_sink(hep)
            diffs: list[float] = []
            kernel_diffs: list[float] = []  # of which the kernel's (stime), where the SUT reports it
            shares: list[float] = []  # each pair's difference as a % of its own relay step
            for k in range(args.pairs):
                relay_first = k % 2 == 0
                order = f"relay then {m}" if relay_first else f"{m} then relay"
                print(f"added-CPU pair {k + 1}/{args.pairs} at {rate:.0f} cps: {name} {order}", flush=True)
                if relay_first:
                    a, b = base.run(rate), sw.run(rate)
                else:
                    b, a = sw.run(rate), base.run(rate)
                if a.clean and b.clean and a.cpu_us_per_call and b.cpu_us_per_call:
                    diffs.append(b.cpu_us_per_call - a.cpu_us_per_call)
                    shares.append(100 * (b.cpu_us_per_call / a.cpu_us_per_call - 1))
                    ka, kb = a.sut_cpu_parts_s.get("kernel"), b.sut_cpu_parts_s.get("kernel")
                    if ka is not None and kb is not None:
                        kernel_diffs.append(1e6 * (kb / b.successful - ka / a.successful))
            va, vb = cpu_at(base, rate), cpu_at(sw, rate)
            added.setdefault(m, {})[name] = {
                "rate_cps": rate,
                "paired_median_us": round(statistics.median(diffs), 1) if diffs else None,
                "pairs_us": [round(d, 1) for d in diffs],
                # the relay's speed drifts between pairs: each pair against its own relay, with the spread of the
                # mean (the figure to judge a target near it with)
                "pairs_pct_of_relay": [round(x, 1) for x in shares],
                "pct_of_relay_mean": round(statistics.mean(shares), 1) if shares else None,
                "pct_of_relay_se": round(statistics.stdev(shares) / len(shares) ** 0.5, 1) if len(shares) > 1
                else None,
                "paired_median_kernel_us": round(statistics.median(kernel_diffs), 1) if kernel_diffs else None,
                "pairs_kernel_us": [round(d, 1) for d in kernel_diffs],
                "all_steps_median_us": round(vb - va, 1) if va is not None and vb is not None else None,
            }
    if added:
        print("\nCPU per call each mode adds over the same system's relay (same run):")
        for m, per in added.items():
            for name, e in per.items():
                pm, am = e["paired_median_us"], e["all_steps_median_us"]
                base_us = cpu_at(relay[name], e["rate_cps"]) if relay and name in relay else None
                added_us = pm if pm is not None else am
                e["added_pct_of_relay"] = round(100 * added_us / base_us, 1) if added_us is not None and base_us \
                    else None
                share = f" ({e['added_pct_of_relay']:+.1f} % of the relay)" if e["added_pct_of_relay"] is not None \
                    else ""
                print(f"  {m} {name} at {e['rate_cps']:.0f} cps{share}: back-to-back pairs "
                      f"{'n/a' if pm is None else f'{pm:+.0f} µs'} ({', '.join(f'{d:+.0f}' for d in e['pairs_us'])}); "
                      f"medians of every clean step {'n/a' if am is None else f'{am:+.0f} µs'}")
                if e["pct_of_relay_se"] is not None:
                    share_median = statistics.median(e["pairs_pct_of_relay"])
                    print(f"    each pair against its own relay: median {share_median:+.1f} %, "
                          f"mean {e['pct_of_relay_mean']:+.1f} % (± {e['pct_of_relay_se']:.1f} % s.e.)")
                if e["paired_median_kernel_us"] is not None:
                    print(f"    of which in the kernel (stime): paired median {e['paired_median_kernel_us']:+.1f} µs")
    return added


def service_vs_inline(results: dict[str, Any]) -> dict[str, Any]:
    """stirgate's CPU per redirect and per REST request against its own inline signed/verified call (same run).

    Targets (issue 16): redirect signing <= 0.60 of an inline signed call; REST within 1.5x of inline."""
    def inline(mode: str) -> float | None:
        s = results.get(mode, {}).get("summary", {}).get("stirgate", {})
        v = s.get("cpu_us_per_call_at_common_rate") or s.get("cpu_us_per_call_at_max_rate")
        return float(v) if v else None

    out: dict[str, Any] = {}
    sign, verify = inline("sign"), inline("verify")
    redirect = inline("redirect")
    if sign and redirect:
        out["redirect_over_inline_sign"] = {"redirect_us": redirect, "inline_sign_us": sign,
                                            "ratio": round(redirect / sign, 3), "target": 0.60}
    rest = results.get("rest", {})
    for op, base in (("signing", sign), ("verification", verify)):
        cpu = rest.get(op, {}).get("cpu_us_per_request") if isinstance(rest.get(op), dict) else None
        if cpu and base:
            out[f"rest_{op}_over_inline"] = {"rest_us": cpu, "inline_us": base, "ratio": round(cpu / base, 3),
                                             "target": 1.5}
    if out:
        print("\nSTI service modes against stirgate's own inline calls (CPU per call/request, same run):")
        for key, e in out.items():
            mine = e.get("redirect_us", e.get("rest_us"))
            theirs = e.get("inline_sign_us", e.get("inline_us"))
            verdict = "meets" if e["ratio"] <= e["target"] else "misses"
            print(f"  {key}: {mine:.0f} vs {theirs:.0f} µs = {e['ratio']:.2f} ({verdict} the target {e['target']})")
    elif ("redirect" in results or "rest" in results) and not (sign or verify):
        print("\nSTI service modes: no passing inline sign/verify step in this run to compare with "
              "(add --mode sign,verify, or the machine was too busy for them to pass)")
    return out


_TLS_FILES: list[Any] = []


def tls_front(sut: SUT, rundir: Path, off: int) -> SUT:
    """Mode tls: the SUT behind the Kamailio TLS front (bench/tls_front.py), certificates made once per run."""
    from .procs import Addr as _Addr
    from .tls_front import FRONT_B, TlsFront, make_tls_pki

    if not _TLS_FILES:
        _TLS_FILES.append(make_tls_pki(rundir / "tls-pki"))
    files = _TLS_FILES[0]
    tls_port = 5061 + off
    sut.tls_files = files  # type: ignore[attr-defined]
    sut.tls_listen = _Addr(sut.listen.host, sut.listen.port + 1)  # type: ignore[attr-defined]
    if sut.name == "kamailio":
        sut.tls_next_hop = f"sip:{FRONT_B}:{tls_port};transport=tls"  # type: ignore[attr-defined]
    return TlsFront(sut, files, udp_port=5060 + off, tls_port=tls_port)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (REPO / args.out) if not os.path.isabs(args.out) else Path(args.out)
    rundir = out / f"bench-{stamp}"
    rundir.mkdir(parents=True, exist_ok=True)
    off = args.port_offset
    uacs = [Addr.parse(x).offset(off) for x in args.uac.split(",")][: args.uacs]
    if len(uacs) < args.uacs:
        print(f"--uacs {args.uacs} needs as many --uac addresses", file=sys.stderr)
        return 2
    uas = Addr.parse(args.uas).offset(off)
    names = [s.strip() for s in args.sut.split(",") if s.strip()]
    suts: list[SUT] = []
    for name in names:
        if name == "stirgate":
            suts.append(Stirgate(Addr.parse(args.stirgate_listen).offset(off), uas, uacs, rundir,
                                 workers=args.workers, log_level=args.log_level, worker_port_base=5100 + off,
                                 records=args.records, max_calls_in_setup=args.max_calls_in_setup,
                                 hep_listen=Addr.parse(args.hep_listen).offset(off)))
        elif name == "kamailio":
            suts.append(Kamailio(Addr.parse(args.peer_listen).offset(off), uas, uacs, rundir, pike=not args.no_pike))
        elif name == "sippy":
            suts.append(Sippy(Addr.parse(args.peer_listen).offset(off), uas, uacs, rundir))
        elif name in ("front", "cluster") and "cluster" in args.modes:
            continue  # mode cluster's own systems (bench/cluster_mode.py)
        else:
            print(f"unknown SUT {name!r} (stirgate, kamailio, sippy)", file=sys.stderr)
            return 2

    if args.pin_sut is not None:
        everything = os.sched_getaffinity(0)
        if args.pin_sut not in everything or len(everything) < 2:
            print(f"--pin-sut {args.pin_sut}: this process may run on CPUs {sorted(everything)}; it needs that one "
                  "and another", file=sys.stderr)
            return 2
        # the bench and every process it starts on the other CPUs (none is started yet), each SUT on its own
        os.sched_setaffinity(0, everything - {args.pin_sut})
        for sut in suts:
            sut.cpus = frozenset({args.pin_sut})
    sip_modes = [m for m in args.modes if m in SIP_MODES]
    systems = (", ".join(names) if sip_modes else "stirgate from a wheel, kamailio" if "wheel" in args.modes
               else "stirgate, the Kamailio front, both" if "cluster" in args.modes else "-")
    print(f"bench: modes {', '.join(args.modes)}; {systems}; {args.uacs} UAC(s) "
          f"{', '.join(map(str, uacs))} -> SUT -> UAS {uas}; {args.duration:g} s steps; stirgate workers "
          f"{args.workers}; files in {rundir}", flush=True)
    # stirgate runs from the working tree (editable install) and is restarted each step: note the commit at
    # both ends of the run, and whether proxy/ had uncommitted changes.
    rev_start = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    pki: Pki | None = None
    x5u: X5uServer | None = None
    sink: HepSink | None = None
    if any(MODES[m].needs_pki for m in sip_modes) or "state" in args.modes or "rest" in args.modes \
            or ("concurrency" in args.modes and args.hold_mode != "relay"):
        pki = make_pki(rundir, VENV_BIN / "stirgate", Addr.parse(args.x5u_listen).offset(off))
    all_sweeps: dict[str, dict[str, Sweep]] = {}
    results: dict[str, Any] = {}

    def hep_sink(transport: str) -> None:
        """The HEP sink for `transport` running (the other one stopped): copies sent to a port nobody listens on
        are answered by ICMP and then not even built, which would make HEP look free."""
        nonlocal sink
        if sink is not None and sink.transport == transport:
            return
        if sink is not None:
            sink.stop()
        sink = HepSink(VENV_BIN / "python", Addr.parse(args.hep_listen).offset(off), transport, rundir)
        sink.start()
        print(f"HEP sink ({transport}) on {sink.listen} (PID {sink.proc.pid if sink.proc else '?'})", flush=True)

    def x5u_running() -> None:
        """The bench's x5u server started once for the run (stirgate fetches the certificate from it)."""
        nonlocal x5u
        if x5u is None and pki is not None:
            x5u = X5uServer(VENV_BIN / "python", pki, Addr.parse(args.x5u_listen).offset(off), rundir)
            x5u.start()
            print(f"x5u server on https://{x5u.listen}/ (PID {x5u.proc.pid if x5u.proc else '?'})", flush=True)
    skipped: dict[str, str] = {}
    try:
        for name in [m for m in args.modes if m in STANDALONE_MODES]:
            results[name] = run_standalone(name, rundir, args)
        for sut in suts:
            why = sut.available()
            if why:
                print(f"{sut.name}: skipped: {why}", flush=True)
                skipped[sut.name] = why
        for m in sip_modes:
            mode = MODES[m]
            if mode.needs_x5u_server:
                x5u_running()
            if mode.hep:
                hep_sink(mode.hep)
            sweeps: dict[str, Sweep] = {}
            all_sweeps[m] = sweeps
            for sut in suts:
                if sut.name in skipped:
                    continue
                if mode.hep and sut.name != "stirgate":
                    print(f"{sut.label}: no HEP capture configured here: not run in mode {m}", flush=True)
                    continue
                if mode.tls:
                    if sut.name == "sippy":
                        print(f"{sut.label}: no TLS: not run in mode {m}", flush=True)
                        continue
                    sut = tls_front(sut, rundir, off)
                    why = sut.available()
                    if why:
                        print(f"{sut.label}: skipped: {why}", flush=True)
                        continue
                if sut.name == "sippy" and (mode.needs_pki or mode.flood):
                    print(f"{sut.label}: no STIR/SHAKEN and no overload control: not run in mode {m}", flush=True)
                    continue
                if sut.name != "stirgate" and mode.redirect:
                    print(f"{sut.label}: no STI redirect mode: not run in mode {m}", flush=True)
                    continue
                sw = Sweep(sut, args, rundir, uacs, uas, mode, pki)
                print(f"{sut.label} [mode {m}]:", flush=True)
                sweeps[sut.name] = sw
                sw.sweep()
            ratios: dict[str, Any] = {}
            sg = sweeps.get("stirgate")
            if sg is not None and sg.best() is not None and not args.rates:
                for peer in ("kamailio", "sippy"):
                    pw = sweeps.get(peer)
                    if pw is not None and pw.best() is not None:
                        ratios[f"stirgate/{peer}"] = compare(sg, pw, args)
            summary: dict[str, Any] = {}
            for name, sw in sweeps.items():
                best = sw.best()
                summary[name] = {
                    "label": sw.sut.label,
                    "max_passing_cps": best.rate if best else None,
                    "cpu_us_per_call_at_common_rate": cpu_at(sw, args.common_rate),
                    "cpu_us_per_call_at_max_rate": best.cpu_us_per_call if best else None,
                    "p99_ms_at_max_rate": best.p99_ms if best else None,
                    "shed_at_max_rate": best.shed if best else None,
                    "steps": len(sw.steps),
                }
            print_mode(m, sweeps, skipped, ratios, summary, args)
            results[m] = {"summary": summary, "ratios": ratios}
        # before the x5u server stops: stirgate fetches the certificate again in every step
        results["added_over_relay_us"] = added_over_relay(all_sweeps, args, hep_sink)
        if "state" in args.modes and pki is not None:
            x5u_running()
            results["state"] = run_state(args, rundir, pki, uacs[0], uas,
                                         Addr.parse(args.stirgate_listen).offset(off))
        if "wheel" in args.modes:
            wheel_relay = dataclasses.replace(MODES["relay"], name="wheel")  # the relay, in folders of its own
            results["wheel"], runners = run_wheel_mode(
                args, rundir, uacs, uas, lambda sut: Sweep(sut, args, rundir, uacs[:1], uas, wheel_relay))
            all_sweeps["wheel"] = runners  # type: ignore[assignment]  # their steps go into the JSON too
        if "cluster" in args.modes:
            results["cluster"], cluster_runners = run_cluster(
                args, rundir, uacs, uas, lambda sut, mode: Sweep(sut, args, rundir, uacs[:1], uas, mode))
            all_sweeps["cluster"] = cluster_runners  # type: ignore[assignment]  # their steps go into the JSON too
        if "rest" in args.modes and pki is not None:
            x5u_running()
            print(f"rest: the ATIS-1000082 API, {args.rest_duration:g} s per operation", flush=True)
            try:
                results["rest"] = run_rest(rundir, VENV_BIN / "stirgate", pki,
                                           Addr.parse(args.stirgate_listen).offset(off),
                                           Addr.parse(args.rest_listen).offset(off), seconds=args.rest_duration,
                                           connections=args.rest_connections, records=args.records)
            except RuntimeError as exc:
                print(f"rest: could not run: {exc}", flush=True)
                results["rest"] = {"error": str(exc)}
        results["service_vs_inline"] = service_vs_inline(results)
        if "concurrency" in args.modes:
            held = names if args.sut_given else ["stirgate"]
            if args.hold_mode == "verify":
                x5u_running()
            results["concurrency"] = run_concurrency(args, rundir, held, uacs, uas, skipped, pki)
        if "flood" in args.modes or "fairness" in args.modes:
            results["fairness"] = run_fairness(args, rundir, names, skipped)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if x5u is not None:
            x5u.stop()
        if sink is not None:
            sink.stop()


    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_end": os.getloadavg()},
        "args": vars(args),
        "criteria": {"failed_calls_pct_below": 0.1, "rate_reached_pct_min": 97, "invite_200_p99_ms_max": 200},
        "versions": {
            "sipp": version(["sipp", "-v"]),
            "kamailio": version(["kamailio", "-v"]),
            "stirgate_git_start": rev_start,
            "stirgate_git_end": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "stirgate_tree_dirty_at_end": bool(subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "proxy", "policies"],
                capture_output=True, text=True).stdout.strip()),
            "python": platform.python_version(),
        },
        "addresses": {"uacs": [str(a) for a in uacs], "uas": str(uas),
                      "suts": {s.name: str(s.listen) for s in suts}},
        "skipped": skipped,
        "modes": results,
        # relay-mode keys as before, for readers of older JSON
        "summary": results.get("relay", {}).get("summary", {}),
        "ratios": results.get("relay", {}).get("ratios", {}),
        "steps": [as_dict(s) for sweeps in all_sweeps.values() for sw in sweeps.values() for s in sw.steps],
    }
    path = out / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
