"""The B2BUA call: an A-leg dialog (stirgate as UAS) and a B-leg dialog (stirgate as UAC), relaying between them.

Each leg has its own Call-ID, tags, CSeq space, Via and Contact (topology hiding); every header stirgate does
not own is copied line for line, and bodies (SDP) are copied as bytes. The call is the transaction user of all
its transactions; it never reads a clock or a socket.

Leg 0 is A (the caller's side), leg 1 is B (the trunk the call was routed to).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from policies.base import CallContext, Decision
from policies.chain import Chain, ChainResult, StateRequest
from proxy.authentication import Authenticator, add_display_prefix, add_verstat
from proxy.routing import TrunkTarget
from proxy.sip.grammar import NameAddr, ParseError, parse_name_addr, parse_uri
from proxy.sip.message import Header, Request, Response, canonical_name
from proxy.sip.timers import TimerQueue
from proxy.sip.transaction import CALLING as TXN_CALLING
from proxy.sip.transaction import PROCEEDING, TRYING, Target, Transaction, TransactionLayer
from proxy.stir.signer import SignedCall

if TYPE_CHECKING:
    from proxy.authentication import InboundOutcome
    from proxy.config import Trunk

__all__ = ["OWNED_HEADERS", "Call", "CallHost", "CallSettings", "Leg", "apply_inbound", "apply_tags"]

#: Headers each leg writes for itself; everything else crosses the B2BUA unchanged.
OWNED_HEADERS: Final = frozenset(
    {"via", "from", "to", "call-id", "cseq", "contact", "record-route", "route", "max-forwards", "content-length"}
)
#: Downstream answers that make stirgate try the next trunk (RFC 3261 16.7 for 503).
FAILOVER_CODES: Final = frozenset({408, 500, 502, 503, 504})

# Call states
ROUTING: Final = "routing"
CALLING: Final = "calling"
EARLY: Final = "early"
ANSWERED: Final = "answered"  # 2xx sent to A, its ACK not yet seen
CONFIRMED: Final = "confirmed"
CANCELLING: Final = "cancelling"
ENDED: Final = "ended"


def passthrough(headers: Iterable[Header]) -> list[Header]:
    return [h for h in headers if h.key not in OWNED_HEADERS]


def _is_ip_literal(host: str) -> bool:
    return host.startswith("[") or (host.isascii() and host.replace(".", "").isdigit())


def resolve_target(uri: str, transport: str, fallback: Target) -> Target:
    """Where to send a request for this URI: its IP and port, else the fallback (no DNS on the hot path)."""
    try:
        u = parse_uri(uri)
    except ParseError:
        return fallback
    if not _is_ip_literal(u.host):
        return fallback
    t = (u.param("transport") or ("tls" if u.scheme == "sips" else transport)).lower()
    if t not in ("udp", "tcp", "tls"):
        t = transport
    return (t, u.host.strip("[]"), u.port or (5061 if t == "tls" else 5060))


def apply_tags(tags: Decision, headers: list[Header], from_na: NameAddr) -> tuple[list[Header], NameAddr]:
    """The header changes a policy decision asks for on the B-leg INVITE (From is the B-leg's own)."""
    pai_present = any(h.key == "p-asserted-identity" for h in headers)

    def edit(value: str) -> str:
        if tags.verstat is not None:
            value = add_verstat(value, tags.verstat)
        if tags.display_prefix:
            value = add_display_prefix(value, tags.display_prefix)
        return value

    try:
        if tags.verstat is not None or tags.display_prefix:
            headers = [Header.make(h.key, edit(h.value)) if h.key == "p-asserted-identity" else h for h in headers]
            if tags.display_prefix or not pai_present:
                # verstat goes on PAI when there is one (else From); the display prefix on both.
                plain = tags if pai_present else None
                from_value = from_na.format(drop_tag=True)
                if plain is None and tags.verstat is not None:
                    from_value = add_verstat(from_value, tags.verstat)
                if tags.display_prefix:
                    from_value = add_display_prefix(from_value, tags.display_prefix)
                from_na = parse_name_addr(from_value)
    except ParseError:
        pass  # an identity we cannot rewrite is forwarded as it came
    if tags.attestation_indicator:
        headers = [h for h in headers if h.key != "p-attestation-indicator"]
        headers.append(Header.make("p-attestation-indicator", tags.attestation_indicator))
    for name, value in tags.set_headers:
        key = canonical_name(name)
        headers = [h for h in headers if h.key != key]
        headers.append(Header.make(key, value))
    for name, value in tags.add_headers:
        headers.append(Header.make(canonical_name(name), value))
    return headers, from_na


def apply_inbound(inbound: InboundOutcome, headers: list[Header], from_na: NameAddr
                  ) -> tuple[list[Header], NameAddr]:
    """The header changes verification asks for (verstat on each PAI, or on From; attestation headers)."""
    if inbound.pai is not None:
        values = iter(inbound.pai)
        headers = [Header.make("p-asserted-identity", next(values, h.value))
                   if h.key == "p-asserted-identity" else h for h in headers]
    if inbound.from_value is not None:
        from_na = parse_name_addr(inbound.from_value)
    if inbound.extra:
        headers = [*headers, *inbound.extra]
    return headers, from_na


def _first_hop(route: str, transport: str, fallback: Target) -> Target:
    """Where a request with this route set goes: its first (loose-routing) hop."""
    try:
        return resolve_target(parse_name_addr(route).uri, transport, fallback)
    except ParseError:
        return fallback


def rewrite_uri_host(uri: str, host: str, port: int) -> str:
    """`sip:user@old;params` -> `sip:user@host:port;params`: the trunk's address, the dialled user kept."""
    colon = uri.find(":")
    scheme = uri[:colon].lower() if colon > 0 else "sip"
    rest = uri[colon + 1 :]
    if scheme == "tel":
        semi = rest.find(";")
        number = rest if semi < 0 else rest[:semi]
        return f"sip:{number}@{host}:{port};user=phone"
    at = rest.rfind("@")
    user = rest[: at + 1] if at >= 0 else ""
    tail = rest[at + 1 :]
    cut = len(tail)
    for sep in ";?":
        i = tail.find(sep)
        if 0 <= i < cut:
            cut = i
    return f"{scheme}:{user}{host}:{port}{tail[cut:]}"


@dataclass(frozen=True, slots=True)
class CallSettings:
    """The timers a call runs by itself (RFC 3261 T1/T2, and when to give up on a trunk)."""

    t1: float = 0.5
    t2: float = 4.0
    failover_timeout: float = 2.0
    no_answer_timeout: float = 120.0


class CallHost:
    """What a Call needs from whoever runs it: the engine implements it; the call never imports the engine.

    A base class rather than a typing.Protocol: compiled with mypyc, calls through a native base class are
    vtable calls and its attributes native fields, where a Protocol makes each one a Python-level lookup on
    the per-message path.
    """

    txns: TransactionLayer
    queue: TimerQueue
    call_settings: CallSettings
    auth: Authenticator
    #: Wall-clock seconds minus the host's clock (PASSporT iat is wall time; timers are monotonic).
    wall_offset: float

    def new_branch(self) -> str:
        raise NotImplementedError

    def new_tag(self) -> str:
        raise NotImplementedError

    def new_call_id(self) -> str:
        raise NotImplementedError

    def contact_for(self, transport: str) -> str:
        raise NotImplementedError

    def via_host(self, transport: str) -> str:
        raise NotImplementedError

    def send(self, data: bytes, target: Target, sender: object = None) -> None:
        """Queue `data` for `target`; `sender`: the call it belongs to (see TransactionLayer.senders)."""
        raise NotImplementedError

    def make_response(self, req: Request, status: int, reason: str, to_tag: str | None,
                      extra: list[Header] | None = None) -> Response:
        raise NotImplementedError

    def leg_started(self, call_id: str, call: Call, leg: int) -> None:
        """A leg with this Call-ID belongs to `call` (0: A, 1: B) until the call ends."""
        raise NotImplementedError

    def call_answered(self, call: Call) -> None:
        raise NotImplementedError

    def call_failed_over(self, call: Call) -> None:
        raise NotImplementedError

    def verify_timed_out(self, call: Call, now: float) -> None:
        """The call's certificate did not come in time: decide it without (436 or the configured outcome)."""
        raise NotImplementedError

    def state_timed_out(self, call: Call, now: float) -> None:
        """The state the call's policies asked for did not come in time: decide it per `state.on_error`."""
        raise NotImplementedError

    def call_ended(self, call: Call) -> None:
        """The call is over: forget its legs and count it (its `tried_legs` are every B-leg it had)."""
        raise NotImplementedError


class Leg:
    """One dialog of the call, as stirgate sees it."""

    __slots__ = (
        "_call_id_header",
        "_contact_header",
        "_from_header",
        "_local_to_header",
        "_local_value",
        "_to_header",
        "_to_tag_seen",
        "ack_bytes",
        "call_id",
        "contact",
        "invite_cseq",
        "learned",
        "local_cseq",
        "local_na",
        "local_tag",
        "pending_ack",
        "remote_na",
        "remote_tag",
        "remote_target",
        "retx",
        "retx_interval",
        "retx_until",
        "route_set",
        "target",
        "transport",
    )

    def __init__(
        self,
        call_id: str,
        local_tag: str,
        local_na: NameAddr,
        remote_na: NameAddr,
        remote_tag: str | None,
        target: Target,
        contact: str,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.local_na = local_na
        self.remote_na = remote_na
        self.remote_tag = remote_tag
        self.remote_target = remote_na.uri
        #: Fixed when the dialog is set up (RFC 3261 12.1); a tuple, so an empty one is shared and not tracked.
        self.route_set: tuple[str, ...] = ()
        self.local_cseq = 0
        self.invite_cseq = 0
        self.learned: tuple[str | None, list[str]] | None = None
        self._from_header: Header | None = None
        self._call_id_header: Header | None = None
        self._local_to_header: Header | None = None
        self._contact_header: Header | None = None
        self._local_value: str | None = None
        self._to_header: Header | None = None
        self._to_tag_seen: str | None = None
        self.target = target
        self.transport = target[0]
        self.contact = contact
        #: CSeq of an INVITE whose 2xx this leg has been sent -> CSeq of that INVITE on the other leg.
        self.pending_ack: dict[int, int] = {}
        self.ack_bytes = b""
        self.retx: bytes | None = None
        self.retx_interval = 0.0
        self.retx_until = 0.0

    def local_value(self) -> str:
        """Our side's identity on this leg with our tag (From in our requests, To in our answers): made once."""
        value = self._local_value
        if value is None:
            value = self._local_value = self.local_na.format(tag=self.local_tag)
        return value

    def from_header(self) -> Header:
        h = self._from_header
        if h is None:
            h = self._from_header = Header.make("from", self.local_value())
        return h

    def to_header(self) -> Header:
        """The peer's identity with its tag (none before it answered); remade only when the tag changes."""
        h = self._to_header
        if h is None or self._to_tag_seen != self.remote_tag:
            value = self.remote_na.format(tag=self.remote_tag, drop_tag=self.remote_tag is None)
            h = self._to_header = Header.make("to", value)
            self._to_tag_seen = self.remote_tag
        return h

    def learn_remote(self, msg: Request | Response, route_reversed: bool) -> None:
        """Remote target and route set from a dialog-forming message (RFC 3261 12.1).

        A 180 and a 200 usually carry the same Contact and Record-Route: seen once, not parsed again.
        """
        contact_raw = msg.header("contact")
        rr = msg.values("record-route")
        seen = (contact_raw, rr)
        if seen == self.learned:
            return
        self.learned = seen
        try:
            contact = msg.contact
        except ParseError:
            contact = None  # a Contact we cannot read: keep sending where we did
        if contact is not None:
            self.remote_target = contact.uri
        if rr:
            self.route_set = tuple(reversed(rr)) if route_reversed else tuple(rr)
        if self.route_set:
            self.target = _first_hop(self.route_set[0], self.transport, self.target)
        else:
            self.target = resolve_target(self.remote_target, self.transport, self.target)

    def request(self, method: str, cseq: int, branch: str, via_host: str, extra: list[Header], body: bytes,
                max_forwards: int = 70) -> Request:
        """A request inside this leg's dialog."""
        headers = [Header.make("via", f"SIP/2.0/{self.transport.upper()} {via_host};branch={branch};rport")]
        if self.route_set:
            headers.extend(Header.make("route", r) for r in self.route_set)
        headers.append(_max_forwards_header(max_forwards))
        headers.append(self.from_header())
        headers.append(self.to_header())
        headers.append(self.call_id_header())
        headers.append(Header.make("cseq", f"{cseq} {method}"))
        if method in _CONTACT_METHODS:
            headers.append(self.contact_header())
        headers.extend(extra)
        return Request(method, self.remote_target, headers, body, via_key=(branch, via_host), cseq=(cseq, method))

    def local_to_header(self) -> Header:
        """Our identity with our tag as the To of our answers on this leg: made once."""
        h = self._local_to_header
        if h is None:
            h = self._local_to_header = Header.make("to", self.local_value())
        return h

    def call_id_header(self) -> Header:
        h = self._call_id_header
        if h is None:
            h = self._call_id_header = Header.make("call-id", self.call_id)
        return h

    def contact_header(self) -> Header:
        h = self._contact_header
        if h is None:
            h = self._contact_header = Header.make("contact", self.contact)
        return h


#: Requests that carry our Contact (they can change the remote target).
_CONTACT_METHODS: Final = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "REFER", "NOTIFY"})
_MAX_FORWARDS: dict[int, Header] = {}


