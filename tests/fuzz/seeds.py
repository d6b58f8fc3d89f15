"""Seed inputs: every RFC 4475 and hand-made malformed message, plus call flows for the engine target."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

# Well-formed messages of each kind (what the hand-made sets lack): INVITE, in-dialog requests, responses.
_EXTRA = [
    b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bKo1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.10>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: o1\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\ni: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKf022ed2;rport\r\n"
    b"From: <sip:+12125550100@127.0.0.1>;tag=f022ed1\r\nTo: <sip:15551234567@127.0.0.20>;tag=bt1\r\n"
    b"Call-ID: f022ed-3\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.20:5060>\r\nContent-Length: 0\r\n\r\n",
]


def messages() -> list[bytes]:
    """The raw messages of tests/data/rfc4475 and tests/data/malformed (every .dat), then a few well-formed ones."""
    out = [p.read_bytes() for d in ("rfc4475", "malformed") for p in sorted((DATA / d).glob("*.dat"))]
    from tests.unit.core.sipfake import Caller, Harness  # lazily: imports proxy

    h = Harness()
    c = Caller(h)
    out.append(c.invite(extra=["Identity: abc;info=<https://127.0.0.1:8443/sp.pem>;alg=ES256;ppt=shaken"]))
    c.remote_tag = "bt1"
    out += [c.cancel(), c.ack(), c.request("BYE"), c.request("INFO"), c.request("INVITE")]
    return out + _EXTRA


def parser_seeds() -> list[bytes]:
    return messages()


def stream_seeds() -> list[bytes]:
    msgs = [m for m in messages() if b"\r\n\r\n" in m]
    out = []
    for i, m in enumerate(msgs):
        out.append(bytes([3 | (i << 2) & 0xFC, i % 7]) + m)
    for i in range(0, len(msgs) - 1, 2):  # pipelined pairs with keep-alives in between, small max_size too
        out.append(bytes([(i << 2) & 0xFC | (i // 2) % 4, 9]) + b"\r\n\r\n" + msgs[i] + b"\r\n" + msgs[i + 1])
    return out


def engine_seeds() -> list[bytes]:
    from .targets import A_SIDE, B_SIDE, RAW, REPLY, encode_ops

    def a(action: int, extra: bytes = b"", step: int = 0, src: int = 0) -> tuple[int, int, int, bytes]:
        return (A_SIDE, step, src, bytes([action]) + extra)

    def r(code: int, which: int = 0, extra: bytes = b"", step: int = 0) -> tuple[int, int, int, bytes]:
        # code is an index into targets.CODES: 0=100 1=180 2=183 3=200 ... 11=486 16=503
        return (REPLY, step, 0, bytes([code, which]) + extra)

    def b(method: int, step: int = 0) -> tuple[int, int, int, bytes]:
        return (B_SIDE, step, 0, bytes([method]))

    flows = [
        [a(0), r(1), r(3), a(3), a(4), r(3)],                      # customer call: 180, 200, ACK, BYE, 200
        [a(0), r(1), r(3), a(3), b(0), r(3)],                      # the carrier hangs up
        [a(0), r(2), a(2), r(3, 0), r(12, 1)],                     # CANCEL while early: 200 CANCEL, 487
        [a(0), r(16), r(1), r(3), a(3), a(5), r(3), a(4), r(3)],   # 503 -> failover, re-INVITE, BYE
        [a(0, src=1), r(1), r(3), a(3), a(6), r(3), a(4), r(3)],   # carrier -> customer (verified), INFO
        [a(0), r(3), a(3), b(1), r(3), a(4)],                      # B re-INVITE, then A BYE, B silent
        [a(0), r(3), (A_SIDE, 6, 0, b"\x04")],                     # 2xx never ACKed: ack timeout
        [a(0, b"Identity: x;info=<https://127.0.0.1:8443/sp.pem>;alg=ES256;ppt=shaken"), r(11), a(3)],
        [a(0, src=1, extra=b"Identity: abc.def.ghi;info=<https://127.0.0.1:8443/sp.pem>;alg=ES256;ppt=shaken"),
         r(3), a(3), a(4), r(3)],
        [a(0), (A_SIDE, 7, 0, b"\x01")],                           # no answer at all: failover, timeouts
        [a(0), r(1), a(4), r(3)],                                  # BYE on the early dialog
        [a(8), a(0), a(1), r(0), a(1), r(9)],                      # OPTIONS, retransmitted INVITE, 408
    ]
    out = [encode_ops(f) for f in flows]
    for i, m in enumerate(messages()):  # every message raw from a trunk, an unknown address and TCP
        out.append(encode_ops([(RAW, 0, (0, 1, 2, 3)[i % 4], m)]))
        out.append(encode_ops([a(0), (RAW, 1, 1, m), r(3), a(3), (RAW, 0, 0, m)]))
    return out


SEEDS = {"parser": parser_seeds, "engine": engine_seeds, "stream": stream_seeds}


def write_seeds(target: str, directory: Path) -> int:
    """Write the seeds of `target` into `directory` (named by content hash, so rewriting is idempotent)."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for s in seeds:
        (directory / ("seed-" + hashlib.sha1(s).hexdigest())).write_bytes(s)
    return len(seeds)
