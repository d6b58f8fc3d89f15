"""RFC 5626 3.5.1 keep-alives on a stream connection stirgate opened (TCP here; TLS shares the code): after
`keepalive_interval` quiet seconds a CRLFCRLF ping goes out; a CRLF pong keeps the connection; no pong within
`keepalive_timeout` closes it (counted). Real sockets on loopback: stirgate's SipServer and a peer in the test."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.transport import SipServer

CALLER = "127.0.0.10"
CARRIER = "127.0.0.20"


def _free(host: str, kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _recv_until(loop: asyncio.AbstractEventLoop, conn: socket.socket, want: bytes, seconds: float) -> bytes:
    data = b""
    deadline = loop.time() + seconds
    while want not in data:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), left)
        except TimeoutError:
            break
        if not chunk:
            return data + b"<EOF>"
        data += chunk
    return data


async def _scenario(pong_first: bool = True) -> tuple[bytes, bytes, bytes, int]:
    """A call's INVITE makes stirgate dial the carrier; the carrier answers the first ping with a pong (or never
    answers any, as SIPp) and then stays silent."""
    loop = asyncio.get_running_loop()
    port = _free("127.0.0.1", socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.bind((CARRIER, 0))
    peer.listen(1)
    peer.setblocking(False)
    config = load_config_text(f"""
listen: [udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}]
sip: {{failover_timeout: 60, keepalive_interval: 1.0, keepalive_timeout: 1.0}}
trunks:
  - {{name: customer, role: customer, sources: [{CALLER}], destination: "{CALLER}:5999", transport: udp}}
  - {{name: carrier, role: carrier, sources: [{CARRIER}], destination: "{CARRIER}:{peer.getsockname()[1]}",
     transport: tcp}}
routes:
  - {{from: [customer], prefix: "", trunks: [carrier]}}
""", "<test>")
    engine = Engine(config, {"udp": ("127.0.0.1", port), "tcp": ("127.0.0.1", port)})
    server = SipServer(engine, loop)
    await server.start([("udp", "127.0.0.1", port), ("tcp", "127.0.0.1", port)], reuse_port=False)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((CALLER, 0))
    try:
        caller.sendto((
            f"INVITE sip:12025550199@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER}:5999;branch=z9hG4bK-ka-1\r\n"
            f"From: <sip:+12025550100@{CALLER}>;tag=ka\r\nTo: <sip:12025550199@127.0.0.1>\r\n"
            f"Call-ID: ka@{CALLER}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}:5999>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        conn, _ = await asyncio.wait_for(loop.sock_accept(peer), 5)  # stirgate dialled the carrier
        conn.setblocking(False)
        invite = await _recv_until(loop, conn, b"\r\n\r\n", 5)
        first_ping = await _recv_until(loop, conn, b"\r\n\r\n", 5)  # after ~1 s of silence
        if pong_first:
            await loop.sock_sendall(conn, b"\r\n")  # pong: the connection stays
        second_ping = await _recv_until(loop, conn, b"\r\n\r\n", 5)
        if pong_first:
            closed = await _recv_until(loop, conn, b"<never>", 6)  # no pong this time: stirgate closes it
        else:
            # never a pong: the connection is kept (the pings go on), and the kernel's keepalive watches it
            closed = await _recv_until(loop, conn, b"\r\n\r\n", 5)
            (kept,) = server.connections.values()
            sock = kept.transport.get_extra_info("socket") if kept.transport is not None else None
            assert sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
            assert engine.stats["keepalive_unanswered"] == 1
        conn.close()
    finally:
        server.close()
        peer.close()
        caller.close()
    return invite, first_ping, second_ping + b"|" + closed, engine.stats["keepalive_timeouts"]


def test_pings_pongs_and_a_dead_peer() -> None:
    invite, first_ping, rest, timeouts = uvloop.run(_scenario())
    assert invite.startswith(b"INVITE ")
    assert first_ping == b"\r\n\r\n"
    second, _, after = rest.partition(b"|")
    assert second == b"\r\n\r\n"
    assert after.endswith(b"<EOF>")
    assert timeouts == 1


def test_a_peer_that_never_answers_pings_keeps_its_connection() -> None:
    """Pongs are optional for a trunk peer (SIPp, some SBCs never send one): its silence after a ping does not
    close the connection its calls run on; TCP keepalive probes, which any TCP stack answers, are set instead."""
    invite, first_ping, rest, timeouts = uvloop.run(_scenario(pong_first=False))
    assert invite.startswith(b"INVITE ")
    assert first_ping == b"\r\n\r\n"
    second, _, third = rest.partition(b"|")
    assert second == b"\r\n\r\n" and third == b"\r\n\r\n"  # still pinged, never closed
    assert timeouts == 0
