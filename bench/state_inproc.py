"""What the Redis state backend adds to a call's CPU, without the SIP sockets: the verify-mode bench call of
`bench.engine_calls` replayed through the engine at `--rate` calls/s in real time on a uvloop loop, the chain of
`bench.state_cost` (replay + two velocity entries, thresholds that never fire) on the UAC's trunk, the state in
memory or in a real redis-server through `proxy.redis_state.RedisState` exactly as a worker wires it.

    python -m bench.state_inproc                      # 8 rounds x 1,000 calls per variant, 1000 cps
    python -m bench.state_inproc --window-ms 0,1,2,5  # the Redis variants: these `state.batch_window_ms`

Process CPU time of the whole run (the loop's wake-ups and idle included, the harness the same in every run), so
the difference between a Redis run and a memory run is what Redis costs this process per call: the RESP written,
the reply read and parsed, the call parked and resumed. redis-server's own CPU is reported beside. This is the
repeatable twin of the live `make bench BENCH_ARGS="--mode state"`, whose SIP steps swing by more than the
target on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable

import uvloop

from policies.loader import load_policies
from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.redis_state import RedisState
from proxy.server import tune_gc
from proxy.sip.message import parse
from proxy.stir.demo_certs import init_demo_certs
from tests.services import Redis

from .engine_calls import (
    LOCAL,
    SDP,
    UAC,
    UAS,
    _identities,
    _prefill_cert_cache,
    _take,
    _uac_request,
    _uas_response,
    config_text,
)
from .procs import tree_cpu
from .state_cost import CHAIN as STATE_COST_CHAIN

#: bench.state_cost's chain, on the trunk the UAC's calls come in on here (`customer`, a carrier trunk).
CHAIN = STATE_COST_CHAIN.replace("\n  carrier:\n", "\n  customer:\n", 1)
assert CHAIN != STATE_COST_CHAIN


class Variant:
    """One engine with its store (memory, or Redis with a batching window), driven call by call on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pki: str, policies: str, redis_url: str | None,
                 window_ms: float) -> None:
        text = config_text(None, pki)
        if redis_url is not None:
            text += f'state: {{backend: redis, url: "{redis_url}", batch_window_ms: {window_ms}}}\n'
        config = load_config_text(text, "<bench>")
        self.name = "memory" if redis_url is None else f"redis, window {window_ms:g} ms"
        self.loop = loop
        self.engine = engine = Engine(config, LOCAL)
        engine.wall_offset = time.time()
        self.policies = load_policies(policies, trunks=[t.name for t in config.trunks],
                                      tn_policy=engine.auth.tn_policy, counters=engine.policy_counters)
        _prefill_cert_cache(engine, pki)
        self.t0 = loop.time()
        self.store: RedisState | None = None
        if redis_url is not None:
            self.store = RedisState(config.state, lambda call_id, results: engine.state_ready(call_id, results,
                                                                                            self.clock()), self.pump)
            engine.state = self.store  # type: ignore[assignment]
        self.cpu = 0.0
        self.calls = 0
        self.target = 0
        self.finished: asyncio.Future[None] | None = None

    def clock(self) -> float:
        return self.loop.time() - self.t0

    def pump(self) -> None:
        """What the transport's flush does with the engine's state requests, and the SIP peers' side of every
        message the engine sent (answer the B-leg INVITE, then ACK, BYE and its 200)."""
        engine, store = self.engine, self.store
        if store is not None and (engine.state_requests or engine.state_writes):
            for call_id, ops, at in engine.state_requests:
                store.submit(call_id, ops, at)
            for ops, at in engine.state_writes:
                store.write(ops, at)
            engine.state_requests.clear()
            engine.state_writes.clear()
        invites = [d for d, _ in engine.outbox if d.startswith(b"INVITE ")]
        engine.outbox.clear()
        for b_invite in invites:
            now = self.clock()
            engine.receive(_uas_response(b_invite, 200, "OK", SDP), UAS, now)
            a_ok = parse(_take(engine, b"SIP/2.0 200"))
            engine.outbox.clear()
            i = int(a_ok.call_id.split("-", 1)[0])
            to_tag = f";tag={a_ok.to_tag}"
            engine.receive(_uac_request("ACK", i, 1, "sip:127.0.0.1:5060", to_tag), UAC, now)
            engine.receive(_uac_request("BYE", i, 2, "sip:127.0.0.1:5060", to_tag), UAC, now)
            b_bye = _take(engine, b"BYE ")
            engine.outbox.clear()
            engine.receive(_uas_response(b_bye, 200, "OK"), UAS, now)
            engine.outbox.clear()
        if store is not None and engine.state_writes:
            for ops, at in engine.state_writes:
                store.write(ops, at)
            engine.state_writes.clear()
        if engine.stats["calls_ended"] >= self.target and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def start_call(self, i: int, identity: str) -> None:
        now = self.clock()
        self.engine.handle_timer(now)
        self.engine.receive(_uac_request("INVITE", i, 1, "sip:12025550199@127.0.0.1:5060", identity=identity),
                            UAC, now)
        self.pump()

    async def segment(self, first: int, identities: list[str], rate: float) -> None:
        """`len(identities)` calls at `rate` (call indexes from `first`), their process CPU added to `cpu`."""
        loop = self.loop
        self.target = self.engine.stats["calls_ended"] + len(identities)
        self.finished = loop.create_future()
        started = time.process_time()
        base = loop.time() + 0.001
        for k, identity in enumerate(identities):
            loop.call_at(base + k / rate, self.start_call, first + k, identity)
        await self.finished
        self.cpu += time.process_time() - started
        self.calls += len(identities)

    def check(self) -> None:
        stats = self.engine.stats
        assert stats["calls_ended"] == self.calls, stats
        assert stats.get("state_errors", 0) == 0, stats


