"""`python -m bench --mode state`: CPU per call the Redis state backend adds, against the in-process one.

Both stirgates run the verify-mode bench call (every INVITE carries a fresh PASSporT, verified, certificate
cached) with the same chain on the carrier trunk: `replay` + two `velocity` entries (calls per orig TN, and
distinct destinations per origid), thresholds that never fire, so every call runs every op;
`state.batch_window_ms` at its default. One run alternates memory and Redis steps at the same rate (back to
back, `--pairs` times, memory first in odd pairs and second in even ones): the added CPU is the median of the
paired differences. Redis' own CPU per call is reported beside (it is another process, usually another
machine). Target (issue 11): at most +25 us per call, i.e. batching works. `python -m bench.state_inproc` is
the same comparison without SIP sockets, interleaved in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from tests.services import Redis

from .modes import MODES, Pki
from .procs import Addr, tree_cpu
from .step import StepResult, run_step
from .suts import Stirgate

CHAIN = """trunks:
  carrier:
    - policy: replay
    - policy: velocity
      params: {key: orig_tn, window: 60, max_calls: 10000000}
    - policy: velocity
      name: velocity-destinations
      params: {key: origid, window: 60, max_destinations: 10000000}
"""


class StirgateWithState(Stirgate):
    """The bench stirgate plus the chain above and a `state:` backend."""

    def __init__(self, *a: Any, backend: str, redis_url: str = "", **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.backend = backend
        self.redis_url = redis_url
        self.name = "stirgate" if backend == "memory" else "stirgate-redis"
        self.label = f"stirgate (state: {backend})"

    def config_text(self) -> str:
        policies = self.workdir / "state-policies.yaml"
        policies.write_text(CHAIN)
        state = f"state: {{backend: redis, url: \"{self.redis_url}\"}}\n" if self.backend == "redis" else ""
        return super().config_text() + f"policies: {policies}\n{state}"


def redis_cpu(server: Redis) -> float:
    assert server.proc is not None
    return tree_cpu(server.proc.pid)[0]


def run_state(args: argparse.Namespace, rundir: Path, pki: Pki, uac: Addr, uas: Addr, listen: Addr) -> dict[str, Any]:
    mode = MODES["verify"]
    redis = Redis().start()
    print(f"state: redis-server on {redis.url} (PID {redis.proc.pid if redis.proc else '?'})", flush=True)
    suts = {
        backend: StirgateWithState(listen, uas, [uac], rundir, backend=backend, redis_url=redis.url,
                                   log_level=args.log_level)
        for backend in ("memory", "redis")
    }
    for sut in suts.values():
        sut.set_mode(mode, pki)
    from .modes import write_identity_pool

    def identities(i: int, stepdir: Path, calls: int) -> list[str]:
        path = stepdir / f"identities-uac{i}.csv"
        write_identity_pool(pki, path, calls)
        return ["-inf", str(path)]

    rate = args.common_rate
    steps: dict[str, list[StepResult]] = {"memory": [], "redis": []}
    redis_us: list[float] = []
    diffs: list[float] = []
    try:
        for k in range(max(1, args.pairs)):
            pair: dict[str, StepResult] = {}
            order = list(suts.items()) if k % 2 == 0 else list(suts.items())[::-1]  # second steps ran slower
            for backend, sut in order:
                d = rundir / "state" / f"{k + 1:02d}-{backend}"
                before = redis_cpu(redis)
                r = run_step(sut, rate, args.duration, d, uac_addrs=[uac], uas_addr=uas, drain=args.drain,
                             busy_wait=args.busy_wait, tail=3.0, mode="state", scenario=mode.uac_scenario,
                             uac_args=identities)
                print(f"  [{backend}] " + r.summary(), flush=True)
                steps[backend].append(r)
                pair[backend] = r
                if backend == "redis" and r.successful:
                    redis_us.append((redis_cpu(redis) - before) / r.successful * 1e6)
            m, rd = pair["memory"], pair["redis"]
            if m.clean and rd.clean and m.cpu_us_per_call and rd.cpu_us_per_call:
                diffs.append(rd.cpu_us_per_call - m.cpu_us_per_call)
                print(f"  pair {k + 1}: redis adds {diffs[-1]:+.1f} us per call", flush=True)
            time.sleep(1)
    finally:
        redis.cleanup()
    out: dict[str, Any] = {
        "rate_cps": rate,
        "chain": "replay + velocity(orig_tn, calls) + velocity(origid, destinations)",
        "memory_us": [s.cpu_us_per_call for s in steps["memory"]],
        "redis_us": [s.cpu_us_per_call for s in steps["redis"]],
        "added_us_pairs": [round(x, 1) for x in diffs],
        "added_us_median": round(statistics.median(diffs), 1) if diffs else None,
        "redis_server_us_per_call": [round(x, 1) for x in redis_us],
        "target_added_us_max": 25,
    }
    added = out["added_us_median"]
    print(f"\nstate backend at {rate:.0f} cps: Redis adds {'n/a' if added is None else f'{added:+.1f}'} us per "
          f"call (pairs {out['added_us_pairs']}); redis-server itself {out['redis_server_us_per_call']} us per call")
    return out
