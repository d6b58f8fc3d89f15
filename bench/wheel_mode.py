"""`python -m bench --mode wheel`: the stirgate a user gets from `pip install`, beside Kamailio (issue 14).

stirgate is built into a fresh virtualenv in the run folder (bench/wheel.py: a copy of the checkout, `pip install`
with the build isolation a user has), checked with `stirgate --version`, and then measured like the relay mode at
one rate (`--common-rate`, default 1000 calls/s), one worker, one UAC: `--pairs` back-to-back pairs of steps
(stirgate then Kamailio, at least one pair), each pair giving a CPU-per-call ratio; the figure is their median,
against the issue's target of 0.75.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import wheel
from .procs import Addr
from .step import StepResult
from .suts import REPO, SUT, Kamailio, Stirgate

TARGET_RATIO = 0.75


class StepRunner(Protocol):
    steps: list[StepResult]

    def run(self, rate: float, confirm: int = 0) -> StepResult: ...


def install_wheel(rundir: Path, pure: bool = False) -> tuple[wheel.Install, str]:
    """The wheel-installed stirgate in rundir/wheel, and what its `--version` says."""
    t0 = time.monotonic()
    src = wheel.source_copy(rundir / "wheel" / "src")
    inst = wheel.install(rundir / "wheel", src, pure=pure)
    r = inst.run("--version")
    text = (r.stdout or r.stderr).strip()
    how = "pip install (isolated build)" if inst.isolated else "pip wheel --no-build-isolation (index unreachable)"
    print(f"wheel: built and installed in {time.monotonic() - t0:.0f} s by {how}; log {inst.log}", flush=True)
    for line in text.splitlines():
        print(f"  {line}", flush=True)
    return inst, text


def run_wheel_mode(args: argparse.Namespace, rundir: Path, uacs: list[Addr], uas: Addr,
                   make_runner: Callable[[SUT], StepRunner]) -> tuple[dict[str, Any], dict[str, StepRunner]]:
    inst, version = install_wheel(rundir)
    off = args.port_offset
    uac = uacs[:1]  # one worker, one UAC
    sg = Stirgate(Addr.parse(args.stirgate_listen).offset(off), uas, uac, rundir, workers=1,
                  log_level=args.log_level, worker_port_base=5100 + off, records=args.records,
                  exe=inst.stirgate, origin="wheel")
    kam = Kamailio(Addr.parse(args.peer_listen).offset(off), uas, uac, rundir)
    result: dict[str, Any] = {"stirgate_version": version, "isolated_build": inst.isolated,
                              "target_ratio": TARGET_RATIO, "rate_cps": args.common_rate}
    runners: dict[str, StepRunner] = {}
    for sut in (sg, kam):
        why = sut.available()
        if why:
            print(f"{sut.name}: cannot run: {why}", flush=True)
            result["skipped"] = {sut.name: why}
            return result, runners
    if "hot path: compiled" not in version:
        print("wheel: WARNING: this wheel's hot path is not compiled (see the build log): the figure below is "
              "the pure-Python one", flush=True)
    runners = {"stirgate": make_runner(sg), "kamailio": make_runner(kam)}
    rate = float(args.common_rate)
    ratios: list[float] = []
    for k in range(max(1, args.pairs)):
        print(f"CPU pair {k + 1}/{max(1, args.pairs)} at {rate:.0f} cps: stirgate (wheel) then Kamailio", flush=True)
        a, b = runners["stirgate"].run(rate), runners["kamailio"].run(rate)
        if a.clean and b.clean and a.cpu_us_per_call and b.cpu_us_per_call:
            ratios.append(a.cpu_us_per_call / b.cpu_us_per_call)
    clean = {name: [s.cpu_us_per_call for s in r.steps if s.clean and s.cpu_us_per_call]
             for name, r in runners.items()}
    result.update({
        "cpu_ratio_pairs": [round(x, 3) for x in ratios],
        "cpu_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "cpu_us_stirgate": statistics.median(clean["stirgate"]) if clean["stirgate"] else None,
        "cpu_us_kamailio": statistics.median(clean["kamailio"]) if clean["kamailio"] else None,
    })
    ratio = result["cpu_ratio"]
    result["target_met"] = ratio is not None and ratio <= TARGET_RATIO
    print(f"\nResults, mode wheel ({time.strftime('%Y-%m-%d %H:%M')}, {rate:.0f} cps, {args.duration:g} s steps, "
          f"1 worker, 1 UAC; stirgate from {inst.venv} ({REPO.name} checkout copy)):")
    if ratio is None:
        print("  no pair where both ran clean: no ratio (see the steps above)")
    else:
        pairs = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"  CPU per call: stirgate (wheel) {result['cpu_us_stirgate']:.0f} µs, Kamailio "
              f"{result['cpu_us_kamailio']:.0f} µs; ratio {ratio:.2f} (pairs {pairs}); target <= {TARGET_RATIO}: "
              f"{'met' if result['target_met'] else 'NOT met'}")
    return result, runners
