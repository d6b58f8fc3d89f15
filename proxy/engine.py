"""The sans-I/O SIP engine: bytes and addresses in, bytes and addresses out, time passed in.

`receive(data, source, now)` takes one datagram (or one framed TCP message); `handle_timer(now)` runs what is
due; `outbox` holds what to send. The asyncio transport is a thin loop around these; tests drive the engine in
memory with a fake clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import count

from policies.base import CallContext, CallOutcome
from policies.chain import Chain, Counters
from policies.loader import PolicySet
from policies.state import MemoryStore, Op, StateStore
from proxy.admission import DROPPED, UNKNOWN, Admission, Gate
from proxy.authentication import Authenticator
from proxy.b2bua import ROUTING, Call, CallHost, CallSettings
from proxy.config import Config, Trunk
from proxy.protection import Pike
from proxy.redirect import Redirector
from proxy.routing import Router, dialled_digits
from proxy.service import invite_context
from proxy.sip.grammar import ParseError
from proxy.sip.message import Header, Request, Response, VersionError, canonical_name, parse
from proxy.sip.peek import Peek, peek_request, stateless_response
from proxy.sip.timers import TimerQueue
from proxy.sip.transaction import Target, TimerConfig, TransactionLayer
from proxy.sip.validate import check_request
from proxy.stir.certs import CertEntry

__all__ = ["Engine", "EngineSettings"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, NOTIFY, REFER"
_START_403 = b"SIP/2.0 403 Forbidden\r\n"
_START_503 = b"SIP/2.0 503 Service Unavailable\r\n"
_IN_DIALOG_ONLY = frozenset({"BYE", "UPDATE", "PRACK", "INFO", "NOTIFY", "REFER"})
_NOT_RELAYED = frozenset({"REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH"})
_STATS = (
    "requests",
    "responses",
    "invites",
    "answered",
    "calls_ended",
    "failovers",
    "rejected_unknown_source",
    "dropped_unknown_source",
    "bad_requests",
    "unparseable",
    "oversize",
    "stray_responses",
    "not_accepting",
    "internal_errors",
    "verification_rejected",
    "policy_rejected",
    "overload_rejected",
    "limit_rejected",
    "shed_dropped",
    "shed_retransmissions",
    "stateless_acks",
    "pike_dropped",
    "tcp_refused",
    "tcp_timeouts",
    "state_timeouts",
    "state_errors",
)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    failover_timeout: float = 2.0
    no_answer_timeout: float = 120.0
    max_udp_message: int = 16384
    max_message: int = 65536
    max_ruri_length: int = 512
    reject_unknown_source: bool = True
    server_header: str = ""

    def call_settings(self) -> CallSettings:
        return CallSettings(self.t1, self.t2, self.failover_timeout, self.no_answer_timeout)

    @classmethod
    def from_config(cls, config: Config) -> EngineSettings:
        s = config.sip
        return cls(
            t1=s.t1,
            t2=s.t2,
            t4=s.t4,
            failover_timeout=s.failover_timeout,
            no_answer_timeout=s.no_answer_timeout,
            max_udp_message=s.max_udp_message,
            max_message=max(s.max_udp_message, s.max_tcp_message),
            max_ruri_length=s.max_ruri_length,
            reject_unknown_source=config.unknown_source == "reject",
            server_header=s.server_header,
        )


class Engine(CallHost):
    """Every call and transaction of one worker; the host of its calls (`CallHost`)."""

    def __init__(self, config: Config, local: dict[str, tuple[str, int]],
                 settings: EngineSettings | None = None) -> None:
        self.config = config
        self.settings = settings or EngineSettings.from_config(config)
        self.call_settings = self.settings.call_settings()
        self.router = Router(config)
        self.local = local
        self.queue = TimerQueue()
        self.txns = TransactionLayer(TimerConfig(self.settings.t1, self.settings.t2, self.settings.t4), self.queue)
        self.outbox = self.txns.outbox
        self.calls: dict[str, tuple[Call, int]] = {}
        self.accepting = True
        #: Stopping (SIGTERM): OPTIONS probes get 503 so a load balancer sends no new calls, while INVITEs are
        #: still taken until `accepting` falls (sip.drain_probe_delay later).
        self.draining = False
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.call_end_hooks: list[Callable[[Call], None]] = []
        #: HEP capture (`hep:` configured, see `note_for_capture`): the Call-ID of the message `receive` last
        #: parsed ("" when it parsed none).
        self.keep_call_ids = False
        self.received_call_id = ""
        if config.hep is not None:
            self.note_for_capture()
        self.auth = Authenticator(config)
        #: The loaded policy file (the server loads it, with its data, before traffic; swapped on reload).
        self.policies: PolicySet | None = None
        #: Policy hit counts, handed to every policy set loaded so counts survive reloads.
        self.policy_counters = Counters()
        #: Load, for overload control: calls not yet answered, calls alive, calls waiting for an x5u fetch,
        #: and the event loop's lag in seconds (measured by the transport).
        self.calls_in_setup = 0
        self.setup_by_source: dict[str, int] = {}
        self.live_calls = 0
        self.fetch_waiting = 0
        self.loop_lag = 0.0
        #: Share of the UDP receive buffer in use (the transport samples it): the earliest overload signal.
        self.receive_queue = 0.0
        #: Datagrams the kernel dropped on a full receive queue (the transport reads the count).
        self.receive_drops = 0
        self.overload_reasons: dict[str, int] = {}
        self.pike = Pike(config.protection)
        #: Wall-clock seconds minus the engine's clock: PASSporT iat is wall time, timers are monotonic.
        self.wall_offset = 0.0
        #: (A-leg Call-ID, Identity values) whose certificates the transport must fetch, then `resume`.
        self.fetch_requests: list[tuple[str, list[str]]] = []
        #: Where policies keep what they remember (policies.state). The memory store answers at once; an
        #: asynchronous one (Redis, set by the server) is fed `state_requests` (A-leg Call-ID, ops, wall time;
        #: answered through `state_ready`) and `state_writes` (ops recorded after calls, no answer) by the
        #: transport.
        self.state: StateStore = MemoryStore(config.state.max_keys)
        self.state_requests: list[tuple[str, list[Op], float]] = []
        self.state_writes: list[tuple[list[Op], float]] = []
        self.state_waiting = 0
        self._prefix = os.urandom(5).hex()
        self._seq = count(1)
        #: Per-trunk limits and fair shares at the door (proxy.admission).
        self.admission = Admission(config, linger=64 * self.settings.t1)
        #: The To tags of stateless answers start with this (never a hex digit after the prefix): an ACK that
        #: carries it answers one of them and is absorbed before any parse.
        self._stateless_prefix = self._prefix + "s"
        self._stateless_marker = self._stateless_prefix.encode()
        #: Why the door refused the INVITE being handled, when it left the answer to the full parse.
        self._refused = ""
        #: Prebuilt header lines of the stateless answers (formatting them per answer costs a share of it).
        self._server_line = b"Server: " + self.settings.server_header.encode("latin-1", "replace") + b"\r\n" \
            if self.settings.server_header else b""
        self._retry_after_lines: dict[int, bytes] = {}
        self._contacts = {t: f"<sip:{h}:{p}{'' if t == 'udp' else ';transport=' + t}>" for t, (h, p) in local.items()}
        self._via_hosts = {t: f"{h}:{p}" for t, (h, p) in local.items()}
        #: INVITEs from trunks in redirect mode are answered there (302/reject), never relayed.
        self.redirector = Redirector(self)

    def reconfigure(self, config: Config, policies: PolicySet | None) -> None:
        """A reloaded config: routes, trunks, STIR settings and policies for new calls.

        Calls in progress keep what they hold (targets, chain); the listen addresses need a restart.
        """
        if config.listen != self.config.listen:
            raise ValueError("listen addresses changed: restart stirgate to apply them")
        router = Router(config)
        auth = self.auth if config.stir == self.config.stir else Authenticator(config)
        self.config = config
        self.settings = EngineSettings.from_config(config)
        self.call_settings = self.settings.call_settings()
        self.router = router
        self.auth = auth
        self.policies = policies
        self.pike = Pike(config.protection)
        self.admission = Admission(config, self.admission, linger=64 * self.settings.t1)
        self._server_line = b"Server: " + self.settings.server_header.encode("latin-1", "replace") + b"\r\n" \
            if self.settings.server_header else b""
        self._retry_after_lines = {}

    # --- identifiers ------------------------------------------------------------------------------------------
    def new_branch(self) -> str:
        return f"z9hG4bK{self._prefix}{next(self._seq):x}"

    @property
    def instance_id(self) -> str:
        """This worker's random id: it begins every tag, branch and B-leg Call-ID it makes (a record's
        b_call_id names the worker, and so the node, that carried the call)."""
        return self._prefix

    def new_tag(self) -> str:
        return f"{self._prefix}{next(self._seq):x}"

    def new_call_id(self) -> str:
        return f"{self.b_leg_call_id_prefix}{next(self._seq):x}"

    @property
    def b_leg_call_id_prefix(self) -> str:
        """What every Call-ID this engine makes (its B-legs') starts with: a message without it is no B-leg of
        ours (HEP capture correlates it without a lookup)."""
        return f"{self._prefix}-"

    def contact_for(self, transport: str) -> str:
        return self._contacts.get(transport) or self._contacts["udp"]

    def via_host(self, transport: str) -> str:
        return self._via_hosts.get(transport) or self._via_hosts["udp"]

    # --- I/O boundary -----------------------------------------------------------------------------------------
    def note_for_capture(self) -> None:
        """Keep what HEP capture reads so that its copies need not search the bytes: the Call-ID of each received
        message (`received_call_id`) and who sent each queued one (`txns.senders`)."""
        self.keep_call_ids = True
        self.txns.senders = []

    def send(self, data: bytes, target: Target, sender: object = None) -> None:
        self.txns.send(data, target, sender)

    def next_deadline(self) -> float | None:
        return self.queue.next_deadline()

    def transport_failed(self, target: Target, now: float) -> None:
        """Nothing could be delivered to `target` (connection refused, TLS peer untrusted or misnamed): its
        client transactions fail now (RFC 3261 8.1.3.1: as a 503), so a call fails over without waiting."""
        self.txns.transport_failed(target, now)

    def earliest_deadline(self) -> float | None:
        """A lower bound of next_deadline (cancelled timers included), at the cost of one index."""
        return self.queue.earliest()

    def handle_timer(self, now: float) -> None:
        self.queue.fire_due(now)

    def _setup_done(self, source_ip: str) -> None:
        """A call left set-up (answered or ended)."""
        self.calls_in_setup -= 1
        left = self.setup_by_source.get(source_ip, 1) - 1
        if left > 0:
            self.setup_by_source[source_ip] = left
        else:
            self.setup_by_source.pop(source_ip, None)

    def active_calls(self) -> int:
        return self.live_calls

    def receive(self, data: bytes, source: Target, now: float) -> None:
        """One message from `source`. Never raises: bad input is answered or dropped and counted."""
        if self.keep_call_ids:
            self.received_call_id = ""
        limit = self.settings.max_udp_message if source[0] == "udp" else self.settings.max_message
        if len(data) > limit:
            self.stats["oversize"] += 1
            self._answer_unparseable(data, source, "", 513, "Message Too Large")
            return
        if not data.strip(b"\r\n \t\x00"):
            return  # keep-alive
        if self._screen(data, source, now):
            return
        try:
            msg = parse(data)
        except VersionError as version_error:  # (one name per handler: mypyc types each name once)
            self._reply_stateless(version_error.request, source, 505, "Version Not Supported")
            return
        except ParseError as exc:
            self.stats["unparseable"] += 1
            self._answer_unparseable(data, source, str(exc))
            return
        if self.keep_call_ids:
            self.received_call_id = msg.header("call-id") or ""
        try:
            if isinstance(msg, Response):
                self.stats["responses"] += 1
                self._on_response(msg, source, now)
            else:
                self.stats["requests"] += 1
                self._on_request(msg, source, now)
        except ParseError as exc:
            self.stats["bad_requests"] += 1
            if isinstance(msg, Request) and msg.method != "ACK":
                self._reply_stateless(msg, source, 400, f"Bad Request ({exc})")
        except Exception:
            self.stats["internal_errors"] += 1
            raise

    # --- the door: decided before any parse -------------------------------------------------------------------
    def _screen(self, data: bytes, source: Target, now: float) -> bool:
        """What is settled from the source address and the first bytes alone: responses and requests from
        addresses no trunk owns, pike, new INVITEs beyond their trunk's limits or shed under overload, and ACKs
        to stateless answers. True when the message was handled here (answered statelessly, or dropped)."""
        trunk = self.router.trunk_for(source)
        if data.startswith(b"SIP/2.0 "):
            if trunk is None:
                self.stats["dropped_unknown_source"] += 1
                return True
            return False
        if (trunk is None or self.pike.covers_trunks) and self.pike.blocked(source[1], now):
            self.stats["pike_dropped"] += 1
            return True
        if trunk is None:
            peek = peek_request(data) if self.settings.reject_unknown_source else None
            if peek is None or peek.method == b"ACK":
                self.stats["dropped_unknown_source"] += 1
            else:
                self.stats["rejected_unknown_source"] += 1
                self.send(stateless_response(peek, _START_403, self._stateless_tag(hash(data)),
                                             self._server_line), source)
            return True
        if data.startswith(b"INVITE "):
            return self._screen_invite(data, source, trunk, now)
        if data.startswith(b"ACK ") and data.find(self._stateless_marker) >= 0:
            self.stats["stateless_acks"] += 1  # the ACK of a stateless answer: nothing to match it to
            return True
        return False

    def _screen_invite(self, data: bytes, source: Target, trunk: Trunk, now: float) -> bool:
        self._refused = ""
        adm = self.admission
        # Hashing the datagram is the door's largest cost for a call taken: only while refusals are remembered.
        key = hash(data) if adm.remembering(now) else 0
        answer = adm.remembered(key, now) if key else UNKNOWN
        if answer != UNKNOWN:
            # A retransmission of an INVITE refused moments ago: the same answer again, nothing new kept.
            peek = peek_request(data)
            if peek is not None and not peek.to_tagged:
                self.stats["shed_retransmissions"] += 1
                if answer != DROPPED:
                    self._send_503(peek, key, answer, source)
                return True
        gate = adm.gate(trunk.name)
        if gate is None:
            return False
        adm.offer(gate, source[1], now)
        why = self.refusal(gate, source[1], now)
        if not why:
            return False
        peek = peek_request(data)
        if peek is None:
            self._refused = why  # not plain enough to answer from the bytes: refused after the parse
            return False
        if peek.to_tagged or peek.call_id.decode("latin-1") in self.calls:
            return False  # in-dialog, or a retransmission of a call already taken: never shed
        limit = why == "max-cps" or why == "max-calls"
        self._count_shed(gate, why, limit)
        if limit and gate.drop:
            self.stats["shed_dropped"] += 1
            adm.remember(key or hash(data), now, DROPPED)
            return True
        retry_after = gate.retry_after if limit else self.config.overload.retry_after
        key = key or hash(data)
        adm.remember(key, now, retry_after)
        self._send_503(peek, key, retry_after, source)
        return True

    def _send_503(self, peek: Peek, seed: int, retry_after: int, source: Target) -> None:
        extra = self._retry_after_lines.get(retry_after)
        if extra is None:
            extra = b"Retry-After: %d\r\n" % retry_after + self._server_line
            self._retry_after_lines[retry_after] = extra
        self.send(stateless_response(peek, _START_503, self._stateless_tag(seed), extra), source)

    def _count_shed(self, gate: Gate, why: str, limit: bool) -> None:
        self.admission.count_shed(gate, why)
        if limit:
            self.stats["limit_rejected"] += 1
        elif why == "draining":
            self.stats["not_accepting"] += 1
        else:
            self.stats["overload_rejected"] += 1
            self.overload_reasons[why] = self.overload_reasons.get(why, 0) + 1

    def _stateless_tag(self, seed: int) -> bytes:
        """The To tag of a stateless answer: the same for the same request (its retransmissions get the same
        answer, RFC 3261 8.2.7), marked so that its ACK is recognised at the door."""
        return self._stateless_marker + b"%x" % (seed & 0xFFFFFFFFFFFF)

    # --- requests ---------------------------------------------------------------------------------------------
    def _on_request(self, req: Request, source: Target, now: float) -> None:
        trunk = self.router.trunk_for(source)
        if trunk is None:
            self.stats["dropped_unknown_source"] += 1  # (the door answered or dropped it already)
            return
        problem = check_request(req, self.settings.max_ruri_length)
        if problem is not None:
            self.stats["bad_requests"] += 1
            if req.method != "ACK":
                extra = None
                if problem[0] == 420:  # RFC 3261 8.2.2.3: name what we do not support
                    extra = [Header.make("unsupported", ", ".join(req.values("proxy-require")))]
                self._reply_stateless(req, source, problem[0], problem[1], extra)
            return
        txns = self.txns
        if txns.match_server(req, now):
            return  # a retransmission, answered by its transaction
        method = req.method
        to_tag = req.to_tag
        if method == "ACK":
            entry = self.calls.get(req.call_id)
            if entry is not None and to_tag is not None:
                entry[0].on_ack(req, entry[1], now)
            return
        if method == "CANCEL":
            self._on_cancel(req, source, now)
            return
        if to_tag is not None:
            entry = self.calls.get(req.call_id)
            if entry is None:
                self._reply_stateless(req, source, 481, "Call/Transaction Does Not Exist")
                return
            txn = txns.create_server(req, source, entry[0])
            entry[0].on_request(txn, req, entry[1], now)
            return
        # Requests stirgate answers itself are answered statelessly: nothing lingers for 64*T1 per request, so
        # a stream of them costs no memory (a retransmission gets the same answer again).
        if method == "INVITE":
            self._on_invite(req, source, trunk, now)
        elif method == "OPTIONS":
            # A load balancer's health probe (Kamailio dispatcher): 503 while draining or overloaded takes this
            # node out of rotation before it stops taking calls. Stateless either way.
            if self.not_ready():
                self._reply_stateless(req, source, 503, "Service Unavailable",
                                      [Header.make("retry-after", str(self.config.overload.retry_after))])
                return
            self._reply_stateless(req, source, 200, "OK", [Header.make("allow", ALLOW),
                                                           Header.make("accept", "application/sdp")])
        elif method in _IN_DIALOG_ONLY:
            self._reply_stateless(req, source, 481, "Call/Transaction Does Not Exist")
        else:
            self._reply_stateless(req, source, 405, "Method Not Allowed", [Header.make("allow", ALLOW)])

    def not_ready(self) -> str:
        """Why this worker takes no new call now ("" when it does): what an OPTIONS probe gets 503 for, and
        what /readyz answers."""
        if not self.accepting or self.draining:
            return "draining"
        bound = self.overloaded()
        return "" if bound is None else f"overloaded: {bound}"

    def overloaded(self, source_ip: str = "") -> str | None:
        """Why no new call at all can be taken now (a hard bound reached), or None."""
        o = self.config.overload
        if self.calls_in_setup >= o.max_calls_in_setup:
            return "calls-in-setup"
        if self.setup_by_source.get(source_ip, 0) >= max(1.0, o.max_calls_in_setup * o.max_setup_share_per_source):
            return "source-share"
        if self.live_calls >= o.max_dialogs:
            return "dialogs"
        if len(self.txns) >= o.max_transactions:
            return "transactions"
        if self.fetch_waiting >= o.max_pending_fetches:
            return "pending-fetches"
        return None

    def strained(self) -> str:
        """Why the process is short of capacity ("" when it is not): new calls are then shed from the source
        addresses over their fair share only, the others keep being served."""
        o = self.config.overload
        if self.receive_queue > o.max_receive_queue:
            return "receive-queue"
        if self.loop_lag * 1000.0 > o.max_loop_lag_ms:
            return "loop-lag"
        f = o.soft_fraction
        if self.calls_in_setup >= f * o.max_calls_in_setup:
            return "calls-in-setup"
        if self.live_calls >= f * o.max_dialogs:
            return "dialogs"
        if len(self.txns) >= f * o.max_transactions:
            return "transactions"
        if self.fetch_waiting >= f * o.max_pending_fetches:
            return "pending-fetches"
        return ""

    def refusal(self, gate: Gate, source_ip: str, now: float) -> str:
        """Why a new call from this trunk and source cannot be taken now ("" when it can), in order: draining,
        the trunk's contracted limits, a hard bound, then a strain that sheds only sources over their fair
        share of the recent INVITEs."""
        if not self.accepting:
            return "draining"
        why = self.admission.over_limit(gate, now)
        if why:
            return why
        hard = self.overloaded(source_ip)
        if hard is not None:
            return hard
        soft = self.strained()
        if soft and not self.admission.within_share(source_ip, now):
            return soft
        return ""

    def _on_invite(self, req: Request, source: Target, trunk: Trunk, now: float) -> None:
        self.stats["invites"] += 1
        if trunk.mode == "redirect":
            self.redirector.on_invite(req, source, trunk, now)
            return
        refused = self._refused
        self._refused = ""
        if refused and req.call_id not in self.calls:
            # Refused at the door, but too unusual to answer from the bytes: answered from the parse, as
            # statelessly (a refused call must cost nothing to remember).
            gate = self.admission.gate(trunk.name)
            limit = refused == "max-cps" or refused == "max-calls"
            if gate is not None:
                self._count_shed(gate, refused, limit)
                if limit and gate.drop:
                    self.stats["shed_dropped"] += 1
                    return
            retry_after = gate.retry_after if gate is not None and limit else self.config.overload.retry_after
            self._reply_stateless(req, source, 503, "Service Unavailable",
                                  [Header.make("retry-after", str(retry_after))])
            return
        existing = self.calls.get(req.call_id)
        if existing is not None:
            call, leg = existing
            if leg == 0 and req.from_tag == call.a.remote_tag and req.cseq[0] == call.a.invite_cseq:
                return  # a late retransmission of the call's own INVITE, after its transaction ended
        txns = self.txns
        txn = txns.create_server(req, source, None)
        if not self.accepting:
            self.stats["not_accepting"] += 1
            txns.respond(txn, self.make_response(req, 503, "Service Unavailable", self.new_tag(),
                                                 [Header.make("retry-after", "5")]), now)
            return
        if existing is not None:
            # Same Call-ID, new branch, no To tag: a loop or a confused peer, not a new call.
            txns.respond(txn, self.make_response(req, 482, "Loop Detected", self.new_tag()), now)
            return
        txns.respond(txn, self.make_response(req, 100, "Trying", None), now)
        try:
            user = req.ruri.user
        except ParseError:
            user = None
        targets = self.router.route(trunk, dialled_digits(user))
        if not targets:
            txns.respond(txn, self.make_response(req, 404, "No Route", self.new_tag()), now)
            return
        call = Call(self, req, txn, trunk, source, targets, now)
        txn.tu = call
        self.calls[req.call_id] = (call, 0)
        self.live_calls += 1
        self.calls_in_setup += 1
        self.setup_by_source[source[1]] = self.setup_by_source.get(source[1], 0) + 1
        gate = self.admission.gate(trunk.name)
        if gate is not None:
            self.admission.admitted(gate)
        self.admit(call, now)

    def admit(self, call: Call, now: float, fetched: Mapping[str, CertEntry] | None = None) -> None:
        """Verify (calls from carrier trunks) and then start the B-leg, or reject.

        When the x5u certificate is not cached, the call waits: the transport fetches it and calls `resume`;
        the call's "verify" timer bounds the wait, after which a missing certificate fails as 436.
        """
        invite = call.invite
        assert invite is not None
        auth = self.auth
        if auth.verifies(call.ingress):
            values = auth.identity_values(invite)
            if not call.verify_waited:
                fetched = auth.cached_certs(values)
                if fetched is None:
                    call.verify_waited = True
                    self.fetch_requests.append((invite.call_id, values))
                    self.fetch_waiting += 1
                    self.queue.start(call.timers, "verify", now + auth.wait_timeout)
                    return
            call.deadlines.pop("verify", None)
            outcome = auth.verify(invite, call.ingress, now + self.wall_offset, fetched, values)
            call.inbound = outcome
            if outcome.reject is not None:
                self.stats["verification_rejected"] += 1
                extra = [Header.make("reason", outcome.reason_header)] if outcome.reason_header else None
                call.reject(outcome.reject[0], outcome.reject[1], extra, now)
                return
        if self.policies is not None:
            self._judge(call, invite, now)
        else:
            call.start(now)

    def _judge(self, call: Call, invite: Request, now: float) -> None:
        """Run the ingress trunk's policy chain, after gathering the state it needs (at once from the memory
        store; from Redis the call waits for the answer, at most `state.timeout_ms`), then start the call."""
        assert self.policies is not None
        chain = self.policies.chain_for(call.ingress.name)
        if not len(chain):
            call.start(now)
            return
        # verification read the INVITE's numbers already: call_tns does not parse them again
        ctx = invite_context(self.auth, self.policies, invite, call.ingress, (call.source[1], call.source[2]),
                             call.inbound.result if call.inbound is not None else None, now + self.wall_offset)
        request = chain.observe(ctx)
        facts = None
        if request is not None:
            if request.ops and not self.state.synchronous:
                call.judging = (chain, ctx, request)
                self.state_requests.append((invite.call_id, request.ops, ctx.now))
                self.state_waiting += 1
                self.queue.start(call.timers, "state", now + self.config.state.timeout_ms / 1000.0)
                return
            facts = request.facts(self.state.execute(request.ops, ctx.now) if request.ops else [])
        self._decide(call, chain, ctx, facts, now)

    def _decide(self, call: Call, chain: Chain, ctx: CallContext, facts: dict[object, list[object]] | None,
                now: float) -> None:
        """Evaluate the chain with the call's state (None: the store did not answer) and act on it."""
        result = chain.evaluate(ctx, facts, self.config.state.on_error)
        call.policy = (chain, ctx, result)
        call.decisions = [(step.name, step.mode, step.decision.outcome, step.decision.note) for step in result.steps]
        decision = result.decision
        if decision.action == "reject":
            self.stats["policy_rejected"] += 1
            headers = [Header.make(canonical_name(n), v) for n, v in decision.response_headers()]
            call.reject(decision.code or 603, decision.reason or "Decline", headers, now)
            return
        if decision.action == "route":
            targets = tuple(self.router.targets[n] for n in decision.trunks if n in self.router.targets)
            if targets:
                call.targets = targets
        if decision.tagged:
            call.tags = decision
        call.start(now)

    def state_ready(self, call_id: str, results: list[object] | None, now: float) -> None:
        """The state a waiting call asked for (None: the store failed): decide the call now. A late answer,
        for a call already decided without it or gone, is dropped."""
        entry = self.calls.get(call_id)
        if entry is None:
            return
        call = entry[0]
        judging = call.judging
        if judging is None or call.state != ROUTING:
            return
        call.judging = None
        call.deadlines.pop("state", None)
        self.state_waiting -= 1
        if results is None:
            self.stats["state_errors"] += 1
        chain, ctx, request = judging
        self._decide(call, chain, ctx, request.facts(results), now)

    def resume(self, call_id: str, now: float, fetched: Mapping[str, CertEntry] | None = None) -> None:
        """The certificates a waiting call needed are fetched (or failed): carry on with it."""
        self.fetch_waiting -= 1
        entry = self.calls.get(call_id)
        if entry is not None and entry[0].state == ROUTING and entry[0].verify_waited:
            self.admit(entry[0], now, fetched)

    def _on_cancel(self, req: Request, source: Target, now: float) -> None:
        txns = self.txns
        branch, sent_by = req.via_key
        invite_txn = txns.find_server(branch, sent_by, "INVITE")
        if invite_txn is None:
            self._reply_stateless(req, source, 481, "Call/Transaction Does Not Exist")
            return
        txn = txns.create_server(req, source, None)
        txns.respond(txn, self.make_response(req, 200, "OK", None), now)
        call = invite_txn.tu
        if isinstance(call, Call):
            call.on_cancel(now)

    # --- responses --------------------------------------------------------------------------------------------
    def _on_response(self, resp: Response, source: Target, now: float) -> None:
        if self.router.trunk_for(source) is None:
            self.stats["dropped_unknown_source"] += 1
            return
        if self.txns.match_client(resp, now):
            return
        self.stats["stray_responses"] += 1
        if 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
            entry = self.calls.get(resp.call_id)
            if entry is not None:
                entry[0].on_stray_2xx(resp, entry[1], now)

    # --- building responses -----------------------------------------------------------------------------------
    def make_response(self, req: Request, status: int, reason: str, to_tag: str | None,
                      extra: list[Header] | None = None) -> Response:
        """A response stirgate writes itself (RFC 3261 8.2.6.2: Via, From, To, Call-ID, CSeq copied)."""
        headers: list[Header] = []
        for h in req.headers:
            key = h.key
            if key == "via" or key == "from" or key == "call-id" or key == "cseq":
                headers.append(h)
            elif key == "to":
                if to_tag is not None and status > 100 and req.to_tag is None:
                    headers.append(Header.make("to", req.to.format(tag=to_tag)))
                else:
                    headers.append(h)
        if self.settings.server_header:
            headers.append(Header.make("server", self.settings.server_header))
        if extra:
            headers.extend(extra)
        return Response(status, reason, headers)

    def _reply_stateless(self, req: Request, source: Target, status: int, reason: str,
                         extra: list[Header] | None = None) -> None:
        """An answer that leaves no transaction behind, built from the request's own header lines (RFC 3261
        8.2.6.2: every Via, From, To, Call-ID, CSeq) with a To tag that is the same for a retransmission."""
        lines = [f"SIP/2.0 {status} {reason}"]
        has_via = False
        try:
            tagged = status == 100 or req.to_tag is not None
        except ParseError:
            tagged = True  # a To we cannot read is copied as it came
        for h in req.headers:
            key = h.key
            if key == "via":
                lines.append(h.raw)
                has_via = True
            elif key == "from" or key == "call-id" or key == "cseq":
                lines.append(h.raw)
            elif key == "to":
                if not tagged:
                    seed = hash(req.header("via") or "") ^ hash(req.header("call-id") or "")
                    lines.append(h.raw + ";tag=" + self._stateless_tag(seed).decode())
                else:
                    lines.append(h.raw)
        if not has_via:
            return  # nowhere to address it
        if self.settings.server_header:
            lines.append("Server: " + self.settings.server_header)
        if extra:
            lines.extend(h.raw for h in extra)
        lines.append("Content-Length: 0\r\n\r\n")
        self.send("\r\n".join(lines).encode("latin-1", "replace"), source)

    def _answer_unparseable(self, data: bytes, source: Target, problem: str, status: int = 400,
                            reason: str = "") -> None:
        """An error answer (400 by default) for a request we could not take, when its Via, Call-ID and CSeq
        can still be picked out of the bytes."""
        text = data[:8192].decode("latin-1")
        lines = text.replace("\r\n", "\n").split("\n")
        first = lines[0]
        if first.startswith("SIP/") or first.startswith("ACK "):
            return
        keep: list[Header] = []
        for line in lines[1:]:
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = canonical_name(name)
            if key in ("via", "from", "to", "call-id", "cseq"):
                keep.append(Header(key, line, value.strip()))
        keys = {h.key for h in keep}
        if not {"via", "call-id", "cseq"} <= keys:
            return
        if any(h.key == "cseq" and "ACK" in h.value for h in keep):
            return
        if not reason:
            reason = "Bad Request (" + "".join(c for c in problem if c.isprintable() and c not in "\r\n")[:60] + ")"
        self.send(Response(status, reason, keep).to_bytes(), source)

    # --- CallHost: what calls report -------------------------------------------------------------------------
    def leg_started(self, call_id: str, call: Call, leg: int) -> None:
        self.calls[call_id] = (call, leg)

    def call_answered(self, call: Call) -> None:
        self._setup_done(call.source[1])
        self.stats["answered"] += 1

    def call_failed_over(self, call: Call) -> None:
        self.stats["failovers"] += 1

    def verify_timed_out(self, call: Call, now: float) -> None:
        self.admit(call, now)

    def state_timed_out(self, call: Call, now: float) -> None:
        judging = call.judging
        if judging is None:
            return
        call.judging = None
        self.state_waiting -= 1
        self.stats["state_timeouts"] += 1
        chain, ctx, request = judging
        self._decide(call, chain, ctx, request.facts(None), now)

    def call_ended(self, call: Call) -> None:
        self.live_calls -= 1
        self.admission.released(call.ingress.name)
        if call.answered_at is None:
            self._setup_done(call.source[1])
        calls = self.calls
        calls.pop(call.a.call_id, None)
        for leg in call.tried_legs:
            calls.pop(leg.call_id, None)
        self.stats["calls_ended"] += 1
        if call.judging is not None:
            call.judging = None
            self.state_waiting -= 1
        if call.policy is not None:
            self._record_outcome(call)
        for hook in self.call_end_hooks:
            hook(call)

    def _record_outcome(self, call: Call) -> None:
        """What the call's policies want remembered of how it ended (short calls, answer share ...)."""
        assert call.policy is not None
        chain, ctx, _ = call.policy
        answered = call.answered_at is not None
        ended = call.ended_at if call.ended_at is not None else call.created_at
        duration = ended - call.answered_at if call.answered_at is not None else 0.0
        ops = chain.ended(ctx, CallOutcome(answered, duration, call.final_status, call.b is not None))
        if not ops:
            return
        if self.state.synchronous:
            self.state.record(ops, ended + self.wall_offset)
        else:
            self.state_writes.append((ops, ended + self.wall_offset))