async def interleaved(pki: str, policies: str, redis_url: str, windows: list[float], rounds: int, segment: int,
                      rate: float, server_cpu: Callable[[], float]) -> tuple[list[Variant], float]:
    """Memory and every Redis window in turn, `segment` calls each, `rounds` times: a host that speeds up or
    slows down (a shared VM) weighs on every variant alike. Also returns redis-server's CPU seconds over the
    counted rounds."""
    loop = asyncio.get_running_loop()
    variants = [Variant(loop, pki, policies, None, 0.0)]
    variants += [Variant(loop, pki, policies, redis_url, w) for w in windows]
    for v in variants:
        await v.policies.setup()
        v.engine.policies = v.policies
    for v in variants[1:]:  # connected (and the script cached) before any call is timed
        assert v.store is not None
        v.store.write([], 0.0)
        while v.store.stats["state_batches"] == 0:
            await asyncio.sleep(0.01)
        v.store.stats["state_batches"] = 0
    per_round = segment * len(variants)
    identities = _identities(per_round * (rounds + 1), pki)
    tune_gc()
    n = 0
    for r in range(rounds + 1):  # round 0 warms every variant up and is not counted
        for v in variants:
            await v.segment(n, identities[n:n + segment], rate)
            n += segment
        if r == 0:
            server = server_cpu()
            for v in variants:
                v.cpu, v.calls = 0.0, 0
                v.engine.stats["calls_ended"] = 0
                if v.store is not None:
                    v.store.stats["state_batches"] = 0
    server = server_cpu() - server
    for v in variants:
        if v.store is not None:
            await v.store.close()
    return variants, server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--segment", type=int, default=1000, help="calls per variant per round")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--window-ms", default="0,2", help="comma-separated state.batch_window_ms values")
    a = ap.parse_args(argv)
    windows = [float(w) for w in a.window_ms.split(",")]
    redis = Redis().start()
    assert redis.proc is not None
    try:
        with tempfile.TemporaryDirectory(prefix="stirgate-state-bench-") as d:
            pki = os.path.join(d, "pki")
            init_demo_certs(pki)
            policies = os.path.join(d, "policies.yaml")
            with open(policies, "w") as f:
                f.write(CHAIN)
            pid = redis.proc.pid
            loop = uvloop.new_event_loop()
            variants, server = loop.run_until_complete(
                interleaved(pki, policies, redis.url, windows, a.rounds, a.segment, a.rate,
                            lambda: tree_cpu(pid)[0]))
            loop.close()
    finally:
        redis.cleanup()
    base = variants[0].cpu / variants[0].calls * 1e6
    print(f"{a.rounds} rounds of {a.segment} calls per variant at {a.rate:.0f} calls/s, interleaved; process CPU "
          f"per call (harness included, the same in every variant):")
    print(f"  {variants[0].name:24s} {base:6.1f} us")
    for v in variants[1:]:
        v.check()
        assert v.store is not None
        us = v.cpu / v.calls * 1e6
        print(f"  {v.name:24s} {us:6.1f} us ({us - base:+.1f}); {v.calls / max(1, v.store.stats['state_batches']):.1f}"
              f" calls per batch, {v.engine.stats['state_timeouts']} waited past timeout_ms")
    print(f"redis-server: {server / sum(v.calls for v in variants[1:]) * 1e6:.1f} us per Redis call (all windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
