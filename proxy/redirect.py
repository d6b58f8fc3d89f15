"""SIP redirect mode: STI-AS/VS for an SBC that sends its INVITE here and routes the call itself.

An INVITE from a trunk (or on a listener) marked `mode: redirect` is never relayed. It is verified, judged and
signed exactly as an inline call would be (the same Authenticator, trunk settings and policy chain), and then
answered at once:

- 302 Moved Temporarily, one Contact per target trunk of the routing table (q-values in failover order; the
  Request-URI as received when no route matches), each carrying the headers the SBC should add as URI
  headers: `<sip:+15551230002@198.51.100.5:5060?Identity=eyJ...%3Binfo%3D%3Chttps://...%3E%3Balg%3DES256...>`
  for signing, `?P-Asserted-Identity=...%3Bverstat%3DTN-Validation-Passed...` (or `From=` when the INVITE
  has no P-Asserted-Identity) for verification, plus policy tags;
- or the reject code the verification or the policy chain chose (428, 436-438, 403, 603, 608 with its
  Call-Info jCard, ...), with the same Reason header an inline call gets.

Stateless in the RFC 3261 8.2.7 sense: no transaction, no dialog, no B-leg; the ACK of the final response is
absorbed. A retransmitted INVITE gets the very same bytes again (answers are remembered for 64*T1), so it is
neither signed nor recorded twice. A verification whose certificate is not cached waits for the fetch like an
inline call (the transport fetches, then calls `resume`). Every answered INVITE leaves a `Redirected` for the
record and metrics hooks. Pure: time is passed in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import quote

from proxy.b2bua import OWNED_HEADERS, apply_inbound, apply_tags, rewrite_uri_host
from proxy.routing import TrunkTarget, dialled_digits
from proxy.service import has_chain, invite_context, judge
from proxy.sip.grammar import NameAddr, ParseError
from proxy.sip.message import Header, Request, Response, VersionError, canonical_name, parse, pretty_name
from proxy.sip.transaction import Target
from proxy.sip.validate import check_request
from proxy.stir.certs import CertEntry
from proxy.stir.signer import SignedCall

if TYPE_CHECKING:
    from policies.base import Decision
    from policies.loader import PolicySet
    from policies.state import Op, StateStore
    from proxy.authentication import Authenticator, InboundOutcome
    from proxy.config import Config, Trunk
    from proxy.protection import Pike
    from proxy.routing import Router

__all__ = ["REDIRECT_ALLOW", "Redirected", "Redirector", "contact_uri", "escape_hvalue"]

Outbox = list[tuple[bytes, Target]]

#: What a redirect listener answers itself; anything else gets 405 with this Allow.
REDIRECT_ALLOW: Final = "INVITE, ACK, CANCEL, OPTIONS"
#: RFC 3261 hvalue: unreserved / hnv-unreserved / escaped. Everything else in a header value is %-escaped.
_HVALUE_SAFE: Final = "[]/?:+$-_.!~*'()"
_HVALUE_UNSAFE: Final = re.compile(r"[^A-Za-z0-9\[\]/?:+$\-_.!~*'()]")
#: Most answers remembered for retransmitted INVITEs (each ~1-2 kB); beyond, the oldest are forgotten.
_RECENT_MAX: Final = 100_000


class _Settings(Protocol):
    @property
    def t1(self) -> float: ...
    @property
    def reject_unknown_source(self) -> bool: ...
    @property
    def max_ruri_length(self) -> int: ...
    @property
    def max_udp_message(self) -> int: ...
    @property
    def max_message(self) -> int: ...


class RedirectHost(Protocol):
    """What the redirector needs of the engine it fronts (the engine implements it; this module never imports
    the engine)."""

    config: Config
    auth: Authenticator
    router: Router
    pike: Pike
    policies: PolicySet | None
    stats: dict[str, int]
    overload_reasons: dict[str, int]
    outbox: Outbox
    accepting: bool
    wall_offset: float
    state: StateStore
    state_writes: list[tuple[list[Op], float]]

    @property
    def settings(self) -> _Settings: ...

    def new_tag(self) -> str: ...

    def make_response(self, req: Request, status: int, reason: str, to_tag: str | None,
                      extra: list[Header] | None = None) -> Response: ...

    def overloaded(self, source_ip: str = "") -> str | None: ...


def escape_hvalue(value: str) -> str:
    """A header value as a SIP URI header (RFC 3261 19.1.1 `hvalue`): `;`, `=`, `<`, `>`, `"`, `,`, `@`,
    `&`, `%`, spaces and non-ASCII are %-escaped; `:` and `/` stay (an x5u URL stays readable).

    Per call only the search for the first character to escape runs: what follows it (an Identity's
    `;info=<...>;alg=ES256;ppt=shaken`, a caller's PAI) repeats from call to call and its escaping is cached
    (urllib's quote walks the characters in Python: 20 us for an Identity)."""
    m = _HVALUE_UNSAFE.search(value)
    if m is None:
        return value
    i = m.start()
    return value[:i] + _escape_tail(value[i:])


@functools.lru_cache(maxsize=512)
def _escape_tail(tail: str) -> str:
    return quote(tail, safe=_HVALUE_SAFE)


def contact_uri(uri: str, headers: list[tuple[str, str]]) -> str:
    """`uri` with `?Name=escaped&...` URI headers (appended with `&` when it has some already)."""
    if not headers:
        return uri
    query = "&".join(f"{name}={escape_hvalue(value)}" for name, value in headers)
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _with_transport(uri: str, transport: str) -> str:
    if transport != "tcp":
        return uri
    cut = uri.find("?")
    head, tail = (uri, "") if cut < 0 else (uri[:cut], uri[cut:])
    if ";transport=" in head.lower():
        return uri
    return f"{head};transport=tcp{tail}"


class Redirected:
    """What one answered INVITE leaves for the call record, the metrics and the log."""

    __slots__ = ("at", "call_id", "contacts", "decisions", "display", "egress", "from_uri", "identity_present",
                 "inbound", "ingress", "pai", "reason", "ruri", "signed", "source", "status", "x5u_fetched")

    def __init__(self, *, call_id: str, ingress: Trunk, source: Target, ruri: str, from_uri: str,
                 display: str | None, pai: str | None, identity_present: bool, inbound: InboundOutcome | None,
                 signed: SignedCall | None, decisions: list[tuple[str, str, str, str]], status: int, reason: str,
                 contacts: tuple[str, ...], egress: str | None, at: float, x5u_fetched: bool) -> None:
        self.call_id = call_id
        self.ingress = ingress
        self.source = source
        self.ruri = ruri
        self.from_uri = from_uri
        self.display = display
        self.pai = pai
        self.identity_present = identity_present
        self.inbound = inbound
        self.signed = signed
        self.decisions = decisions
        self.status = status
        self.reason = reason
        self.contacts = contacts
        self.egress = egress
        self.at = at
        self.x5u_fetched = x5u_fetched

    @property
    def end_reason(self) -> str:
        """How the INVITE ended, in the words of a call record's `end_reason`."""
        return "redirected" if self.status == 302 else f"rejected:{self.status}"


class _Pending:
    """An INVITE waiting for its x5u certificate."""

    __slots__ = ("outbox", "req", "source", "trunk", "values")

    def __init__(self, req: Request, source: Target, trunk: Trunk, outbox: Outbox, values: list[str]) -> None:
        self.req = req
        self.source = source
        self.trunk = trunk
        self.outbox = outbox
        self.values = values


class Redirector:
    """Redirect mode for one engine (its config, Authenticator, router, policies and counters)."""

    def __init__(self, engine: RedirectHost) -> None:
        self.engine = engine
        #: Call-ID -> INVITE waiting for a certificate fetch.
        self.pending: dict[str, _Pending] = {}
        #: (Call-ID, Identity values) whose certificates the transport must fetch, then `resume`.
        self.fetch_requests: list[tuple[str, list[str]]] = []
        #: Called with every answered INVITE (records, metrics, logs).
        self.hooks: list[Callable[[Redirected], None]] = []
        #: (Call-ID, Via branch) -> (forget after, answer bytes): retransmissions get the same answer.
        self._recent: dict[tuple[str, str], tuple[float, bytes]] = {}
        for key in ("redirected", "redirect_rejected", "redirect_retransmissions"):
            engine.stats.setdefault(key, 0)

    # --- a listener in redirect mode --------------------------------------------------------------------------
    def receive(self, data: bytes, source: Target, now: float, outbox: Outbox) -> None:
        """One message on a redirect listener; answers go to `outbox`. Never raises for bad input."""
        engine = self.engine
        stats = engine.stats
        settings = engine.settings
        if len(data) > (settings.max_udp_message if source[0] == "udp" else settings.max_message):
            stats["oversize"] += 1
            return
        if not data.strip(b"\r\n \t\x00"):
            return
        try:
            msg = parse(data)
        except (ParseError, VersionError):
            stats["unparseable"] += 1
            return
        if isinstance(msg, Response):
            stats["stray_responses"] += 1
            return
        stats["requests"] += 1
        try:
            self._on_request(msg, source, now, outbox)
        except ParseError as exc:
            stats["bad_requests"] += 1
            if msg.method != "ACK":
                self._stateless(msg, source, outbox, 400, f"Bad Request ({exc})")

    def _on_request(self, req: Request, source: Target, now: float, outbox: Outbox) -> None:
        engine = self.engine
        trunk = engine.router.trunk_for_source(source[1])
        pike = engine.pike
        if (trunk is None or pike.covers_trunks) and pike.blocked(source[1], now):
            engine.stats["pike_dropped"] += 1
            return
        method = req.method
        if trunk is None:
            if engine.settings.reject_unknown_source and method != "ACK":
                engine.stats["rejected_unknown_source"] += 1
                self._stateless(req, source, outbox, 403, "Forbidden")
            else:
                engine.stats["dropped_unknown_source"] += 1
            return
        problem = check_request(req, engine.settings.max_ruri_length)
        if problem is not None:
            engine.stats["bad_requests"] += 1
            if method != "ACK":
                self._stateless(req, source, outbox, problem[0], problem[1])
            return
        if method == "ACK":
            return  # the ACK of a final answer: nothing to do without a transaction
        if method == "INVITE" and req.to_tag is None:
            engine.stats["invites"] += 1
            self.on_invite(req, source, trunk, now, outbox)
        elif method == "OPTIONS":
            self._stateless(req, source, outbox, 200, "OK", [Header.make("allow", REDIRECT_ALLOW)])
        elif method == "CANCEL" or req.to_tag is not None:
            self._stateless(req, source, outbox, 481, "Call/Transaction Does Not Exist")
        else:
            self._stateless(req, source, outbox, 405, "Method Not Allowed", [Header.make("allow", REDIRECT_ALLOW)])

    # --- an INVITE to redirect ----------------------------------------------------------------------------------
    def on_invite(self, req: Request, source: Target, trunk: Trunk, now: float, outbox: Outbox | None = None) -> None:
        """Answer an INVITE in redirect mode (302 or a rejection), or park it until its certificate is fetched."""
        out = self.engine.outbox if outbox is None else outbox
        key = (req.call_id, req.via_key[0])
        seen = self._recent.get(key)
        if seen is not None:
            self.engine.stats["redirect_retransmissions"] += 1
            out.append((seen[1], source))
            return
        if req.call_id in self.pending:
            return  # retransmitted while its certificate is fetched: answered when it arrives
        engine = self.engine
        if not engine.accepting:
            engine.stats["not_accepting"] += 1
            self._stateless(req, source, out, 503, "Service Unavailable", [Header.make("retry-after", "5")])
            return
        why = engine.overloaded(source[1])
        if why is None and len(self.pending) >= engine.config.overload.max_pending_fetches:
            why = "pending-fetches"
        if why is not None:
            engine.stats["overload_rejected"] += 1
            engine.overload_reasons[why] = engine.overload_reasons.get(why, 0) + 1
            self._stateless(req, source, out, 503, "Service Unavailable",
                            [Header.make("retry-after", str(engine.config.overload.retry_after))])
            return
        auth = engine.auth
        if auth.verifies(trunk):
            values = auth.identity_values(req)
            certs = auth.cached_certs(values)
            if certs is None:
                self.pending[req.call_id] = _Pending(req, source, trunk, out, values)
                self.fetch_requests.append((req.call_id, values))
                return
            self._answer(req, source, trunk, now, out, certs, values, False)
            return
        self._answer(req, source, trunk, now, out, None, None, False)

    def resume(self, call_id: str, now: float, fetched: Mapping[str, CertEntry] | None = None) -> None:
        """The certificate a parked INVITE needed is fetched (or the fetch failed: 436 then)."""
        p = self.pending.pop(call_id, None)
        if p is not None:
            self._answer(p.req, p.source, p.trunk, now, p.outbox, fetched or {}, p.values, True)

    def _answer(self, req: Request, source: Target, trunk: Trunk, now: float, out: Outbox,
                fetched: Mapping[str, CertEntry] | None, values: list[str] | None, waited: bool) -> None:
        engine = self.engine
        auth = engine.auth
        wall = now + engine.wall_offset
        facts = _Facts(req, trunk, source, now, waited)
        inbound: InboundOutcome | None = None
        if auth.verifies(trunk):
            inbound = auth.verify(req, trunk, wall, fetched, values)
            facts.inbound = inbound
            if inbound.reject is not None:
                engine.stats["verification_rejected"] += 1
                extra = [Header.make("reason", inbound.reason_header)] if inbound.reason_header else None
                self._refuse(facts, out, inbound.reject[0], inbound.reject[1], extra)
                return
        tags: Decision | None = None
        targets: tuple[TrunkTarget, ...] = ()
        pset = engine.policies
        if has_chain(pset, trunk):
            assert pset is not None
            result = judge(pset, trunk, invite_context(auth, pset, req, trunk, (source[1], source[2]),
                                                       inbound.result if inbound is not None else None, wall),
                           engine.state, engine.config.state.on_error, engine.state_writes)
            assert result is not None
            facts.decisions = [(s.name, s.mode, s.decision.outcome, s.decision.note) for s in result.steps]
            d = result.decision
            if d.action == "reject":
                engine.stats["policy_rejected"] += 1
                headers = [Header.make(canonical_name(n), v) for n, v in d.response_headers()]
                self._refuse(facts, out, d.code or 603, d.reason or "Decline", headers)
                return
            if d.action == "route":
                router_targets = engine.router.targets
                targets = tuple(router_targets[n] for n in d.trunks if n in router_targets)
            if d.tagged:
                tags = d
        if not targets:
            try:
                user = req.ruri.user
            except ParseError:
                user = None
            targets = engine.router.route(trunk, dialled_digits(user))
        uri_headers = self._edits(req, trunk, wall, inbound, tags, facts)
        contacts = tuple(self._contacts(req.uri, targets, uri_headers))
        facts.contacts = contacts
        facts.egress = targets[0].trunk.name if targets else None
        resp = engine.make_response(req, 302, "Moved Temporarily", engine.new_tag(),
                                    [Header.make("contact", c) for c in contacts])
        engine.stats["redirected"] += 1
        self._send(facts, out, resp, 302, "Moved Temporarily")

    def _edits(self, req: Request, trunk: Trunk, wall: float, inbound: InboundOutcome | None,
               tags: Decision | None, facts: _Facts) -> list[tuple[str, str]]:
        """The headers an inline B-leg would carry that the INVITE does not: what the SBC must add."""
        headers = [h for h in req.headers if h.key not in OWNED_HEADERS]
        before = {(h.key, h.value) for h in headers}
        from_na: NameAddr = req.from_
        if inbound is not None:
            headers, from_na = apply_inbound(inbound, headers, from_na)
        if tags is not None:
            headers, from_na = apply_tags(tags, headers, from_na)
        auth = self.engine.auth
        if trunk.name in auth.trunk_signing:
            signed = auth.sign(req, trunk, wall)
            if signed is not None:
                facts.signed = signed
                if not (req.has("identity") and auth.keeps_existing(trunk)):
                    headers = [h for h in headers if h.key != "identity"]
                    headers.append(Header.make("identity", signed.identity))
                    if signed.date is not None and not req.has("date"):
                        headers.append(Header.make("date", signed.date))
        out = [(pretty_name(h.key), h.value) for h in headers if (h.key, h.value) not in before]
        new_from = from_na.format(drop_tag=True)
        if new_from != req.from_.format(drop_tag=True):
            out.insert(0, ("From", new_from))
        return out

    @staticmethod
    def _contacts(ruri: str, targets: tuple[TrunkTarget, ...], headers: list[tuple[str, str]]) -> list[str]:
        if not targets:
            return [f"<{contact_uri(ruri, headers)}>"]
        out = []
        n = len(targets)
        for i, t in enumerate(targets):
            uri = _with_transport(rewrite_uri_host(ruri, t.host, t.port), t.transport)
            q = "" if n == 1 else f";q={max(0.1, 1.0 - 0.1 * i):.1f}"
            out.append(f"<{contact_uri(uri, headers)}>{q}")
        return out

    # --- answers ----------------------------------------------------------------------------------------------
    def _refuse(self, facts: _Facts, out: Outbox, status: int, reason: str, extra: list[Header] | None) -> None:
        engine = self.engine
        engine.stats["redirect_rejected"] += 1
        resp = engine.make_response(facts.req, status, reason, engine.new_tag(), extra)
        self._send(facts, out, resp, status, reason)

    def _send(self, facts: _Facts, out: Outbox, resp: Response, status: int, reason: str) -> None:
        data = resp.to_bytes()
        out.append((data, facts.source))
        req = facts.req
        self._remember((req.call_id, req.via_key[0]), data, facts.now)
        if self.hooks:
            done = facts.done(status, reason)
            for hook in self.hooks:
                hook(done)

    def _remember(self, key: tuple[str, str], data: bytes, now: float) -> None:
        recent = self._recent
        while recent:
            oldest = next(iter(recent))
            if recent[oldest][0] > now and len(recent) < _RECENT_MAX:
                break
            del recent[oldest]
        recent[key] = (now + 64 * self.engine.settings.t1, data)

    def _stateless(self, req: Request, source: Target, out: Outbox, status: int, reason: str,
                   extra: list[Header] | None = None) -> None:
        engine = self.engine
        try:
            resp = engine.make_response(req, status, reason, engine.new_tag() if status > 100 else None, extra)
        except ParseError:
            return
        out.append((resp.to_bytes(), source))


class _Facts:
    """What `_answer` learns about one INVITE on its way, turned into a Redirected at the end."""

    __slots__ = ("contacts", "decisions", "egress", "inbound", "now", "req", "signed", "source", "trunk", "waited")

    def __init__(self, req: Request, trunk: Trunk, source: Target, now: float, waited: bool) -> None:
        self.req = req
        self.trunk = trunk
        self.source = source
        self.now = now
        self.waited = waited
        self.inbound: InboundOutcome | None = None
        self.signed: SignedCall | None = None
        self.decisions: list[tuple[str, str, str, str]] = []
        self.contacts: tuple[str, ...] = ()
        self.egress: str | None = None

    def done(self, status: int, reason: str) -> Redirected:
        req = self.req
        try:
            from_na = req.from_
            from_uri, display = from_na.uri, from_na.display
        except ParseError:
            from_uri, display = "", None
        return Redirected(
            call_id=req.call_id, ingress=self.trunk, source=self.source, ruri=req.uri, from_uri=from_uri,
            display=display, pai=req.header("p-asserted-identity"), identity_present=req.has("identity"),
            inbound=self.inbound, signed=self.signed, decisions=self.decisions, status=status, reason=reason,
            contacts=self.contacts, egress=self.egress, at=self.now, x5u_fetched=self.waited,
        )
