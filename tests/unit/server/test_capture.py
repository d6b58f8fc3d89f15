"""proxy.capture: the Call-ID found in the bytes, the A-leg correlation, and a sender that never waits (real
sockets on loopback, no SIP)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

from proxy.capture import CORRELATION_GENERATION, TCP_FLUSH_BYTES, HepSender, call_id_of
from proxy.config import HepSettings
from proxy.sip.message import Request, Response
from tests.unit.core.sipfake import (
    SDP_B,
    A,
    B,
    Callee,
    Harness,
    Outs,
    b_invite,
    loopback_config,
    make_engine,
    start_call,
)


@pytest.mark.parametrize(("header", "want"), [
    ("Call-ID: abc@host", b"abc@host"),
    ("call-id:   abc@host  ", b"abc@host"),
    ("i: compact-1", b"compact-1"),
    ("CALL-ID:x", b"x"),
])  # fmt: skip
def test_call_id_of(header: str, want: bytes) -> None:
    msg = f"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{header}\r\nCSeq: 2 BYE\r\n\r\n".encode()
    assert call_id_of(msg) == want


def test_call_id_is_only_read_from_the_head() -> None:
    msg = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 20\r\n\r\nnope\nCall-ID: in-body"
    assert call_id_of(msg) == b""


def _engine_calls(n: int = 1) -> tuple[dict[str, Any], list[tuple[str, str]], bytes]:
    """The engine's own call table after `n` calls were routed (A- and B-leg Call-IDs of each), and the prefix
    of its B-leg Call-IDs."""
    h = Harness(make_engine(loopback_config()))
    ids = []
    for _ in range(n):
        _caller, outs = start_call(h)
        b_id = b_invite(outs).call_id
        call, leg = h.engine.calls[b_id]
        assert leg == 1
        ids.append((call.a.call_id, b_id))
    prefix = h.engine.b_leg_call_id_prefix
    assert all(b.startswith(prefix) and not a.startswith(prefix) for a, b in ids)
    return dict(h.engine.calls), ids, prefix.encode()


# Told the engine's B-leg prefix (as the transport does), a sender looks up only the Call-IDs with it; the
# answers are the same.
@pytest.mark.parametrize("told_prefix", [False, True])
def test_both_legs_correlate_to_the_a_leg_call_id_even_after_the_call_ended(told_prefix: bool) -> None:
    calls, [(a_id, b_id)], prefix = _engine_calls()
    sender = HepSender(HepSettings(address="127.0.0.1:9"), asyncio.new_event_loop(),
                       b_leg_prefix=prefix if told_prefix else b"")
    a_msg = f"INVITE sip:x SIP/2.0\r\nCall-ID: {a_id}\r\n\r\n".encode()
    b_msg = f"INVITE sip:x SIP/2.0\r\nCall-ID: {b_id}\r\n\r\n".encode()
    assert sender.correlation(a_msg, calls) == a_id.encode()
    assert sender.correlation(b_msg, calls) == a_id.encode()
    calls.clear()  # the call ended: a late B-leg message still correlates
    assert sender.correlation(b_msg, calls) == a_id.encode()
    assert sender.correlation(b"SIP/2.0 200 OK\r\nCall-ID: stray\r\n\r\n", calls) == b"stray"


def test_a_call_that_ended_is_remembered_by_the_end_hook() -> None:
    """The engine's call-end hook maps the call's B-legs to its A-leg afresh: the messages after the end (the BYE
    that ended it, its 200) correlate even when nothing of the call was looked up lately (a long call under load
    whose entry left both generations of the map; here a sender that never saw the call)."""
    h = Harness(make_engine(loopback_config()))
    _caller, outs = start_call(h)
    b_id = b_invite(outs).call_id
    call, _ = h.engine.calls[b_id]
    a_id = call.a.call_id
    sender = HepSender(HepSettings(address="127.0.0.1:9"), asyncio.new_event_loop(),
                       b_leg_prefix=h.engine.b_leg_call_id_prefix.encode())
    gone: dict[str, Any] = {}  # the engine's table after the call left it
    assert sender.correlate(b_id.encode(), gone) == b_id.encode()  # unknown: its own Call-ID
    sender.call_ended(call)
    assert sender.correlate(b_id.encode(), gone) == a_id.encode()


@pytest.mark.parametrize("told_prefix", [False, True])
def test_many_calls_each_correlate_to_their_own_a_leg(told_prefix: bool) -> None:
    calls, ids, prefix = _engine_calls(25)
    sender = HepSender(HepSettings(address="127.0.0.1:9"), asyncio.new_event_loop(),
                       b_leg_prefix=prefix if told_prefix else b"")
    for _ in range(3):
        for a_id, b_id in ids:
            assert sender.correlation(f"ACK sip:x SIP/2.0\r\nCall-ID: {b_id}\r\n\r\n".encode(), calls) == a_id.encode()
            assert sender.correlation(f"ACK sip:x SIP/2.0\r\nCall-ID: {a_id}\r\n\r\n".encode(), calls) == a_id.encode()
    assert len(sender._corr) + len(sender._corr_old) <= 2 * CORRELATION_GENERATION


class _Noting(Harness):
    """A harness whose engine keeps `senders` (as the transport does with `hep:`): each drain checks they are
    aligned with the outbox and notes (data, sender)."""

    def __init__(self) -> None:
        super().__init__(make_engine(loopback_config()))
        self.engine.note_for_capture()
        self.sent: list[tuple[bytes, object]] = []

    def drain(self) -> Outs:
        senders = self.engine.txns.senders
        assert senders is not None and len(senders) == len(self.engine.outbox)
        self.sent += [(data, who) for (data, _), who in zip(self.engine.outbox, senders, strict=True)]
        senders.clear()
        return super().drain()


def test_sent_messages_correlate_through_their_sender() -> None:
    """Every message the engine sends for a call (both legs, each way, retransmissions, the BYE's 200 after the
    call ended) names who sent it, and that sender gives the A-leg Call-ID without a look at the bytes (a sender
    finding it in the bytes agrees)."""
    h = _Noting()
    sender = HepSender(HepSettings(address="127.0.0.1:9"), asyncio.new_event_loop(),
                       b_leg_prefix=h.engine.b_leg_call_id_prefix.encode())
    h.engine.call_end_hooks.append(sender.call_ended)
    from_bytes = HepSender(HepSettings(address="127.0.0.1:9"), asyncio.new_event_loop())
    caller, outs = start_call(h)
    h.feed(caller.invite_bytes, A)  # retransmitted: the 100 again
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    a200 = h.feed(callee.reply(None, 200, body=SDP_B), B).to(A).responses(200).one().msg
    assert isinstance(a200, Response)
    caller.learn(a200)
    h.feed(caller.ack(), A)
    h.feed(callee.reply(None, 200, body=SDP_B), B)  # the 2xx again: our ACK again
    b_bye = h.feed(caller.request("BYE"), A).to(B).requests("BYE").one().msg
    assert isinstance(b_bye, Request)
    h.feed(callee.reply(b_bye, 200), B)  # ends the call: its 200 goes to A
    assert h.engine.calls == {}
    a_id = caller.call_id.encode()
    kinds = [data.split(b"\r\n", 1)[0] for data, _ in h.sent]
    assert len(h.sent) >= 9, kinds
    for data, who in h.sent:
        assert sender.sent_correlation(b"", who, h.engine.calls) == a_id, data[:60]  # b"": not from the bytes
        assert from_bytes.correlation(data, h.engine.calls) in (a_id, b_bye.call_id.encode())
    assert sender.sent_correlation(h.sent[0][0], None, h.engine.calls) == a_id  # no sender: from the bytes


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_udp_server_down_is_noticed_and_copies_are_not_even_built_for_a_while() -> None:
    async def scenario() -> tuple[int, int]:
        sender = HepSender(HepSettings(address=f"127.0.0.1:{_free(socket.SOCK_DGRAM)}"), asyncio.get_running_loop(),
                           hold_off=60.0)
        sender.start()
        for _ in range(50):
            sender.capture(b"SIP", 17, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
            await asyncio.sleep(0.001)  # lets the ICMP port-unreachable come back
        sender.close()
        return sender.sent, sender.dropped

    sent, dropped = uvloop.run(scenario())
    assert sent + dropped == 50
    assert sent <= 2 and dropped >= 48


def test_udp_copies_arrive_as_encoded() -> None:
    async def scenario() -> list[bytes]:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        sender = HepSender(HepSettings(address=f"127.0.0.1:{rx.getsockname()[1]}", capture_id=5),
                           asyncio.get_running_loop())
        sender.start()
        for i in range(3):
            sender.capture(b"SIP %d" % i, 17, "127.0.0.1", 1, "127.0.0.1", 2, b"c", 1000.5)
        got = [rx.recv(65535) for _ in range(3)]
        sender.close()
        rx.close()
        assert sender.sent == 3 and sender.dropped == 0
        return got

    got = uvloop.run(scenario())
    assert [g[-(6 + 1 + 6 + 5):-(6 + 1)][-5:] for g in got] == [b"SIP 0", b"SIP 1", b"SIP 2"]


COPIES = 3000


def test_tcp_copies_beyond_the_queue_limit_are_dropped_not_waited_for() -> None:
    """A capture server that accepts and never reads: the kernel buffers fill, then stirgate's queue, then
    copies are dropped and counted; capture() never blocks."""
    async def scenario() -> tuple[int, int, int]:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.setblocking(False)
        loop = asyncio.get_running_loop()
        settings = HepSettings(address=f"127.0.0.1:{lsock.getsockname()[1]}", transport="tcp",
                               max_queue_bytes=65536)
        sender = HepSender(settings, loop)
        sender.start()
        conn, _ = await loop.sock_accept(lsock)  # accepted, never read
        for _ in range(200):
            if sender.connected:
                break
            await asyncio.sleep(0.01)
        payload = b"x" * 8000
        for _ in range(COPIES):  # 24 MB: more than the kernel's socket buffers hold
            sender.capture(payload, 6, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        sender.close()
        conn.close()
        lsock.close()
        return sender.sent, sender.dropped, sender.oversize

    sent, dropped, oversize = uvloop.run(scenario())
    assert oversize == 0
    assert sent + dropped == COPIES
    assert dropped > 0 and sent > 0


def test_tcp_copies_go_when_the_buffer_fills_or_when_the_timer_says() -> None:
    """Under load the buffer is written in the turn that fills it (no wake-up of its own); a few copies wait
    for the flush timer, and then arrive whole."""
    async def scenario() -> tuple[int, int, int, bytes]:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.setblocking(False)
        loop = asyncio.get_running_loop()
        sender = HepSender(HepSettings(address=f"127.0.0.1:{lsock.getsockname()[1]}", transport="tcp"), loop)
        sender.start()
        conn, _ = await loop.sock_accept(lsock)
        while not sender.connected:
            await asyncio.sleep(0.001)
        sender.capture(b"SIP few", 6, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
        waiting = sender.sent  # below the threshold: waits for the timer
        payload = b"x" * 8000
        n = TCP_FLUSH_BYTES // 8000 + 1
        for _ in range(n):
            sender.capture(payload, 6, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
        filled = sender.sent  # the buffer filled within this turn: written at once, the first copy with it
        sender.capture(b"SIP last", 6, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
        while sender.sent < n + 2:  # the last copy goes when its timer fires
            await asyncio.sleep(0.005)
        got = b""
        while got.count(b"HEP3") < n + 2:
            got += await loop.sock_recv(conn, 1 << 20)
        sender.close()
        conn.close()
        lsock.close()
        return waiting, filled, sender.dropped, got

    waiting, filled, dropped, got = uvloop.run(scenario())
    assert waiting == 0
    assert filled == TCP_FLUSH_BYTES // 8000 + 2
    assert dropped == 0
    assert got.index(b"SIP few") < got.index(b"x" * 8000) < got.index(b"SIP last")  # in order


def test_tcp_server_down_drops_copies() -> None:
    async def scenario() -> tuple[int, int]:
        settings = HepSettings(address=f"127.0.0.1:{_free(socket.SOCK_STREAM)}", transport="tcp")
        sender = HepSender(settings, asyncio.get_running_loop())
        sender.start()
        await asyncio.sleep(0.05)
        for _ in range(10):
            sender.capture(b"SIP", 6, "127.0.0.1", 1, "127.0.0.1", 2, b"c")
        sender.close()
        return sender.sent, sender.dropped

    assert uvloop.run(scenario()) == (0, 10)
