"""A tiny in-memory SIP peer kit for driving the sans-I/O engine: build requests/responses, read the outbox.

Addresses follow examples/loopback.yaml: customer 127.0.0.10, carrier 127.0.0.20, carrier2 127.0.0.21,
stirgate on 127.0.0.1:5060. Nothing here opens a socket or reads a clock; time is `Harness.now`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.config import Config, load_config_text
from proxy.engine import Engine, EngineSettings
from proxy.sip.message import Request, Response, parse

ROOT = Path(__file__).resolve().parents[3]
LOOPBACK = ROOT / "examples" / "loopback.yaml"

A = ("udp", "127.0.0.10", 5060)  # customer PBX
B = ("udp", "127.0.0.20", 5060)  # carrier
B2 = ("udp", "127.0.0.21", 5060)  # carrier2
STRANGER = ("udp", "192.0.2.99", 5060)
LOCAL = {"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5060)}

SDP_A = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.10\r\ns=-\r\nc=IN IP4 127.0.0.10\r\n"
    b"t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
SDP_B = (
    b"v=0\r\no=bob 2808844564 2808844564 IN IP4 127.0.0.20\r\ns=-\r\nc=IN IP4 127.0.0.20\r\n"
    b"t=0 0\r\nm=audio 3456 RTP/AVP 0\r\n"
)

_ids = itertools.count(1)


def uid() -> str:
    return f"{next(_ids):06d}"


def loopback_yaml(**replace: str) -> str:
    """examples/loopback.yaml, optionally with text substitutions (old -> new), without its STIR set-up.

    The example signs and verifies with a demo PKI read from `demo-certs/` in the working directory; these
    tests are about SIP, run anywhere, and add STIR themselves where they need it (tests/unit/records).
    """
    text = LOOPBACK.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    cfg = yaml.safe_load(text)
    cfg.pop("stir", None)
    for trunk in cfg["trunks"]:
        trunk.pop("sign", None)
    return yaml.safe_dump(cfg, sort_keys=False)


def loopback_config(**replace: str) -> Config:
    """`loopback_yaml` as a Config."""
    return load_config_text(loopback_yaml(**replace), str(LOOPBACK))


def make_engine(config: Config | None = None, **settings: object) -> Engine:
    cfg = config or loopback_config()
    base = EngineSettings.from_config(cfg)
    if settings:
        fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
        fields.update(settings)
        base = EngineSettings(**fields)  # type: ignore[arg-type]
    return Engine(cfg, dict(LOCAL), base)


# --- message builders -------------------------------------------------------------------------------------------


def build_request(
    method: str,
    ruri: str,
    *,
    via: list[str],
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    cseq_method: str | None = None,
    contact: str | None = None,
    max_forwards: int | None = 70,
    extra: list[str] | tuple[str, ...] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    lines = [f"{method} {ruri} SIP/2.0"]
    lines += [f"Via: {v}" for v in via]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(f"From: {from_}")
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {call_id}")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += list(extra)
    if body and content_type is None:
        content_type = "application/sdp"
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_response(
    req: Request,
    code: int,
    reason: str = "",
    *,
    to_tag: str | None = None,
    contact: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    """A UAS response to `req`: Via (all), From, Call-ID, CSeq copied; To gets `to_tag` if it has none."""
    reason = reason or {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK"}.get(code, "Whatever")
    lines = [f"SIP/2.0 {code} {reason}"]
    lines += [h.raw for h in req.headers if h.key == "via"]
    lines += [h.raw for h in req.headers if h.key in ("from", "call-id", "cseq")]
    to = req.header("to") or ""
    if code > 100 and req.to_tag is None and to_tag is not None:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += list(extra)
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- the outbox ---------------------------------------------------------------------------------------------------


@dataclass
class Out:
    data: bytes
    target: tuple[str, str, int]

    @property
    def msg(self) -> Request | Response:
        return parse(self.data)

    @property
    def is_response(self) -> bool:
        return self.data.startswith(b"SIP/2.0 ")

    @property
    def status(self) -> int | None:
        m = self.msg
        return m.status if isinstance(m, Response) else None

    @property
    def method(self) -> str | None:
        m = self.msg
        return m.method if isinstance(m, Request) else m.cseq[1]

    def __repr__(self) -> str:
        first = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        return f"Out({first!r} -> {self.target})"


class Outs(list[Out]):
    def to(self, target: tuple[str, str, int]) -> Outs:
        return Outs(o for o in self if o.target == target)

    def requests(self, method: str | None = None) -> Outs:
        return Outs(o for o in self if not o.is_response and (method is None or o.msg.method == method))  # type: ignore[union-attr]

    def responses(self, status: int | None = None) -> Outs:
        return Outs(o for o in self if o.is_response and (status is None or o.status == status))

    def one(self) -> Out:
        assert len(self) == 1, f"expected exactly one message, got {list(self)!r}"
        return self[0]

    def statuses(self) -> list[int]:
        return [o.status for o in self if o.is_response]  # type: ignore[misc]

    def lines(self) -> list[str]:
        return [o.data.split(b"\r\n", 1)[0].decode("latin-1") for o in self]


class Harness:
    """An engine with a fake clock. `feed` delivers bytes and returns (and clears) what the engine sent."""

    def __init__(self, engine: Engine | None = None, now: float = 1000.0) -> None:
        self.engine = engine or make_engine()
        self.now = now

    def feed(self, data: bytes, source: tuple[str, str, int]) -> Outs:
        self.engine.receive(data, source, self.now)
        return self.drain()

    def drain(self) -> Outs:
        out = Outs(Out(d, t) for d, t in self.engine.outbox)
        self.engine.outbox.clear()
        return out

    def advance(self, dt: float) -> Outs:
        self.now += dt
        self.engine.handle_timer(self.now)
        return self.drain()

    def run_until(self, when: float) -> Outs:
        """Fire every timer up to `when`, one deadline at a time (so each fires at its own time)."""
        out = Outs()
        while True:
            nxt = self.engine.next_deadline()
            if nxt is None or nxt > when:
                break
            self.now = max(self.now, nxt)
            self.engine.handle_timer(self.now)
            out.extend(self.drain())
        self.now = max(self.now, when)
        return out

    def settle(self, extra: float = 100.0) -> Outs:
        """Let every timer run out (the brief's `handle_timer(now + 100)`)."""
        self.now += extra
        self.engine.handle_timer(self.now)
        return self.drain()

    def assert_clean(self) -> None:
        assert self.engine.calls == {}, self.engine.calls
        assert len(self.engine.txns) == 0, (self.engine.txns.servers, self.engine.txns.clients)


# --- peers ----------------------------------------------------------------------------------------------------------


class Caller:
    """The A side (customer PBX at 127.0.0.10): places a call and acts in its dialog."""

    def __init__(self, h: Harness, addr: tuple[str, str, int] = A, user: str = "15551234567",
                 call_id: str | None = None) -> None:
        self.h = h
        self.addr = addr
        self.host = f"{addr[1]}:{addr[2]}"
        self.user = user
        self.call_id = call_id or f"a-{uid()}@{addr[1]}"
        self.tag = f"atag{uid()}"
        self.cseq = 1
        self.remote_tag: str | None = None
        self.invite_branch = ""
        self.invite_bytes = b""
        self.from_ = f'"Alice" <sip:+12125550100@{addr[1]}>;tag={self.tag}'
        self.to_base = f"<sip:{user}@127.0.0.1>"

    def branch(self) -> str:
        return f"z9hG4bKa{uid()}"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {self.host};branch={branch}"

    @property
    def to(self) -> str:
        return self.to_base + (f";tag={self.remote_tag}" if self.remote_tag else "")

    def invite(self, body: bytes = SDP_A, extra: tuple[str, ...] | list[str] = (), max_forwards: int = 70) -> bytes:
        self.invite_branch = self.branch()
        self.invite_bytes = build_request(
            "INVITE", f"sip:{self.user}@127.0.0.1:5060", via=[self.via(self.invite_branch)], from_=self.from_,
            to=self.to_base, call_id=self.call_id, cseq=self.cseq, contact=f"<sip:alice@{self.host}>",
            max_forwards=max_forwards, extra=extra, body=body)
        return self.invite_bytes

    def cancel(self) -> bytes:
        return build_request("CANCEL", f"sip:{self.user}@127.0.0.1:5060", via=[self.via(self.invite_branch)],
                             from_=self.from_, to=self.to_base, call_id=self.call_id, cseq=1)

    def ack_non2xx(self, resp: Response) -> bytes:
        return build_request("ACK", f"sip:{self.user}@127.0.0.1:5060", via=[self.via(self.invite_branch)],
                             from_=self.from_, to=resp.header("to") or "", call_id=self.call_id, cseq=1)

    def learn(self, resp: Response) -> None:
        if resp.to_tag:
            self.remote_tag = resp.to_tag

    def ack(self, cseq: int = 1, body: bytes = b"") -> bytes:
        return build_request("ACK", "sip:127.0.0.1:5060", via=[self.via(self.branch())], from_=self.from_,
                             to=self.to, call_id=self.call_id, cseq=cseq, body=body)

    def request(self, method: str, body: bytes = b"", extra: tuple[str, ...] | list[str] = (),
                cseq: int | None = None) -> bytes:
        """An in-dialog request (new branch, next CSeq unless given)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        contact = f"<sip:alice@{self.host}>" if method in ("INVITE", "UPDATE") else None
        return build_request(method, "sip:127.0.0.1:5060", via=[self.via(self.branch())], from_=self.from_,
                             to=self.to, call_id=self.call_id, cseq=cseq, contact=contact, extra=extra, body=body)

    def reply(self, req: Request, code: int, reason: str = "", body: bytes = b"") -> bytes:
        return build_response(req, code, reason, body=body)


class Callee:
    """The B side (a carrier) for one B-leg INVITE it received from stirgate."""

    def __init__(self, h: Harness, invite: Request, addr: tuple[str, str, int] = B, tag: str | None = None) -> None:
        self.h = h
        self.invite = invite
        self.addr = addr
        self.host = f"{addr[1]}:{addr[2]}"
        self.tag = tag or f"btag{uid()}"
        self.contact = f"<sip:bob@{self.host}>"
        self.cseq = 100

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    def reply(self, req: Request | None, code: int, reason: str = "", body: bytes = b"",
              extra: tuple[str, ...] | list[str] = ()) -> bytes:
        req = req or self.invite
        contact = self.contact if (req.method in ("INVITE", "UPDATE") and code > 100 and code < 300) else None
        return build_response(req, code, reason, to_tag=self.tag, contact=contact, extra=extra, body=body)

    def request(self, method: str, body: bytes = b"", extra: tuple[str, ...] | list[str] = ()) -> bytes:
        """An in-dialog request from the callee towards stirgate (From/To swapped)."""
        self.cseq += 1
        inv = self.invite
        from_ = f"{inv.header('to')};tag={self.tag}"
        contact = self.contact if method in ("INVITE", "UPDATE") else None
        target = inv.contact.uri if inv.contact else "sip:127.0.0.1:5060"
        return build_request(method, target, via=[f"SIP/2.0/UDP {self.host};branch=z9hG4bKb{uid()}"],
                             from_=from_, to=inv.header("from") or "", call_id=inv.call_id, cseq=self.cseq,
                             contact=contact, extra=extra, body=body)

    def ack(self, req: Request) -> bytes:
        """ACK for a 2xx to a request stirgate sent this callee (a re-INVITE from A, say)."""
        inv = self.invite
        return build_request("ACK", inv.contact.uri if inv.contact else "sip:127.0.0.1:5060",
                             via=[f"SIP/2.0/UDP {self.host};branch=z9hG4bKb{uid()}"],
                             from_=f"{inv.header('to')};tag={self.tag}", to=req.header("from") or "",
                             call_id=inv.call_id, cseq=req.cseq[0])


def start_call(h: Harness, caller: Caller | None = None, body: bytes = SDP_A,
               extra: tuple[str, ...] | list[str] = ()) -> tuple[Caller, Outs]:
    caller = caller or Caller(h)
    return caller, h.feed(caller.invite(body=body, extra=extra), caller.addr)


def b_invite(outs: Outs, target: tuple[str, str, int] = B) -> Request:
    req = outs.to(target).requests("INVITE").one().msg
    assert isinstance(req, Request)
    return req


def established_call(h: Harness, body: bytes = SDP_A) -> tuple[Caller, Callee]:
    """INVITE / 100 / 180 / 200 / ACK: a confirmed call, outbox drained."""
    caller, outs = start_call(h, body=body)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    a200 = outs.to(A).responses(200).one().msg
    assert isinstance(a200, Response)
    caller.learn(a200)
    outs = h.feed(caller.ack(), A)
    assert outs.to(B).requests("ACK").one()
    return caller, callee