def _max_forwards_header(value: int) -> Header:
    h = _MAX_FORWARDS.get(value)
    if h is None:
        h = Header.make("max-forwards", str(value))
        if 0 <= value <= 255:
            _MAX_FORWARDS[value] = h
    return h


class CallTimers:
    """A call's timer owner: deadlines by kind and the call they belong to.

    The link back to the call is cut when the call ends (`Call._end`), which also cancels every deadline:
    the cyclic GC is off, so call state must not keep a reference cycle alive.
    """

    __slots__ = ("call", "deadlines")

    def __init__(self, call: Call) -> None:
        self.call: Call | None = call
        self.deadlines: dict[str, float] = {}

    def on_timer(self, kind: str, now: float) -> None:
        call = self.call
        if call is not None:
            call.on_timer(kind, now)


class Call:
    """One call through stirgate. Transaction user of every transaction on both legs."""

    __slots__ = (
        "a",
        "a_invite",
        "answered_at",
        "b",
        "b_invite",
        "cancel_pending",
        "cancel_sent",
        "created_at",
        "deadlines",
        "decisions",
        "egress",
        "end_reason",
        "ended_at",
        "final_status",
        "host",
        "identity_present",
        "inbound",
        "ingress",
        "invite",
        "judging",
        "pai",
        "policy",
        "reinvites",
        "ruri",
        "signed",
        "source",
        "state",
        "tags",
        "target_index",
        "targets",
        "timers",
        "tried_legs",
        "verify_waited",
    )

    def __init__(
        self,
        host: CallHost,
        invite: Request,
        a_invite: Transaction,
        ingress: Trunk,
        source: Target,
        targets: tuple[TrunkTarget, ...],
        now: float,
    ) -> None:
        self.host = host
        self.invite: Request | None = invite
        self.a_invite: Transaction | None = a_invite
        self.b_invite: Transaction | None = None
        self.ingress = ingress
        self.source = source
        self.targets = targets
        self.target_index = 0
        self.egress: TrunkTarget | None = None
        self.state = ROUTING
        self.cancel_pending = False
        self.cancel_sent = False
        #: What the timer queue holds for this call: its link to the call is cut when the call ends, so an
        #: ended call is freed at once, not when its longest cancelled timer (no answer: 120 s) comes round.
        self.timers = CallTimers(self)
        self.deadlines = self.timers.deadlines
        self.created_at = now
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.final_status: int | None = None
        self.end_reason = ""
        #: Every B-leg tried (failover): a late 2xx from an abandoned trunk is ACKed and hung up there.
        self.tried_legs: list[Leg] = []
        #: STI-VS verdict and the header edits it asks for (calls from carrier trunks).
        self.inbound: InboundOutcome | None = None
        #: STI-AS result: None not tried yet, False could not sign.
        self.signed: SignedCall | bool | None = None
        self.verify_waited = False
        #: The policy chain this call was judged by, its context and result (kept for on_call_end and logs).
        self.policy: tuple[Chain, CallContext, ChainResult] | None = None
        #: While the call waits for its policies' state: the chain, the context and what was asked.
        self.judging: tuple[Chain, CallContext, StateRequest] | None = None
        #: (policy, mode, action, note) per chain entry, for the call record: the note says which rule fired
        #: with what value.
        self.decisions: Sequence[tuple[str, str, str, str]] = ()
        #: Relayed re-INVITE client transactions not answered yet: an INVITE in Proceeding has no timer of its
        #: own (RFC 3261 17.1.1), so when the call ends the ones still open are answered and dropped here.
        #: (None until the first: a dialog holds as few GC-tracked objects as it can, see docs/RELIABILITY.md.)
        self.reinvites: list[Transaction] | None = None
        #: Header changes the policies asked for on the B-leg INVITE.
        self.tags: Decision | None = None
        # Kept for the call record (the INVITE itself is freed at answer).
        self.ruri = invite.uri
        self.pai = invite.header("p-asserted-identity")
        self.identity_present = invite.has("identity")
        from_na = invite.from_
        contact = invite.contact
        a_target = resolve_target(contact.uri if contact else from_na.uri, source[0], source)
        self.a = Leg(invite.call_id, host.new_tag(), invite.to, from_na, from_na.tag, a_target,
                     host.contact_for(source[0]))
        if contact is not None:
            self.a.remote_target = contact.uri
        self.a.invite_cseq = invite.cseq[0]
        record_route = invite.values("record-route")
        if record_route:
            self.a.route_set = tuple(record_route)
            self.a.target = _first_hop(record_route[0], self.a.transport, self.a.target)
        self.b: Leg | None = None

    # --- B-leg set-up -----------------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Send the B-leg INVITE to the current target trunk."""
        invite = self.invite
        assert invite is not None
        host = self.host
        target = self.targets[self.target_index]
        self.egress = target
        dest: Target = (target.transport, target.host, target.port)
        a = self.a
        headers = passthrough(invite.headers)
        from_na = a.remote_na
        inbound = self.inbound
        if inbound is not None:
            headers, from_na = apply_inbound(inbound, headers, from_na)
        if self.tags is not None:
            headers, from_na = apply_tags(self.tags, headers, from_na)
        auth = host.auth
        if auth.signs(self.ingress, target.trunk):
            if self.signed is None:
                self.signed = auth.sign(invite, self.ingress, now + host.wall_offset) or False
            signed = self.signed
            has_identity = any(h.key == "identity" for h in headers)
            if isinstance(signed, SignedCall) and not (has_identity and auth.keeps_existing(self.ingress)):
                headers = [h for h in headers if h.key != "identity"]
                headers.append(Header.make("identity", signed.identity))
                headers.extend(Header.make("identity", v) for v in signed.extra)  # e.g. rcd (RFC 9795)
                if signed.date is not None and not any(h.key == "date" for h in headers):
                    headers.append(Header.make("date", signed.date))
            elif isinstance(signed, SignedCall) and signed.div is not None:
                headers.append(Header.make("identity", signed.div))  # forwarded: div after the caller's (RFC 8946)
        b = Leg(host.new_call_id(), host.new_tag(), from_na, a.local_na, None, dest,
                host.contact_for(target.transport))
        b.remote_target = rewrite_uri_host(invite.uri, target.host, target.port)
        b.local_cseq = b.invite_cseq = invite.cseq[0]
        self.b = b
        self.tried_legs.append(b)
        host.leg_started(b.call_id, self, 1)
        mf = invite.max_forwards
        req = b.request("INVITE", b.local_cseq, host.new_branch(), host.via_host(b.transport), headers,
                        invite.body, max_forwards=(mf if mf is not None else 70) - 1)
        txn = host.txns.send_request(req, dest, self, now)
        txn.peer = self.a_invite
        if self.a_invite is not None:
            self.a_invite.peer = txn
        self.b_invite = txn
        self.state = CALLING
        settings = host.call_settings
        host.queue.start(self.timers, "failover", now + settings.failover_timeout)
        host.queue.start(self.timers, "noanswer", now + settings.no_answer_timeout)

    def _try_next(self, now: float, status: int, reason: str) -> None:
        """This trunk failed: try the next one, or answer the caller with `status`."""
        old = self.b_invite
        if old is not None:
            old.peer = None
            old.tu = None
            if old.state in (TXN_CALLING, PROCEEDING):
                old.terminate()  # no final yet: stop retransmitting; a late 2xx is handled as stray
            # else: Completed, its timer D still absorbs and re-ACKs retransmitted finals
        self.b_invite = None
        self.deadlines.pop("failover", None)
        self.deadlines.pop("noanswer", None)
        if self.target_index + 1 < len(self.targets) and self.state != CANCELLING:
            self.target_index += 1
            self.host.call_failed_over(self)
            self.start(now)
            return
        self._answer_a(status, reason, now)
        self._end(f"failed:{status}", now)

    def reject(self, status: int, reason: str, headers: list[Header] | None, now: float) -> None:
        """Refuse the call before any B-leg exists (verification or policy)."""
        self._answer_a(status, reason, now, headers)
        self._end(f"rejected:{status}", now)

    def _answer_a(self, status: int, reason: str, now: float, headers: list[Header] | None = None) -> None:
        txn = self.a_invite
        if txn is not None and txn.state == PROCEEDING:
            resp = self.host.make_response(txn.request, status, reason, self.a.local_tag, headers)
            self.host.txns.respond(txn, resp, now)
            self.final_status = status

    # --- transaction user -------------------------------------------------------------------------------------
    def on_response(self, txn: Transaction, resp: Response, now: float) -> None:
        if txn is self.b_invite:
            if self.state != ENDED:
                self._on_b_invite_response(resp, now)
            return
        if txn.method == "CANCEL":
            return
        if resp.status >= 200 and self.reinvites is not None:
            self._forget_reinvite(txn)
        peer = txn.peer
        if peer is None or peer.state not in (PROCEEDING, TRYING):
            if resp.status >= 200 and txn.method == "INVITE":
                self._ack_other_leg(txn, resp, now)
            return
        if resp.status == 100:
            return
        x = self._leg_of(peer)
        assert x is not None
        out = self._relay_response(peer.request, resp, x)
        data = self.host.txns.respond(peer, out, now)
        if txn.method == "INVITE" and 200 <= resp.status < 300 and self.state != ENDED:
            x_cseq = peer.request.cseq[0]
            x.pending_ack[x_cseq] = txn.request.cseq[0]
            self._start_retx(x, data, now)
        if txn.method == "BYE" and resp.status >= 200:
            self._end("bye", now)

    def _forget_reinvite(self, txn: Transaction) -> None:
        """A relayed re-INVITE that got its final answer (or timed out) needs no 487 at the call's end: let it go
        (a held call would otherwise keep every re-INVITE it relayed, ~700 bytes each, until it ends)."""
        pending = self.reinvites
        if pending is not None and txn in pending:
            pending.remove(txn)
            if not pending:
                self.reinvites = None

    def _leg_of(self, txn: Transaction) -> Leg | None:
        """The leg a transaction belongs to, by its Call-ID."""
        return self.a if txn.request.call_id == self.a.call_id else self.b

    def on_timeout(self, txn: Transaction, now: float) -> None:
        if txn is self.b_invite:
            if self.state != ENDED:
                self._try_next(now, 503, "Service Unavailable")
            return
        if not txn.is_client:
            return  # our non-2xx was never ACKed: nothing to undo
        if self.reinvites is not None:
            self._forget_reinvite(txn)
        peer = txn.peer
        if peer is not None and peer.state in (PROCEEDING, TRYING):
            resp = self.host.make_response(peer.request, 408, "Request Timeout", None)
            self.host.txns.respond(peer, resp, now)
        if txn.method == "BYE":
            self._end("bye-timeout", now)

    def on_timer(self, kind: str, now: float) -> None:
        if self.state == ENDED:
            return
        if kind == "verify":
            if self.state == ROUTING:
                self.host.verify_timed_out(self, now)
        elif kind == "state":
            if self.state == ROUTING:
                self.host.state_timed_out(self, now)
        elif kind == "failover":
            if self.state == CALLING:
                self._try_next(now, 503, "Service Unavailable")
        elif kind == "noanswer":
            if self.state in (CALLING, EARLY):
                self._cancel_b(now)
                self._answer_a(408, "Request Timeout", now)
                self.end_reason = "no-answer"
        elif kind == "reap":
            self._end(self.end_reason or "cancelled", now)
        elif kind == "retx0" or kind == "retx1":
            leg = self.a if kind == "retx0" else self.b
            if leg is None or leg.retx is None:
                return
            if now >= leg.retx_until:
                self._hangup_unacked(now)  # no ACK within 64*T1
                return
            self.host.send(leg.retx, leg.target, self)
            leg.retx_interval = min(leg.retx_interval * 2, self.host.call_settings.t2)
            self.host.queue.start(self.timers, kind, min(now + leg.retx_interval, leg.retx_until))

    # --- B-leg INVITE responses -------------------------------------------------------------------------------
    def _on_b_invite_response(self, resp: Response, now: float) -> None:
        status = resp.status
        self.deadlines.pop("failover", None)
        b = self.b
        assert b is not None
        if status == 100:
            if self.cancel_pending:
                self._send_cancel(now)  # RFC 3261 9.1: any provisional, 100 included, allows the CANCEL
            return
        if status < 200:
            if resp.to_tag is not None:
                b.remote_tag = resp.to_tag
                b.learn_remote(resp, route_reversed=True)
            if self.state == CANCELLING or self.cancel_pending:
                self._send_cancel(now)
                return
            self.state = EARLY
            a_txn = self.a_invite
            if a_txn is not None and a_txn.state == PROCEEDING:
                self.host.txns.respond(a_txn, self._relay_response(a_txn.request, resp, self.a), now)
            return
        if status < 300:
            self.deadlines.pop("noanswer", None)
            b.remote_tag = resp.to_tag
            b.learn_remote(resp, route_reversed=True)
            if self.state in (ANSWERED, CONFIRMED):
                if b.ack_bytes:
                    self.host.send(b.ack_bytes, b.target, self)  # the 2xx was retransmitted: our ACK was lost
                return
            if self.state == CANCELLING:
                # The callee answered as we cancelled: accept and hang up at once (RFC 3261 9.1 race).
                self._ack_b_initial(self._b_invite_cseq(), [], b"", now)
                self._bye_leg(b, now)
                self._end(self.end_reason or "cancelled", now)
                return
            a_txn = self.a_invite
            assert a_txn is not None
            out = self._relay_response(a_txn.request, resp, self.a)
            b_invite = self.b_invite
            assert b_invite is not None
            self.a.pending_ack[a_txn.request.cseq[0]] = b_invite.request.cseq[0]
            self.state = ANSWERED
            self.answered_at = now
            self.final_status = status
            self.host.call_answered(self)
            self._start_retx(self.a, self.host.txns.respond(a_txn, out, now), now)
            self.invite = None  # no failover after an answer: free the original INVITE
            if isinstance(self.signed, SignedCall):
                self.signed = self.signed.spent()  # nor its Identity header values
            if self.inbound is not None:
                self.inbound = self.inbound.spent()  # nor the edits verification made to its B-leg INVITE
            return
        # Final failure from this trunk.
        self.deadlines.pop("noanswer", None)
        if self.state == CANCELLING:
            self._end(self.end_reason or "cancelled", now)
            return
        if status in FAILOVER_CODES and self.target_index + 1 < len(self.targets):
            self._try_next(now, status, resp.reason)
            return
        a_txn = self.a_invite
        if a_txn is not None and a_txn.state == PROCEEDING:
            if status == 503:
                # RFC 3261 16.7: a downstream 503 is not ours to pass upstream.
                out = self.host.make_response(a_txn.request, 500, "Server Internal Error", self.a.local_tag)
            else:
                out = self._relay_response(a_txn.request, resp, self.a)
            self.final_status = out.status
            self.host.txns.respond(a_txn, out, now)
        self._end(f"rejected:{status}", now)

    # --- ACK, CANCEL, BYE -------------------------------------------------------------------------------------
    def on_ack(self, req: Request, leg_index: int, now: float) -> None:
        """An ACK for a 2xx arrived on `leg_index`: stop retransmitting and ACK the other leg."""
        x = self.a if leg_index == 0 else self.b
        y = self.b if leg_index == 0 else self.a
        if x is None or y is None:
            return
        cseq = req.cseq[0]
        y_cseq = x.pending_ack.pop(cseq, None)
        if y_cseq is None:
            if x.retx is None and y.ack_bytes:
                return  # retransmitted ACK: the other leg already has ours
            return
        self.deadlines.pop("retx0" if leg_index == 0 else "retx1", None)
        x.retx = None
        if self.state == ANSWERED and leg_index == 0:
            self.state = CONFIRMED
        mf = req.max_forwards
        ack = y.request("ACK", y_cseq, self.host.new_branch(), self.host.via_host(y.transport),
                        passthrough(req.headers), req.body, max_forwards=(mf if mf is not None else 70) - 1)
        y.ack_bytes = ack.to_bytes()
        self.host.send(y.ack_bytes, y.target, self)

    def _b_invite_cseq(self) -> int:
        """CSeq of the B-leg's initial INVITE (later early-dialog requests moved b.local_cseq on)."""
        b = self.b
        assert b is not None
        return b.invite_cseq

    def _ack_b_initial(self, cseq: int, headers: list[Header], body: bytes, now: float) -> None:
        b = self.b
        assert b is not None
        ack = b.request("ACK", cseq, self.host.new_branch(), self.host.via_host(b.transport), headers, body)
        b.ack_bytes = ack.to_bytes()
        self.host.send(b.ack_bytes, b.target, self)

    def _ack_other_leg(self, txn: Transaction, resp: Response, now: float) -> None:
        """A 2xx for a relayed re-INVITE whose server side is gone: ACK it so the far end stops."""
        if resp.status >= 300:
            return
        y = self.b if resp.call_id == (self.b.call_id if self.b else None) else self.a
        if y is None:
            return
        ack = y.request("ACK", resp.cseq[0], self.host.new_branch(), self.host.via_host(y.transport), [], b"")
        self.host.send(ack.to_bytes(), y.target, self)

    def on_stray_2xx(self, resp: Response, leg_index: int, now: float) -> None:
        """A 2xx after its transaction ended: re-send our ACK, or, from a trunk we had given up on (failover),
        ACK it and hang up there."""
        leg = self.a if leg_index == 0 else self.b
        if leg_index == 1 and leg is not None and resp.call_id != leg.call_id:
            leg = next((old for old in self.tried_legs if old.call_id == resp.call_id), None)
            if leg is None:
                return
            if not leg.ack_bytes:
                leg.remote_tag = resp.to_tag
                leg.learn_remote(resp, route_reversed=True)
                ack = leg.request("ACK", resp.cseq[0], self.host.new_branch(), self.host.via_host(leg.transport),
                                  [], b"")
                leg.ack_bytes = ack.to_bytes()
                self.host.send(leg.ack_bytes, leg.target, self)
                self._bye_leg(leg, now, "SIP;cause=200;text=\"Call completed elsewhere\"")
                return
        if leg is not None and leg.ack_bytes:
            self.host.send(leg.ack_bytes, leg.target, self)

    def on_cancel(self, now: float) -> None:
        """The caller cancelled the INVITE (the CANCEL itself is already answered 200)."""
        if self.state not in (ROUTING, CALLING, EARLY):
            return
        self._answer_a(487, "Request Terminated", now)
        self.end_reason = "cancelled"
        self._cancel_b(now)

    def _cancel_b(self, now: float) -> None:
        self.deadlines.pop("failover", None)
        self.deadlines.pop("noanswer", None)
        prev = self.state
        self.state = CANCELLING
        txn = self.b_invite
        if txn is None or prev == ROUTING:
            self._end(self.end_reason or "cancelled", now)
            return
        if txn.state == PROCEEDING:
            self._send_cancel(now)
        else:
            # RFC 3261 9.1: no CANCEL before a provisional response; send it when one arrives.
            self.cancel_pending = True
        self.host.queue.start(self.timers, "reap", now + 64 * self.host.call_settings.t1)

    def _send_cancel(self, now: float) -> None:
        txn = self.b_invite
        if txn is None or self.cancel_sent or (not self.cancel_pending and self.state != CANCELLING):
            return
        self.cancel_pending = False
        self.cancel_sent = True
        inv = txn.request
        headers = [h for h in inv.headers if h.key in ("via", "from", "to", "call-id", "route", "max-forwards")]
        headers.append(Header.make("cseq", f"{inv.cseq[0]} CANCEL"))
        cancel = Request("CANCEL", inv.uri, headers)
        c = self.host.txns.send_request(cancel, txn.target, self, now)
        c.peer = None

    def on_request(self, txn: Transaction, req: Request, leg_index: int, now: float) -> None:
        """An in-dialog request from leg `leg_index` (BYE, re-INVITE, UPDATE, PRACK, INFO, ...): relay it."""
        host = self.host
        x = self.a if leg_index == 0 else self.b
        y = self.b if leg_index == 0 else self.a
        if req.method == "BYE" and leg_index == 0 and self.state in (ROUTING, CALLING, EARLY) \
                and req.to_tag == self.a.local_tag:
            # RFC 3261 15.1.2: a BYE on the early dialog: answer it, end the INVITE with 487, cancel the B-leg.
            host.txns.respond(txn, host.make_response(req, 200, "OK", None), now)
            self._answer_a(487, "Request Terminated", now)
            self.end_reason = "bye-early"
            self._cancel_b(now)
            return
        if req.method == "BYE" and leg_index == 1 and self.state in (CALLING, EARLY) and x is not None \
                and req.to_tag == x.local_tag:
            # A callee hanging up its early dialog (RFC 3261 15: only the caller should): the call has failed.
            host.txns.respond(txn, host.make_response(req, 200, "OK", None), now)
            self._answer_a(480, "Temporarily Unavailable", now)
            self._end("bye-b-early", now)
            return
        if x is None or y is None or y.remote_tag is None or self.state in (ENDED, CANCELLING):
            host.txns.respond(txn, host.make_response(req, 481, "Call/Transaction Does Not Exist", None), now)
            return
        if req.to_tag != x.local_tag:
            host.txns.respond(txn, host.make_response(req, 481, "Call/Transaction Does Not Exist", None), now)
            return
        if req.method == "BYE":
            for kind in ("retx0", "retx1"):
                self.deadlines.pop(kind, None)
            self.end_reason = "bye-a" if leg_index == 0 else "bye-b"
        if req.method == "INVITE" and req.contact is not None:
            x.remote_target = req.contact.uri  # target refresh
        y.local_cseq += 1
        mf = req.max_forwards
        out = y.request(req.method, y.local_cseq, host.new_branch(), host.via_host(y.transport),
                        passthrough(req.headers), req.body, max_forwards=(mf if mf is not None else 70) - 1)
        client = host.txns.send_request(out, y.target, self, now)
        client.peer = txn
        txn.peer = client
        if req.method == "INVITE":
            if self.reinvites is None:
                self.reinvites = [client]
            else:
                self.reinvites.append(client)
        if req.method == "INVITE":
            host.txns.respond(txn, host.make_response(req, 100, "Trying", None), now)

    def _bye_leg(self, leg: Leg, now: float, reason: str = 'SIP;cause=408;text="ACK Timeout"') -> None:
        leg.local_cseq += 1
        bye = leg.request("BYE", leg.local_cseq, self.host.new_branch(), self.host.via_host(leg.transport),
                          [Header.make("reason", reason)], b"")
        self.host.txns.send_request(bye, leg.target, self, now)

    def _hangup_unacked(self, now: float) -> None:
        """RFC 3261 13.3.1.4: a 2xx never ACKed ends the dialog with BYE on both legs."""
        self._bye_leg(self.a, now)
        b = self.b
        if b is not None and b.remote_tag is not None:
            if not b.ack_bytes:
                self._ack_b_initial(self._b_invite_cseq(), [], b"", now)  # RFC 3261 13.2.2.4: ACK every 2xx
            self._bye_leg(b, now)
        self._end("ack-timeout", now)

    # --- helpers ----------------------------------------------------------------------------------------------
    def _start_retx(self, leg: Leg, data: bytes, now: float) -> None:
        """RFC 3261 13.3.1.4: the 2xx (`data`, as sent) is re-sent over UDP until its ACK; without one after
        64*T1, hang up. One timer does both (its last run is clamped to the 64*T1 deadline): a second, always
        cancelled timer per call was measurable."""
        settings = self.host.call_settings
        leg.retx = data
        leg.retx_until = now + 64 * settings.t1
        if leg.transport == "udp":
            leg.retx_interval = settings.t1
            first = min(now + settings.t1, leg.retx_until)
        else:
            leg.retx_interval = 0.0
            first = leg.retx_until  # reliable transport: no re-sending, only the ACK deadline
        self.host.queue.start(self.timers, "retx0" if leg is self.a else "retx1", first)

    def _relay_response(self, req: Request, resp: Response, x: Leg) -> Response:
        """`resp` (from the other leg) rewritten as the answer to `req` on leg `x`."""
        to_tag = req.to_tag
        record_route = req.method == "INVITE" and to_tag is None  # dialog-forming: Record-Route echoed
        headers: list[Header] = []
        for h in req.headers:  # one pass, the request's order (Via and Record-Route keep theirs)
            key = h.key
            if key == "via" or key == "from" or key == "call-id" or key == "cseq":
                headers.append(h)
            elif key == "to":
                headers.append(h if to_tag is not None else x.local_to_header())
            elif record_route and key == "record-route":
                headers.append(h)
        if resp.has("contact"):
            headers.append(x.contact_header())
        headers.extend(passthrough(resp.headers))
        return Response(resp.status, resp.reason, headers, resp.body)

    def _end(self, reason: str, now: float) -> None:
        if self.state == ENDED:
            return
        self.state = ENDED
        if not self.end_reason:
            self.end_reason = reason
        self.ended_at = now
        self.deadlines.clear()
        self.timers.call = None
        # Nothing the caller asked may stay unanswered once the call is gone.
        a_invite = self.a_invite
        if a_invite is not None and a_invite.state == PROCEEDING:
            self._answer_a(487, "Request Terminated", now)
        for client in self.reinvites or ():
            if client.state in (TXN_CALLING, PROCEEDING):
                peer = client.peer
                if peer is not None and peer.state == PROCEEDING:
                    self.host.txns.respond(peer, self.host.make_response(peer.request, 487, "Request Terminated",
                                                                             None), now)
                client.terminate()
        self.reinvites = None
        # Break the call <-> transaction links so the call is freed by reference counting, not the GC.
        for txn in (self.a_invite, self.b_invite):
            if txn is not None:
                txn.peer = None
                txn.tu = None
        b_invite = self.b_invite
        if b_invite is not None and b_invite.state in (TXN_CALLING, PROCEEDING):
            b_invite.terminate()  # no final will matter any more (RFC 3261 9.1: destroyed after 64*T1)
        self.a_invite = None
        self.b_invite = None
        self.invite = None
        self.host.call_ended(self)

