"""The policy path alone, replayed: what the campaign profile costs per call without the SIP engine around it.

`bench.campaigns` measures the whole engine with and without a policy file (the figure that counts), but the
two engines' difference is a few percent of their CPU and the development machine is shared and loaded, so
small changes drown in its noise. This tool plays the seeded campaign traffic through the engine once,
recording every step of the policy path as the engine walks it (the context's inputs, the chain's observe, the
state ops, evaluate, the calls' ends, in order), then replays only those steps against a fresh state store:
the same calls, the same order, nothing else on the clock. The replay checks that every decision (outcome and
note) is the one the engine made, so it also guards behaviour while the path is made faster.

    python -m bench.policy_path                                  # 6 h, 20,000 calls, the shipped profile
    python -m bench.policy_path --repeat 5 --hours 2 --scale 8000
    valgrind --tool=callgrind python -m bench.policy_path --repeat 1 --hours 1 --scale 3000   # instructions

Reports CPU per call of each part (context build, observe, state store, evaluate with the engine's step list,
ended), best of `--repeat` replays.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from policies.base import CallContext, CallOutcome
from policies.chain import Chain
from policies.loader import load_policies
from policies.state import MemoryStore

from .campaigns import default_policies, play
from .traffic import generate

__all__ = ["Recording", "record", "replay"]


class Recording:
    """The policy path of one played traffic: events in the engine's order."""

    def __init__(self) -> None:
        #: ("judge", chain, build kwargs, outcome, note of each step) | ("end", chain, judge index, outcome, now)
        self.events: list[tuple[Any, ...]] = []
        self.calls = 0


def _build_args(ctx: CallContext) -> dict[str, Any]:
    """What the engine passed to `CallContext.build` for this context (the headers it kept, in order)."""
    return {"call_id": ctx.call_id, "trunk": ctx.trunk, "trunk_role": ctx.trunk_role,
            "source": (ctx.source_ip, ctx.source_port), "orig": ctx.orig, "dest": ctx.dest,
            "display_name": ctx.display_name, "verification": ctx.verification,
            "headers": [(k, v) for k, values in ctx.headers.items() for v in values], "now": ctx.now,
            "orig_tn": ctx.orig_tn, "dest_tn": ctx.dest_tn}


@contextlib.contextmanager
def _recording(rec: Recording, header_names: list[frozenset[str]]) -> Iterator[None]:
    """Wrap the chain's and the store's entry points (the compiled engine calls them through their classes; the
    context is built natively, so its arguments are read back from it)."""
    observe, evaluate, ended = Chain.observe, Chain.evaluate, Chain.ended
    record_ops = MemoryStore.record
    index: dict[int, int] = {}
    pending: list[list[Any]] = []

    def observe_w(self: Chain, ctx: CallContext) -> Any:
        index[id(ctx)] = len(rec.events)
        kw = _build_args(ctx)
        kw["header_names"] = header_names[0]
        rec.events.append(("judge", self, kw, None, None))
        return observe(self, ctx)

    def evaluate_w(self: Chain, ctx: CallContext, *a: Any, **kw: Any) -> Any:
        result = evaluate(self, ctx, *a, **kw)
        i = index[id(ctx)]
        rec.events[i] = ("judge", self, rec.events[i][2], result.decision.outcome,
                         tuple((s.decision.outcome, s.decision.note) for s in result.steps))
        return result

    def ended_w(self: Chain, ctx: CallContext, outcome: CallOutcome) -> Any:
        ops = ended(self, ctx, outcome)
        event = ["end", self, index[id(ctx)], outcome, None]
        rec.events.append(event)  # type: ignore[arg-type]
        if ops:
            pending.append(event)
        return ops

    def record_w(self: MemoryStore, ops: Any, now: float) -> None:
        if pending:
            pending.pop()[4] = now
        record_ops(self, ops, now)

    Chain.observe, Chain.evaluate, Chain.ended = observe_w, evaluate_w, ended_w  # type: ignore[method-assign]
    MemoryStore.record = record_w  # type: ignore[method-assign]
    try:
        yield
    finally:
        Chain.observe, Chain.evaluate, Chain.ended = observe, evaluate, ended  # type: ignore[method-assign]
        MemoryStore.record = record_ops  # type: ignore[method-assign]
        rec.events = [tuple(e) for e in rec.events]


