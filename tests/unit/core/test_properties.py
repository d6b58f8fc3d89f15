"""Hypothesis properties: the parser and the engine never raise on hostile input, and never leak state."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.sip.message import ParseError, Request, Response, parse

from .sipfake import B2, SDP_A, SDP_B, A, B, Caller, Harness, build_response, make_engine

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SOURCES = [A, B, B2, ("udp", "192.0.2.99", 5060), ("tcp", "127.0.0.10", 5070)]


def _templates() -> list[bytes]:
    h = Harness()
    c = Caller(h)
    inv = c.invite(extra=["X-Custom: 1", "Identity: abc;info=<https://x/c.pem>;alg=ES256;ppt=shaken"])
    outs = h.feed(inv, A)
    binv = outs.to(B).requests("INVITE").one().msg
    assert isinstance(binv, Request)
    c.remote_tag = "bt1"
    return [
        inv,
        c.cancel(),
        c.ack(),
        c.request("BYE"),
        c.request("INVITE", body=SDP_A),
        c.request("OPTIONS"),
        build_response(binv, 180, to_tag="bt1"),
        build_response(binv, 200, to_tag="bt1", contact="<sip:bob@127.0.0.20>", body=SDP_B),
        build_response(binv, 503, to_tag="bt1"),
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\ni: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    ]


TEMPLATES = _templates()


@st.composite
def mutated(draw: Any) -> bytes:
    data = draw(st.sampled_from(TEMPLATES))
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["del", "dup", "flip", "trunc", "insert", "swap", "body"]))
        if op == "del" and len(lines) > 1:
            del lines[draw(st.integers(1, len(lines) - 1))]
        elif op == "dup" and len(lines) > 1:
            i = draw(st.integers(1, len(lines) - 1))
            lines.insert(draw(st.integers(1, len(lines))), lines[i])
        elif op == "flip":
            i = draw(st.integers(0, len(lines) - 1))
            line = bytearray(lines[i])
            if line:
                j = draw(st.integers(0, len(line) - 1))
                line[j] = draw(st.integers(0, 255))
            lines[i] = bytes(line)
        elif op == "trunc":
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "insert":
            i = draw(st.integers(0, len(lines) - 1))
            junk = draw(st.sampled_from([b";", b",", b'"', b"<", b">", b" ", b"\t", b"\r", b"\n", b"\x00",
                                         b"\xff", b";tag=", b"z9hG4bK", b":", b"%", b"=", b"sip:", b"[", b"]"]))
            line = lines[i]
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + junk + line[j:]
        elif op == "swap" and len(lines) > 2:
            i, j = draw(st.integers(1, len(lines) - 1)), draw(st.integers(1, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "body":
            body = draw(st.binary(max_size=40))
    return b"\r\n".join(lines) + sep + body


def settle(h: Harness) -> None:
    """Let every timer, and every timer those timers start, run out."""
    for _ in range(12):
        h.now += 1000.0
        h.engine.handle_timer(h.now)
        h.engine.outbox.clear()
        if h.engine.next_deadline() is None:
            break


# --- parser ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=600))
def test_parse_arbitrary_bytes_raises_only_parse_error(data: bytes) -> None:
    try:
        m = parse(data)
    except ParseError:
        return
    m.to_bytes()


@SETTINGS
@given(mutated())
def test_parse_mutated_raises_only_parse_error_and_views_too(data: bytes) -> None:
    try:
        m = parse(data)
    except ParseError:
        return
    out = m.to_bytes()
    again = parse(out)  # what we write, we can read back
    assert again.body == m.body
    for view in ("call_id", "via", "via_key", "to_tag", "from_tag", "from_", "to", "cseq", "contact", "max_forwards"):
        try:
            getattr(m, view)
        except ParseError:
            pass


# --- engine ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=400), st.sampled_from(SOURCES)), max_size=5))
def test_engine_arbitrary_bytes_never_raises_never_leaks(items: list[tuple[bytes, tuple[str, str, int]]]) -> None:
    h = Harness()
    for data, src in items:
        h.engine.receive(data, src, h.now)
    settle(h)
    h.assert_clean()
    assert h.engine.stats["internal_errors"] == 0


@SETTINGS
@given(st.lists(st.tuples(mutated(), st.sampled_from(SOURCES), st.sampled_from([0.0, 0.1, 3.0, 40.0])),
                min_size=1, max_size=6))
def test_engine_mutated_messages_never_raise_never_leak(items: list[tuple[bytes, Any, float]]) -> None:
    h = Harness()
    for data, src, dt in items:
        h.now += dt
        h.engine.handle_timer(h.now)
        h.engine.receive(data, src, h.now)
    settle(h)
    h.assert_clean()


# --- random orders of valid call events --------------------------------------------------------------------------

EVENTS = st.sampled_from([
    ("b", 100), ("b", 180), ("b", 183), ("b", 200), ("b", 486), ("b", 503), ("b", 408),
    ("b_retx",), ("b_pending",), ("a_pending",), ("b_bye",), ("b_reinvite",),
    ("a_cancel",), ("a_retx",), ("a_ack",), ("a_bye",), ("a_reinvite",), ("a_info",),
    ("t", 0.3), ("t", 1.0), ("t", 2.5), ("t", 10.0), ("t", 40.0),
])


class CallModel:
    """Both peers of one call, just competent enough to answer what stirgate sends them."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.caller = Caller(h)
        self.binvs: list[tuple[Request, tuple[str, str, int]]] = []
        self.b_final: set[str] = set()
        self.b_last: dict[str, bytes] = {}
        self.at_b: list[tuple[Request, tuple[str, str, int]]] = []
        self.at_a: list[Request] = []
        self.a_final: Response | None = None
        self.a_2xx = False
        self.a_acked = False
        self.a_byed = False
        self.b_byed = False
        self.b_dialog: tuple[Request, tuple[str, str, int]] | None = None
        self.bcseq = 100
        #: A UAC retransmits its INVITE only until timer B (64*T1 = 32 s, RFC 3261 17.1.1.2).
        self.retx_until = h.now + 32.0

    def feed(self, data: bytes, src: tuple[str, str, int]) -> None:
        for o in self.h.feed(data, src):
            self.observe(o.msg, o.target)

    def advance(self, dt: float) -> None:
        for o in self.h.advance(dt):
            self.observe(o.msg, o.target)

    def observe(self, m: Request | Response, target: tuple[str, str, int]) -> None:
        if target == A:
            if isinstance(m, Response):
                if m.cseq == (1, "INVITE"):
                    self.caller.learn(m)
                    if m.status >= 200:
                        self.a_final = m
                        self.a_2xx = self.a_2xx or m.status < 300
            elif m.method not in ("ACK", "CANCEL"):
                self.at_a.append(m)
        else:
            if isinstance(m, Request):
                if m.method == "INVITE" and m.to_tag is None:
                    if all(r.call_id != m.call_id for r, _ in self.binvs):
                        self.binvs.append((m, target))
                elif m.method != "ACK":
                    self.at_b.append((m, target))

    def tag_for(self, call_id: str) -> str:
        return "bt" + call_id[-6:].replace("-", "x")

    def step(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        c = self.caller
        if kind == "t":
            self.advance(ev[1])
        elif kind == "b" and self.binvs:
            inv, src = self.binvs[-1]
            if inv.call_id in self.b_final:
                return
            code = ev[1]
            data = build_response(inv, code, to_tag=self.tag_for(inv.call_id),
                                  contact=f"<sip:bob@{src[1]}:{src[2]}>" if code < 300 else None,
                                  body=SDP_B if code in (183, 200) else b"")
            if code >= 200:
                self.b_final.add(inv.call_id)
            if code == 200:
                self.b_dialog = (inv, src)
            self.b_last[inv.call_id] = data
            self.feed(data, src)
        elif kind == "b_retx" and self.binvs:
            inv, src = self.binvs[-1]
            if inv.call_id in self.b_last:
                self.feed(self.b_last[inv.call_id], src)
        elif kind == "b_pending":
            pending, self.at_b = self.at_b, []
            for req, src in pending:
                self.feed(build_response(req, 200, to_tag=self.tag_for(req.call_id),
                                         body=SDP_B if req.method == "INVITE" else b""), src)
                if req.method == "CANCEL":
                    for inv, isrc in self.binvs:
                        if inv.call_id == req.call_id and inv.call_id not in self.b_final:
                            self.b_final.add(inv.call_id)
                            self.feed(build_response(inv, 487, to_tag=self.tag_for(inv.call_id)), isrc)
        elif kind == "a_pending":
            pending, self.at_a = self.at_a, []
            for req in pending:
                self.feed(build_response(req, 200, body=SDP_A if req.method == "INVITE" else b""), A)
        elif kind in ("b_bye", "b_reinvite") and self.b_dialog is not None and (kind == "b_bye" or self.open()):
            inv, src = self.b_dialog
            self.b_byed = self.b_byed or kind == "b_bye"
            self.bcseq += 1
            method = "BYE" if kind == "b_bye" else "INVITE"
            from .sipfake import build_request

            data = build_request(method, "sip:127.0.0.1:5060",
                                 via=[f"SIP/2.0/UDP {src[1]}:{src[2]};branch=z9hG4bKbm{self.bcseq}"],
                                 from_=f"{inv.header('to')};tag={self.tag_for(inv.call_id)}",
                                 to=inv.header("from") or "", call_id=inv.call_id, cseq=self.bcseq,
                                 contact=f"<sip:bob@{src[1]}:{src[2]}>" if method == "INVITE" else None,
                                 body=SDP_B if method == "INVITE" else b"")
            self.feed(data, src)
        elif kind == "a_cancel":
            self.feed(c.cancel(), A)
        elif kind == "a_retx" and self.h.now < self.retx_until:
            self.feed(c.invite_bytes, A)
        elif kind == "a_ack" and self.a_final is not None:
            self.a_acked = True
            self.feed(c.ack() if self.a_2xx else c.ack_non2xx(self.a_final), A)
        elif kind == "a_bye" and self.a_2xx:
            self.a_byed = True
            self.feed(c.request("BYE"), A)
        elif kind == "a_reinvite" and self.open():
            self.feed(c.request("INVITE", body=SDP_A), A)
        elif kind == "a_info" and self.open():
            self.feed(c.request("INFO"), A)

    def open(self) -> bool:
        """In-dialog requests once the call is answered, even while it is being hung up or never ACKed: a call
        that ends under a relayed request must still answer it (or time it out) and leak nothing."""
        return self.a_2xx

    def teardown(self) -> None:
        """Well-behaved peers finish whatever is open; the caller hangs up an answered call."""
        for _ in range(4):
            self.step(("a_pending",))
            self.step(("b_pending",))
            if self.binvs:
                inv, _src = self.binvs[-1]
                if inv.call_id not in self.b_final:
                    self.step(("b", 486))
            if self.a_final is not None and not self.a_acked:
                self.step(("a_ack",))
            if self.a_2xx and not self.a_byed:
                self.step(("a_bye",))
            self.step(("a_pending",))
            self.step(("b_pending",))
            self.step(("t", 40.0))


@SETTINGS
@given(st.lists(EVENTS, max_size=25))
def test_random_call_event_orders_never_raise_never_leak(events: list[tuple[Any, ...]]) -> None:
    h = Harness(make_engine())
    model = CallModel(h)
    model.feed(model.caller.invite(), A)
    for ev in events:
        model.step(ev)
    model.teardown()
    settle(h)
    h.assert_clean()
    assert h.engine.stats["internal_errors"] == 0
