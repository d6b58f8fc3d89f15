"""Drive the sans-I/O engine with N synthetic calls in memory; print the CPU cost per call (no sockets)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from proxy.config import Config, load_config_text
from proxy.engine import Engine
from proxy.server import _tune_gc
from proxy.sip.message import parse

A = ("udp", "127.0.0.10", 5060)
B = ("udp", "127.0.0.20", 5060)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.10\r\ns=-\r\nc=IN IP4 127.0.0.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def invite(i: int) -> bytes:
    return (
        f"INVITE sip:15551234567@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-{i}-1\r\n"
        f"From: sipp <sip:sipp@127.0.0.10:5060>;tag={i}SIPpTag00\r\nTo: <sip:15551234567@127.0.0.1:5060>\r\n"
        f"Call-ID: {i}-call@127.0.0.10\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.10:5060\r\nMax-Forwards: 70\r\n"
        f"Subject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
    ).encode() + SDP


def answer(req: bytes, code: int, reason: str, body: bytes = b"") -> bytes:
    m = parse(req)
    hs = "".join(f"{h.raw}\r\n" for h in m.headers if h.key in ("via", "from", "call-id", "cseq"))
    to = m.header("to") or ""
    if code > 100 and ";tag=" not in to:
        to += ";tag=uas1"
    return (
        f"SIP/2.0 {code} {reason}\r\n{hs}To: {to}\r\nContact: <sip:127.0.0.20:5060>\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def plain_loopback() -> Config:
    """examples/loopback.yaml without STIR: the SIP core's own cost (sign/verify are measured apart)."""
    data = yaml.safe_load(Path("examples/loopback.yaml").read_text())
    data.pop("stir", None)
    for trunk in data["trunks"]:
        trunk.pop("sign", None)
    return load_config_text(yaml.safe_dump(data), "examples/loopback.yaml")


def main(n: int) -> None:
    cfg = plain_loopback()
    e = Engine(cfg, {"udp": ("127.0.0.1", 5060)})
    _tune_gc()  # as `stirgate run` does
    # Pre-build the B side's answers outside the timed part would need the B-leg's ids; build them inline
    # but time only engine.receive.
    spent = 0.0
    now = 0.0
    for i in range(n):
        now += 0.0005
        t = time.thread_time()
        e.receive(invite(i), A, now)
        spent += time.thread_time() - t
        binv = e.outbox[-1][0]
        e.outbox.clear()
        r180, r200 = answer(binv, 180, "Ringing"), answer(binv, 200, "OK", SDP)
        t = time.thread_time()
        e.receive(r180, B, now)
        e.receive(r200, B, now)
        spent += time.thread_time() - t
        a200 = parse(e.outbox[-1][0])
        e.outbox.clear()
        to = a200.header("to")
        ack = (f"ACK sip:x@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-{i}-2\r\n"
               f"From: sipp <sip:sipp@127.0.0.10:5060>;tag={i}SIPpTag00\r\nTo: {to}\r\nCall-ID: {i}-call@127.0.0.10\r\n"
               f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(b"-2\r\n", b"-3\r\n")
        t = time.thread_time()
        e.receive(ack, A, now)
        e.receive(bye, A, now)
        spent += time.thread_time() - t
        bbye = e.outbox[-1][0]
        e.outbox.clear()
        r = answer(bbye, 200, "OK")
        t = time.thread_time()
        e.receive(r, B, now)
        e.handle_timer(now)
        spent += time.thread_time() - t
        e.outbox.clear()
    print(f"{n} calls, engine CPU {spent / n * 1e6:.1f} us/call, live txns {len(e.txns)}, calls {len(e.calls)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
