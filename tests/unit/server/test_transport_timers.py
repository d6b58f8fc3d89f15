"""The transport fires the engine's timers while traffic keeps flowing (real UDP sockets on loopback).

Regression: the timer handle used to be re-armed 10 ms later on every message once a deadline was due, so under
steady traffic (a message every few ms) no timer fired: no retransmission, no failover, transactions never
expired. Here a caller keeps a stream of OPTIONS going while an INVITE waits on a carrier that never answers;
the carrier must still see timer A's retransmission of that INVITE.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.transport import SipServer

CALLER = "127.0.0.10"
CARRIER = "127.0.0.20"


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _request(method: str, port: int, n: int) -> bytes:
    return (
        f"{method} sip:12025550199@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER}:5999;branch=z9hG4bK-timers-{n}\r\n"
        f"From: <sip:+12025550100@{CALLER}>;tag=t{n}\r\nTo: <sip:12025550199@127.0.0.1>\r\n"
        f"Call-ID: timers-{n}@{CALLER}\r\nCSeq: 1 {method}\r\nContact: <sip:caller@{CALLER}:5999>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def _scenario() -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    port = _free_udp_port("127.0.0.1")
    carrier = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    carrier.bind((CARRIER, 0))
    carrier.setblocking(False)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((CALLER, 0))
    caller.setblocking(False)
    config = load_config_text(f"""
listen: [udp:127.0.0.1:{port}]
trunks:
  - {{name: customer, role: customer, sources: [{CALLER}], destination: "{CALLER}:5999", transport: udp}}
  - {{name: carrier, role: carrier, sources: [{CARRIER}], destination: "{CARRIER}:{carrier.getsockname()[1]}",
     transport: udp}}
routes:
  - {{from: [customer], prefix: "", trunks: [carrier]}}
sip: {{failover_timeout: 30}}
""", "<test>")
    engine = Engine(config, {"udp": ("127.0.0.1", port)})
    server = SipServer(engine, loop)
    await server.start([("udp", "127.0.0.1", port)], reuse_port=False)
    invites_at_carrier = 0
    options_sent = 0
    try:
        caller.sendto(_request("INVITE", port, 0), ("127.0.0.1", port))
        deadline = loop.time() + 5.0  # timer A is 0.5 s: far inside this bound when timers fire
        while invites_at_carrier < 2 and loop.time() < deadline:
            options_sent += 1
            caller.sendto(_request("OPTIONS", port, options_sent), ("127.0.0.1", port))
            await asyncio.sleep(0.002)  # steady traffic: a message every ~2 ms, never a 10 ms gap
            while True:
                try:
                    data = carrier.recv(65536)
                except BlockingIOError:
                    break
                if data.startswith(b"INVITE "):
                    invites_at_carrier += 1
            while True:  # the OPTIONS answers
                try:
                    caller.recv(65536)
                except BlockingIOError:
                    break
    finally:
        server.close()
        carrier.close()
        caller.close()
    return invites_at_carrier, options_sent


def test_timers_fire_under_steady_traffic() -> None:
    invites, options = uvloop.run(_scenario())
    assert options > 100  # the traffic really was steady for the whole wait
    assert invites >= 2, "timer A never retransmitted the INVITE while messages kept arriving"


class _Handle:
    def __init__(self, at: float) -> None:
        self.at = at
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """Just what SipServer.flush and on_message use: a settable clock and call_at."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.armed: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, _callback: object) -> _Handle:
        handle = _Handle(at)
        self.armed.append(handle)
        return handle


def test_a_due_timer_is_not_pushed_back_by_each_message() -> None:
    """The regression itself, deterministically: a deadline has passed and its callback is armed (10 ms
    coalescing, plus the last-bit rounding that made `deadline < armed - 10 ms` true); every message that
    arrives before the callback runs must leave it where it is."""
    port = 5999
    config = load_config_text(f"""
listen: [udp:127.0.0.1:{port}]
trunks:
  - {{name: customer, role: customer, sources: [{CALLER}], destination: "{CALLER}:5999", transport: udp}}
  - {{name: carrier, role: carrier, sources: [{CARRIER}], destination: "{CARRIER}:5060", transport: udp}}
routes:
  - {{from: [customer], prefix: "", trunks: [carrier]}}
""", "<test>")
    engine = Engine(config, {"udp": ("127.0.0.1", port)})
    loop = _Loop(1000.0)
    server = SipServer(engine, loop)  # type: ignore[arg-type]
    server.on_message(_request("INVITE", port, 0), ("udp", CALLER, 5999))
    deadline = engine.next_deadline()
    assert deadline is not None and loop.armed
    # The callback is armed just after the deadline, as if `(d + 0.01) - 0.01` had rounded up past d.
    server._timer_at = deadline + 0.01 + 1e-9
    loop.now = deadline + 0.001
    armed_before = len(loop.armed)
    for n in range(1, 50):  # a message every 0.1 ms until the armed time: none may move the callback later
        loop.now += 0.0001
        server.on_message(_request("OPTIONS", port, n), ("udp", CALLER, 5999))
    later = [h.at for h in loop.armed[armed_before:] if h.at > deadline + 0.01 + 1e-9]
    assert later == [], f"the due timer was pushed back {len(later)} times"
