"""What held calls keep after re-INVITEs, in memory: N bench calls held through the engine (INVITE, 200, ACK, no
BYE), then waves of re-INVITEs (each call one re-INVITE, answered, ACKed, at --rate), every transaction expired
after each wave. Printed after each wave: the process's RSS (also before the transactions expired) and, with
--trace, the memory tracemalloc sees per call.

    python -m bench.reinvite_memory                       # 20,000 calls, 12 waves: RSS after each
    python -m bench.reinvite_memory --calls 5000 --trace  # with traced memory (slower): what the engine keeps

Traced memory that stays flat while RSS grows is the allocator's high-water mark (one wave's transactions alive
at once), not something a dialog keeps; the live figure is `python -m bench --mode concurrency --quick --sut
stirgate --hold-reinvite during`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.server import tune_gc
from proxy.sip.message import parse

from .concurrency import tree_memory
from .engine_calls import LOCAL, SDP, UAC, UAS, _take, _uac_request, _uas_response, config_text

TARGET = "sip:127.0.0.1:5060"  # the engine's Contact towards the UAC


def rss_kb() -> int:
    return tree_memory(os.getpid())[0]


def exchange(engine: Engine, i: int, cseq: int, now: float, to_tag: str = "") -> str:
    """One INVITE (initial without `to_tag`, else a re-INVITE), its 200 from the UAS and the ACK; the To-tag."""
    ruri = TARGET if to_tag else "sip:12025550199@127.0.0.1:5060"
    engine.receive(_uac_request("INVITE", i, cseq, ruri, to_tag), UAC, now)
    b_invite = _take(engine, b"INVITE ")
    engine.outbox.clear()
    engine.receive(_uas_response(b_invite, 200, "OK", SDP), UAS, now)
    answer = parse(_take(engine, b"SIP/2.0 200"))
    engine.outbox.clear()
    to_tag = to_tag or f";tag={answer.to_tag}"
    engine.receive(_uac_request("ACK", i, cseq, TARGET, to_tag), UAC, now)
    _take(engine, b"ACK ")
    engine.outbox.clear()
    engine.handle_timer(now)
    return to_tag


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--waves", type=int, default=12)
    ap.add_argument("--rate", type=float, default=1000.0, help="calls (and re-INVITEs) per second")
    ap.add_argument("--trace", action="store_true", help="tracemalloc on: what the engine's objects hold")
    a = ap.parse_args(argv)
    engine = Engine(load_config_text(config_text(None), "<bench>"), LOCAL)
    engine.wall_offset = time.time()
    tune_gc()  # as `stirgate run` does
    if a.trace:
        tracemalloc.start()
    step = 1.0 / a.rate
    now = 0.0
    tags = []
    for i in range(a.calls):
        now += step
        tags.append(exchange(engine, i, 1, now))

    def expire() -> None:
        """Every transaction ends (64*T1 = 32 s later); the calls stay."""
        engine.handle_timer(now + 60.0)
        engine.outbox.clear()
        assert len(engine.txns) == 0 and len(engine.calls) == 2 * a.calls, (len(engine.txns), len(engine.calls))

    def report(label: str, before: int | None, alive_kb: int = 0) -> int:
        traced = tracemalloc.get_traced_memory()[0] if a.trace else 0
        line = f"{label:>8}: RSS {rss_kb() / 1024:7.1f} MiB"
        if alive_kb:
            line += f" (with the wave's transactions alive: {alive_kb / 1024:7.1f} MiB)"
        if a.trace:
            line += f", traced {traced / a.calls:6.0f} B per held call"
            if before is not None:
                line += f" ({(traced - before) / a.calls:+.0f})"
        print(line, flush=True)
        return traced

    expire()
    traced = report("held", None)
    for wave in range(a.waves):
        now += 60.0
        for i in range(a.calls):
            now += step
            exchange(engine, i, 2 + wave, now, tags[i])
        alive_kb = rss_kb()
        expire()
        traced = report(f"wave {wave + 1}", traced, alive_kb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