def record(hours: float, scale: int, seed: int, policies: str | Path) -> Recording:
    traffic = generate(seed, hours, scale)
    rec = Recording()
    rec.calls = len(traffic.calls)
    names = [load_policies(policies).header_names]
    with _recording(rec, names):
        play(traffic, policies)
    return rec


def replay(rec: Recording, check: bool = True, evict_kb: int = 0) -> dict[str, float]:
    """One replay on a fresh store: seconds of process CPU per part. Raises when a decision differs.

    `evict_kb`: copy that many KiB between two steps (untimed), pushing the policy path's tables and code out of
    the CPU caches as the engine's SIP handling does between calls (inside the engine each part costs 2-4 times
    what it costs replayed back to back)."""
    clock = time.process_time
    src, dst = bytearray(evict_kb * 1024), bytearray(evict_kb * 1024)
    store = MemoryStore()
    execute = store.execute
    record_ops = store.record
    build = CallContext.build
    parts = dict.fromkeys(("context", "observe", "state", "evaluate", "ended"), 0.0)
    contexts: list[CallContext | None] = [None] * len(rec.events)
    for i, event in enumerate(rec.events):
        if evict_kb:
            dst[:] = src
        if event[0] == "judge":
            _, chain, kw, outcome, steps = event
            kw = dict(kw)
            kw["headers"] = iter(kw["headers"])
            c0 = clock()
            ctx = build(**kw)
            c1 = clock()
            request = chain.observe(ctx)
            c2 = clock()
            facts = None
            if request is not None:
                facts = request.facts(execute(request.ops, ctx.now) if request.ops else [])
            c3 = clock()
            result = chain.evaluate(ctx, facts, "open")
            decisions = [(s.name, s.mode, s.decision.outcome, s.decision.note) for s in result.steps]
            c4 = clock()
            parts["context"] += c1 - c0
            parts["observe"] += c2 - c1
            parts["state"] += c3 - c2
            parts["evaluate"] += c4 - c3
            contexts[i] = ctx
            if check and (result.decision.outcome != outcome
                          or tuple((d[2], d[3]) for d in decisions) != steps):
                raise AssertionError(f"event {i}: {decisions} != {steps}")
        else:
            _, chain, j, outcome, now = event
            ctx = contexts[j]
            assert ctx is not None
            c0 = clock()
            ops = chain.ended(ctx, outcome)
            if ops:
                record_ops(ops, now)
            parts["ended"] += clock() - c0
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.policy_path", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--scale", type=int, default=20_000)
    ap.add_argument("--policies", default=None, help="policy file (default: the shipped campaign profile)")
    ap.add_argument("--repeat", type=int, default=3, help="replays; the best of each part is reported")
    ap.add_argument("--evict-kb", type=int, default=0,
                    help="KiB copied between steps (untimed) to evict the CPU caches as the SIP path does")
    args = ap.parse_args(argv)
    rec = record(args.hours, args.scale, args.seed, args.policies or default_policies())
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, v in replay(rec, evict_kb=args.evict_kb).items():
            best[k] = min(best.get(k, v), v)
    n = rec.calls
    us = {k: v / n * 1e6 for k, v in best.items()}
    evicted = f", {args.evict_kb} KiB evicted between steps" if args.evict_kb else ""
    print(f"policy path, {n:,} calls, best of {args.repeat}{evicted}, us/call: "
          + ", ".join(f"{k} {v:.1f}" for k, v in us.items()) + f"; total {sum(us.values()):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
