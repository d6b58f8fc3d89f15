"""What HEP capture adds to a call's CPU, in memory: the bench call of `bench.engine_calls` replayed through the
engine, with every message in and out also handed to `proxy.capture.HepSender` as the transport does
(correlation id from the engine's parse or the sender the engine noted, and the call table, HEPv3 encoding, and
for `udp` one datagram per copy to a local sink socket that a drain empties between calls).

    python -m bench.hep_cost                 # engine alone, + capture without sending, + over UDP, + over TCP

Repeatable on a busy machine (process CPU time, best of --rounds): the live figure is `make bench BENCH_ARGS=
"--mode relay,hep,hep-tcp --sut stirgate"`. Over TCP the copies are written in batches (256 kB, a write every
~30 calls) to a real `bench.hep_sink`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

import uvloop

from proxy.capture import HepSender
from proxy.config import HepSettings, load_config_text
from proxy.engine import Engine
from proxy.hep import IPPROTO_UDP
from proxy.server import tune_gc
from proxy.sip.message import parse
from proxy.sip.transaction import Target
from tests.services import free_tcp_port

from .engine_calls import LOCAL, SDP, UAC, UAS, _take, _uac_request, _uas_response, config_text


def run(calls: int, rate: float, mode: str, tcp_sink: str = "") -> float:
    """CPU seconds for `calls` calls; mode: off | encode (capture, nothing sent) | udp | tcp (to `tcp_sink`,
    host:port of a `bench.hep_sink --transport tcp`; the buffer's writes are timed where they happen, in the
    capture of the copy that fills it)."""
    engine = Engine(load_config_text(config_text(None), "<bench>"), LOCAL)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sink.setblocking(False)
    loop = uvloop.new_event_loop()
    address = tcp_sink if mode == "tcp" else f"127.0.0.1:{sink.getsockname()[1]}"
    sender = HepSender(HepSettings(address=address, transport="tcp" if mode == "tcp" else "udp"), loop,
                       b_leg_prefix=engine.b_leg_call_id_prefix.encode())  # as the transport makes it
    if mode != "off":  # as the engine and transport are set up with `hep:` configured
        engine.note_for_capture()
        engine.call_end_hooks.append(sender.call_ended)
    senders = engine.txns.senders
    if mode in ("udp", "tcp"):
        sender.start()
    if mode == "tcp":
        async def connected() -> None:
            while not sender.connected:
                await asyncio.sleep(0.01)
        loop.run_until_complete(asyncio.wait_for(connected(), 10.0))
    encode_only = mode == "encode"
    local = LOCAL["udp"]
    tune_gc()
    clock = time.process_time
    cpu = 0.0

    def receive(data: bytes, source: Target, now: float) -> list[bytes]:
        """engine.receive plus what the transport does for capture; returns the messages sent."""
        engine.receive(data, source, now)
        out = [d for d, _ in engine.outbox]
        if mode != "off":
            corr = sender.received_correlation(data, engine.received_call_id, engine.calls)
            if encode_only:
                sender.encoder.encode(data, IPPROTO_UDP, source[1], source[2], local[0], local[1], 1, 2, corr)
            else:
                sender.capture(data, IPPROTO_UDP, source[1], source[2], local[0], local[1], corr)
            assert senders is not None and len(senders) == len(engine.outbox)
            for (d, target), who in zip(engine.outbox, senders, strict=True):
                corr = sender.sent_correlation(d, who, engine.calls)
                if encode_only:
                    sender.encoder.encode(d, IPPROTO_UDP, local[0], local[1], target[1], target[2], 1, 2, corr)
                else:
                    sender.capture(d, IPPROTO_UDP, local[0], local[1], target[1], target[2], corr)
        return out

    def drop() -> None:
        """The turn's messages are out (as the transport's flush)."""
        engine.outbox.clear()
        if senders is not None:
            senders.clear()

    step = 1.0 / rate
    now = 0.0
    for i in range(calls):
        now += step
        t = clock()
        receive(_uac_request("INVITE", i, 1, "sip:12025550199@127.0.0.1:5060"), UAC, now)
        cpu += clock() - t
        b_invite = _take(engine, b"INVITE ")
        drop()
        ok = _uas_response(b_invite, 200, "OK", SDP)
        t = clock()
        receive(ok, UAS, now + 0.0002)
        cpu += clock() - t
        a_ok = parse(_take(engine, b"SIP/2.0 200"))
        drop()
        to_tag = f";tag={a_ok.to_tag}"
        t = clock()
        receive(_uac_request("ACK", i, 1, "sip:127.0.0.1:5060", to_tag), UAC, now + 0.0004)
        drop()
        receive(_uac_request("BYE", i, 2, "sip:127.0.0.1:5060", to_tag), UAC, now + 0.0005)
        cpu += clock() - t
        b_bye = _take(engine, b"BYE ")
        drop()
        t = clock()
        receive(_uas_response(b_bye, 200, "OK"), UAS, now + 0.0007)
        engine.handle_timer(now + 0.0008)
        cpu += clock() - t
        drop()
        # What the kernel did not take at once goes out (outside the measured time). Every mode runs this loop
        # turn, as a live server does between messages: it evicts some of the engine's data from the caches, and
        # running it for TCP only charged TCP ~30 us per call of misses the other modes did not have.
        loop.run_until_complete(asyncio.sleep(0))
        while True:  # the sink keeps up (outside the measured time)
            try:
                sink.recv(65536)
            except BlockingIOError:
                break
    t = clock()
    engine.handle_timer(now + 60.0)
    cpu += clock() - t
    assert engine.stats["calls_ended"] == calls, engine.stats
    if mode == "tcp":
        t = clock()
        sender.flush()  # the last copies, as the flush timer would
        cpu += clock() - t
    if mode in ("udp", "tcp"):
        assert sender.sent >= 10 * calls and sender.dropped == 0, (sender.sent, sender.dropped)
    sender.close()
    loop.close()
    sink.close()
    return cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per mode")
    a = ap.parse_args(argv)
    run(min(a.calls, 2000), a.rate, "udp")  # warm-up
    port = free_tcp_port()
    tcp_sink = subprocess.Popen([sys.executable, "-m", "bench.hep_sink", "--listen", f"127.0.0.1:{port}",
                                 "--transport", "tcp"], stdout=subprocess.PIPE)
    try:
        assert tcp_sink.stdout is not None
        tcp_sink.stdout.readline()  # listening
        modes = ("off", "encode", "udp", "tcp")
        got: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(a.rounds):  # interleaved: a host that drifts weighs on every mode alike
            for mode in modes:
                got[mode].append(run(a.calls, a.rate, mode, f"127.0.0.1:{port}") / a.calls * 1e6)
    finally:
        tcp_sink.terminate()
        tcp_sink.wait()
    best = {m: min(v) for m, v in got.items()}
    base = best["off"]
    print(f"engine alone:                       {base:6.1f} µs per call")
    for mode, what in (("encode", "+ capture, not sent"), ("udp", "+ capture over UDP"),
                       ("tcp", "+ capture over TCP")):
        print(f"{what:35s} {best[mode]:6.1f} µs per call ({best[mode] - base:+.1f} µs; "
              f"{(best[mode] - base) / base * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
