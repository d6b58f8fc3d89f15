"""The fuzz targets: one function per target, taking one byte string, raising only on a finding.

A finding is `Finding` (an invariant broken: leaked state, split-dependent framing, ...) or any exception the
target does not allow (for the parser anything but ParseError; for the engine anything at all). The functions are
deterministic: the same input gives the same run (the engine's random identifier prefix is pinned, the sipfake id
counter is reset), so a saved crash replays with ``python -m tests.fuzz --replay FILE``.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

from proxy.b2bua import ANSWERED, CONFIRMED
from proxy.engine import Engine, EngineSettings
from proxy.sip.message import ParseError, Request, Response, frame_stream, parse
from proxy.sip.validate import check_request
from tests.unit.core import sipfake
from tests.unit.core.sipfake import B2, LOCAL, SDP_A, SDP_B, A, B, Callee, Caller, build_request, build_response

__all__ = ["TARGETS", "Finding", "encode_ops", "engine_one", "parser_one", "stream_one"]


class Finding(AssertionError):
    """An invariant the target checks was broken (not an exception from stirgate itself)."""


# --- parser --------------------------------------------------------------------------------------------------

_VIEWS = ("call_id", "via", "via_key", "to_tag", "from_tag", "from_", "to", "cseq", "contact", "max_forwards")


def parser_one(data: bytes) -> None:
    """parse + check_request (+ every header view and the to_bytes round trip): only ParseError may escape."""
    try:
        msg = parse(data)
    except ParseError as exc:
        req = getattr(exc, "request", None)  # VersionError carries the request the engine answers 505
        if req is not None:
            _views(req)
        return
    if isinstance(msg, Request):
        try:
            check_request(msg)
        except ParseError:
            pass
        try:
            msg.ruri  # noqa: B018
        except ParseError:
            pass
    _views(msg)
    out = msg.to_bytes()
    try:
        again = parse(out)
    except ParseError as exc:
        raise Finding(f"what stirgate writes it cannot read back: {exc}: {out[:200]!r}") from exc
    if again.body != msg.body:
        raise Finding("body changed by the to_bytes/parse round trip")


def _views(msg: Request | Response) -> None:
    for view in _VIEWS:
        try:
            getattr(msg, view)
        except ParseError:
            pass


# --- stream --------------------------------------------------------------------------------------------------

_MAX_SIZES = (64, 512, 4096, 65536)


def stream_one(data: bytes) -> None:
    """frame_stream over `data[2:]`, split at points drawn from data[0:2]; compared with one read of it all.

    Byte 0: low 2 bits the max_size index, the rest a chunk-size seed; byte 1: the number of splits.
    """
    if len(data) < 2:
        return
    max_size = _MAX_SIZES[data[0] & 3]
    stream = data[2:]
    cuts = _cuts(len(stream), data[0] >> 2, data[1])
    whole, whole_rest, whole_err = _frame_in_chunks(stream, [len(stream)], max_size)
    parts, parts_rest, parts_err = _frame_in_chunks(stream, cuts, max_size)
    if (whole_err is None) != (parts_err is None):
        raise Finding(f"framing depends on the split: whole={whole_err!r}, split at {cuts}={parts_err!r}")
    if whole_err is None:
        if whole != parts or whole_rest != parts_rest:
            raise Finding(f"framing depends on the split at {cuts}: {len(whole)} vs {len(parts)} messages")
    else:
        # One read loses the messages before the error (the connection closes); split reads may deliver some
        # first, but never anything the one read would not have framed.
        if parts[: len(whole)] != whole:
            raise Finding("split reads framed different messages before the error")
    for frame in parts:
        if len(frame) > max_size:
            raise Finding(f"a {len(frame)}-byte frame over max_size {max_size}")
        end = frame.find(b"\r\n\r\n")
        if end < 0 or frame[:2] == b"\r\n":
            raise Finding(f"a frame without a head or with a leading CRLF: {frame[:80]!r}")
        length = _frame_length(frame[:end])
        if length != len(frame) - end - 4:
            raise Finding(f"frame body is {len(frame) - end - 4} bytes, its Content-Length says {length}")
        parser_one(frame)


def _cuts(n: int, seed: int, count: int) -> list[int]:
    """`count` chunk ends in 1..n (n last), spread by a small LCG from `seed`: deterministic, covers tiny chunks."""
    points = {n}
    x = seed * 2654435761 + 1
    for i in range(count):
        if n <= 1:
            break
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        points.add(1 + (x >> 33) % (n - 1) if i % 3 else min(n, 1 + i))
    return sorted(points)


def _frame_in_chunks(stream: bytes, ends: list[int], max_size: int) -> tuple[list[bytes], bytes, str | None]:
    buffer = bytearray()
    frames: list[bytes] = []
    start = 0
    for end in ends:
        buffer += stream[start:end]
        start = end
        try:
            frames.extend(frame_stream(buffer, max_size))
        except ParseError as exc:
            return frames, bytes(buffer), str(exc)
    return frames, bytes(buffer), None


def _frame_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name and name.strip().lower() in (b"content-length", b"l"):
            return int(value.strip())
    return None


# --- engine --------------------------------------------------------------------------------------------------
#
# The input is a list of records: [op][len:2 big-endian][payload]. op bits 7-6 the kind, 5-3 the time step
# taken before it, 2-0 the source (raw datagrams) or the peer choice:
#   0 RAW:    payload sent as one datagram from SOURCES[src]
#   1 REPLY:  a response to a request stirgate sent: payload[0] picks the status, payload[1] the request (0 is
#             the latest), payload[2:] is spliced in as extra header text; it comes from where the request went
#   2 A-SIDE: payload[0] picks the caller's action (ACTIONS), payload[1:] extra header text; src bit 0 set makes
#             a new call come from the carrier (verified) instead of the customer (signed)
#   3 B-SIDE: payload[0] picks an in-dialog request from the callee of the latest B-leg INVITE (BYE, re-INVITE,
#             INFO, UPDATE), payload[1:] extra header text

STRANGER = ("udp", "192.0.2.99", 5060)
A_TCP = ("tcp", "127.0.0.10", 5070)
B_TCP = ("tcp", "127.0.0.20", 5071)
SOURCES = (A, B, STRANGER, A_TCP, B2, ("udp", "127.0.0.10", 5999), B_TCP, ("udp", "203.0.113.5", 5060))
STEPS = (0.0, 0.05, 0.6, 2.1, 4.5, 33.0, 65.0, 130.0)
CODES = (100, 180, 183, 200, 202, 199, 400, 401, 407, 408, 481, 486, 487, 488, 491, 500, 503, 504, 603, 699)
ACTIONS = ("invite", "retransmit", "cancel", "ack", "bye", "reinvite", "info", "update", "options", "prack",
           "ack_again", "message")
B_METHODS = ("BYE", "INVITE", "INFO", "UPDATE", "NOTIFY", "BYE")
RAW, REPLY, A_SIDE, B_SIDE = 0, 1, 2, 3
MAX_OPS = 24

_CONFIG = sipfake.loopback_config()
_SETTINGS = EngineSettings.from_config(_CONFIG)


def encode_ops(ops: list[tuple[int, int, int, bytes]]) -> bytes:
    """(kind, step index, src, payload) records -> one engine input (used to write the seeds)."""
    out = bytearray()
    for kind, step, src, payload in ops:
        out += bytes([(kind << 6) | (step << 3) | src]) + struct.pack(">H", len(payload)) + payload
    return bytes(out)


def decode_ops(data: bytes) -> list[tuple[int, int, int, bytes]]:
    ops: list[tuple[int, int, int, bytes]] = []
    i = 0
    while i + 3 <= len(data) and len(ops) < MAX_OPS:
        op = data[i]
        (n,) = struct.unpack(">H", data[i + 1 : i + 3])
        payload = data[i + 3 : i + 3 + n]
        i += 3 + n
        ops.append((op >> 6, (op >> 3) & 7, op & 7, payload))
    return ops


def _extra(text: bytes) -> list[str]:
    return [text.decode("latin-1")] if text else []


class _World:
    """The engine and just enough of its peers to answer what it sends, driven by the decoded records."""

    def __init__(self) -> None:
        sipfake._ids = itertools.count(1)  # deterministic Call-IDs, tags and branches from the peers
        self.engine = Engine(_CONFIG, dict(LOCAL), _SETTINGS)
        self.engine._prefix = "f022ed"  # pin the engine's random identifier prefix: replayable runs
        self.h = sipfake.Harness(self.engine)
        self.sent: list[tuple[Request, tuple[str, str, int]]] = []
        self.callers: list[Caller] = []
        self.finals: dict[str, Response] = {}
        self.callees: dict[str, Callee] = {}
        self.b_invites: list[tuple[Request, tuple[str, str, int]]] = []
        self.bad_output: list[bytes] = []

    # what the engine sends
    def observe(self) -> None:
        for data, target in self.engine.outbox:
            try:
                msg = parse(data)
            except ParseError:
                self.bad_output.append(data)
                continue
            if isinstance(msg, Request):
                if msg.method != "ACK":
                    self.sent.append((msg, target))
                    del self.sent[:-16]
                if msg.method == "INVITE" and msg.to_tag is None:
                    self.b_invites.append((msg, target))
                    del self.b_invites[:-8]
            else:
                try:
                    for c in self.callers:
                        if target[1:] == c.addr[1:] and msg.call_id == c.call_id and msg.cseq[1] == "INVITE":
                            c.learn(msg)
                            if msg.status >= 200:
                                self.finals[c.call_id] = msg
                except ParseError:
                    continue
        self.engine.outbox.clear()

    def deliver(self, data: bytes, source: tuple[str, str, int]) -> None:
        self.engine.receive(data, source, self.h.now)
        self.observe()

    def tick(self, dt: float) -> None:
        if dt:
            self.h.now += dt
            self.engine.handle_timer(self.h.now)
            self.observe()

    # the records
    def raw(self, src: int, payload: bytes) -> None:
        self.deliver(payload, SOURCES[src])

    def reply(self, payload: bytes) -> None:
        if not self.sent or len(payload) < 2:
            return
        code = CODES[payload[0] % len(CODES)]
        req, target = self.sent[-1 - payload[1] % len(self.sent)]
        tag = "ft" + req.call_id[-6:].replace("-", "x")
        contact = f"<sip:peer@{target[1]}:{target[2]}>" if 100 < code < 300 and req.method in ("INVITE", "UPDATE") \
            else None
        body = SDP_B if req.method == "INVITE" and code in (183, 200) else b""
        try:
            data = build_response(req, code, to_tag=tag, contact=contact, extra=_extra(payload[2:]), body=body)
        except ParseError:
            return
        self.deliver(data, target)

    def a_side(self, src: int, payload: bytes) -> None:
        action = ACTIONS[payload[0] % len(ACTIONS)] if payload else "invite"
        extra = _extra(payload[1:])
        if action == "invite" or not self.callers:
            caller = Caller(self.h, addr=B if src & 1 else A)
            self.callers.append(caller)
            self.deliver(caller.invite(extra=extra), caller.addr)
            return
        c = self.callers[-1]
        final = self.finals.get(c.call_id)
        if action == "retransmit":
            data = c.invite_bytes
        elif action == "cancel":
            data = c.cancel()
        elif action in ("ack", "ack_again"):
            if final is None:
                return
            data = c.ack(body=payload[1:]) if final.status < 300 else c.ack_non2xx(final)
        elif action == "reinvite":
            data = c.request("INVITE", body=SDP_A, extra=extra)
        elif action == "options":
            data = build_request("OPTIONS", "sip:127.0.0.1:5060", via=[c.via(c.branch())], from_=c.from_,
                                 to="<sip:127.0.0.1>", call_id=f"o{c.call_id}", cseq=1, extra=extra)
        else:
            data = c.request(action.upper(), extra=extra)
        self.deliver(data, c.addr)

    def b_side(self, payload: bytes) -> None:
        if not self.b_invites:
            return
        inv, target = self.b_invites[-1]
        callee = self.callees.get(inv.call_id)
        if callee is None:
            callee = self.callees[inv.call_id] = Callee(self.h, inv, addr=target,
                                                        tag="ft" + inv.call_id[-6:].replace("-", "x"))
        method = B_METHODS[payload[0] % len(B_METHODS)] if payload else "BYE"
        body = SDP_B if method == "INVITE" else b""
        try:
            data = callee.request(method, body=body, extra=_extra(payload[1:]))
        except ParseError:
            return
        self.deliver(data, target)

    # the end
    def settle(self) -> None:
        """Every timer (and every timer those start) runs out, peers silent: handle_timer(now + 1000), repeated."""
        for _ in range(12):
            self.h.now += 1000.0
            self.engine.handle_timer(self.h.now)
            self.observe()
            if self.engine.next_deadline() is None:
                return
        raise Finding(f"timers never run out: next deadline {self.engine.next_deadline()} at {self.h.now}")

    def hang_up(self) -> None:
        """An answered call is not a leak: the caller hangs it up (BYE on the A-leg), peers stay silent."""
        seen: set[int] = set()
        for call, _ in list(self.engine.calls.values()):
            if id(call) in seen:
                continue
            seen.add(id(call))
            if call.state not in (CONFIRMED, ANSWERED):
                continue
            a = call.a
            transport = call.source[0].upper()
            data = build_request(
                "BYE", a.contact.strip("<>").split(";")[0], via=[f"SIP/2.0/{transport} "
                                                                 f"{call.source[1]}:{call.source[2]};branch=z9hG4bKend{len(seen)}"],
                from_=a.remote_na.format(tag=a.remote_tag), to=a.local_na.format(tag=a.local_tag), call_id=a.call_id,
                cseq=999999)
            self.deliver(data, call.source)

    def check_clean(self) -> None:
        e = self.engine
        problems = []
        if e.calls:
            problems.append("calls left: " + ", ".join(sorted({f"{c.state}" for c, _ in e.calls.values()})))
        if len(e.txns):
            problems.append(f"{len(e.txns)} transactions left")
        if e.live_calls or e.calls_in_setup:
            problems.append(f"live_calls={e.live_calls} calls_in_setup={e.calls_in_setup}")
        if e.stats["internal_errors"]:
            problems.append(f"internal_errors={e.stats['internal_errors']}")
        if problems:
            raise Finding("engine state leaked: " + "; ".join(problems))


def engine_one(data: bytes) -> None:
    """The records of `data` into a fresh engine, then handle_timer(now + 1000) until quiet: nothing raises,
    nothing leaks (answered calls are hung up by their caller first)."""
    w = _World()
    for kind, step, src, payload in decode_ops(data):
        w.tick(STEPS[step])
        if kind == RAW:
            w.raw(src, payload)
        elif kind == REPLY:
            w.reply(payload)
        elif kind == A_SIDE:
            w.a_side(src, payload)
        else:
            w.b_side(payload)
    w.engine.fetch_requests.clear()  # the transport's job; nothing fetches here, the verify timer bounds it
    w.settle()
    w.hang_up()
    w.settle()
    w.check_clean()


TARGETS: dict[str, Callable[[bytes], None]] = {"parser": parser_one, "engine": engine_one, "stream": stream_one}
