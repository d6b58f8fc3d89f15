"""RFC 3261 section 17 transactions (with RFC 6026's Accepted state), as transition tables.

Every machine is a table `(state, event) -> (next state, actions)`: what happens is data, readable next to the
RFC's figures, and an event with no row is ignored (a stray retransmission must never raise). Actions are
small methods on `Transaction`. Times come in as `now`; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from proxy.sip.message import Request, Response
from proxy.sip.timers import TimerQueue

__all__ = [
    "CLIENT_INVITE",
    "CLIENT_NON_INVITE",
    "SERVER_INVITE",
    "SERVER_NON_INVITE",
    "Target",
    "TimerConfig",
    "Transaction",
    "TransactionLayer",
    "TransactionUser",
]

#: Where bytes go: (transport "udp"|"tcp"|"tls", host, port).
Target = tuple[str, str, int]

# States
CALLING: Final = "calling"
TRYING: Final = "trying"
PROCEEDING: Final = "proceeding"
COMPLETED: Final = "completed"
CONFIRMED: Final = "confirmed"
ACCEPTED: Final = "accepted"
TERMINATED: Final = "terminated"

Table = dict[tuple[str, str], tuple[str, tuple[str, ...]]]

#: What a settled non-INVITE transaction holds as its request (one shared, empty object).
_NO_REQUEST: Final = Request("", "", [])
#: States in which a transaction only absorbs retransmissions: its request's headers are no longer needed.
_SETTLED: Final = frozenset({COMPLETED, CONFIRMED, ACCEPTED})

# Events: request (a retransmission arriving at a server), ack, send_1xx, send_2xx, send_final (300-699 for
# INVITE, any final for non-INVITE), recv_1xx, recv_2xx, recv_final, and timer_<letter>.

SERVER_INVITE: Final[Table] = {
    (PROCEEDING, "request"): (PROCEEDING, ("resend_response",)),
    (PROCEEDING, "send_1xx"): (PROCEEDING, ("send_response",)),
    (PROCEEDING, "send_2xx"): (ACCEPTED, ("send_response", "start_L")),
    (PROCEEDING, "send_final"): (COMPLETED, ("send_response", "start_G", "start_H")),
    (COMPLETED, "request"): (COMPLETED, ("resend_response",)),
    (COMPLETED, "ack"): (CONFIRMED, ("stop_G", "stop_H", "start_I")),
    (COMPLETED, "timer_G"): (COMPLETED, ("resend_response", "restart_G")),
    (COMPLETED, "timer_H"): (TERMINATED, ("tu_timeout",)),
    (CONFIRMED, "request"): (CONFIRMED, ()),
    (CONFIRMED, "ack"): (CONFIRMED, ()),
    (CONFIRMED, "timer_I"): (TERMINATED, ()),
    (ACCEPTED, "request"): (ACCEPTED, ()),
    (ACCEPTED, "send_2xx"): (ACCEPTED, ("send_response",)),
    (ACCEPTED, "timer_L"): (TERMINATED, ()),
}

CLIENT_INVITE: Final[Table] = {
    (CALLING, "timer_A"): (CALLING, ("resend_request", "restart_A")),
    (CALLING, "timer_B"): (TERMINATED, ("tu_timeout",)),
    (CALLING, "recv_1xx"): (PROCEEDING, ("stop_A", "stop_B", "tu_response")),
    (CALLING, "recv_2xx"): (ACCEPTED, ("stop_A", "stop_B", "tu_response", "start_M")),
    (CALLING, "recv_final"): (COMPLETED, ("stop_A", "stop_B", "send_ack", "tu_response", "start_D")),
    (PROCEEDING, "recv_1xx"): (PROCEEDING, ("tu_response",)),
    (PROCEEDING, "recv_2xx"): (ACCEPTED, ("tu_response", "start_M")),
    (PROCEEDING, "recv_final"): (COMPLETED, ("send_ack", "tu_response", "start_D")),
    (COMPLETED, "recv_final"): (COMPLETED, ("send_ack",)),
    (COMPLETED, "timer_D"): (TERMINATED, ()),
    (ACCEPTED, "recv_2xx"): (ACCEPTED, ("tu_response",)),
    (ACCEPTED, "timer_M"): (TERMINATED, ()),
}

SERVER_NON_INVITE: Final[Table] = {
    (TRYING, "request"): (TRYING, ()),
    (TRYING, "send_1xx"): (PROCEEDING, ("send_response",)),
    (TRYING, "send_final"): (COMPLETED, ("send_response", "start_J")),
    (PROCEEDING, "request"): (PROCEEDING, ("resend_response",)),
    (PROCEEDING, "send_1xx"): (PROCEEDING, ("send_response",)),
    (PROCEEDING, "send_final"): (COMPLETED, ("send_response", "start_J")),
    (COMPLETED, "request"): (COMPLETED, ("resend_response",)),
    (COMPLETED, "timer_J"): (TERMINATED, ()),
}

CLIENT_NON_INVITE: Final[Table] = {
    (TRYING, "timer_E"): (TRYING, ("resend_request", "restart_E")),
    (TRYING, "timer_F"): (TERMINATED, ("tu_timeout",)),
    (TRYING, "recv_1xx"): (PROCEEDING, ("tu_response",)),
    (TRYING, "recv_final"): (COMPLETED, ("stop_E", "stop_F", "tu_response", "start_K")),
    (PROCEEDING, "timer_E"): (PROCEEDING, ("resend_request", "restart_E_t2")),
    (PROCEEDING, "timer_F"): (TERMINATED, ("tu_timeout",)),
    (PROCEEDING, "recv_1xx"): (PROCEEDING, ("tu_response",)),
    (PROCEEDING, "recv_final"): (COMPLETED, ("stop_E", "stop_F", "tu_response", "start_K")),
    (COMPLETED, "recv_final"): (COMPLETED, ()),
    (COMPLETED, "timer_K"): (TERMINATED, ()),
}


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer base values in seconds (Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class TransactionUser(Protocol):
    """The layer above (a B2BUA call leg) that hears what its transactions learn."""

    def on_response(self, txn: Transaction, resp: Response, now: float) -> None: ...

    def on_timeout(self, txn: Transaction, now: float) -> None: ...


class Transaction:
    """One transaction; `table` decides, the action methods do."""

    __slots__ = (
        "ack_bytes",
        "deadlines",
        "interval",
        "is_client",
        "key",
        "last_response",
        "layer",
        "method",
        "peer",
        "request",
        "request_bytes",
        "state",
        "table",
        "target",
        "tu",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple[str, str, str],
        table: Table,
        state: str,
        request: Request,
        target: Target,
        tu: TransactionUser | None,
        is_client: bool,
    ) -> None:
        self.layer = layer
        self.key = key
        self.table = table
        self.state = state
        self.request = request
        self.method = request.method
        self.target = target
        self.tu = tu
        self.is_client = is_client
        self.deadlines: dict[str, float] = {}
        self.interval = layer.timers.t1
        self.request_bytes = b""
        self.ack_bytes = b""
        self.last_response: bytes | None = None
        #: The transaction on the other leg that this one relays to or from (B2BUA pairing).
        self.peer: Transaction | None = None

    @property
    def reliable(self) -> bool:
        return self.target[0] != "udp"

    def fire(self, event: str, now: float, resp: Response | None = None, data: bytes | None = None) -> bool:
        """Apply one event. Returns False when the table has no row for it (the event is absorbed)."""
        row = self.table.get((self.state, event))
        if row is None:
            return False
        self.state = row[0]
        for action in _ACTIONS[row[1]]:
            action(self, now, resp, data)
        state = self.state
        if state == TERMINATED:
            self.layer._remove(self)
        elif state in _SETTLED and self.request.headers:
            self._settle()
        return True

    def _settle(self) -> None:
        """Entering a state that only absorbs retransmissions (for up to 64*T1): keep only what that needs, so
        that what lingers per call is small and bounded by its count, whatever was relayed."""
        # An INVITE's CSeq is still asked for (the B2BUA maps ACKs by it); a settled non-INVITE transaction
        # needs nothing of its request at all.
        self.request = self.request.skeleton() if self.method == "INVITE" else _NO_REQUEST
        if self.is_client:
            self.request_bytes = b""  # a client transaction never re-sends its request once answered
        elif self.state == ACCEPTED:
            self.last_response = None  # a 2xx is re-sent by the TU (RFC 6026), never by the transaction
        if self.method != "INVITE":
            # No settled non-INVITE state calls its TU or relays to its peer: letting go of them frees an ended
            # call at once instead of 64*T1 after its BYE (its INVITE transactions are let go by the call).
            self.tu = None
            self.peer = None

    def on_timer(self, kind: str, now: float) -> None:
        self.fire("timer_" + kind, now)

    # --- actions ----------------------------------------------------------------------------------------------
    def _send_response(self, now: float, resp: Response | None, data: bytes | None) -> None:
        assert data is not None
        self.last_response = data
        self.layer.send(data, self.target, self)

    def _resend_response(self, now: float, resp: Response | None, data: bytes | None) -> None:
        if self.last_response is not None:
            self.layer.send(self.last_response, self.target, self)

    def _resend_request(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self.layer.send(self.request_bytes, self.target, self)

    def _send_ack(self, now: float, resp: Response | None, data: bytes | None) -> None:
        if not self.ack_bytes and resp is not None:
            self.ack_bytes = build_non2xx_ack(self.request, resp).to_bytes()
        self.layer.send(self.ack_bytes, self.target, self)

    def _tu_response(self, now: float, resp: Response | None, data: bytes | None) -> None:
        if self.tu is not None and resp is not None:
            self.tu.on_response(self, resp, now)

    def _tu_timeout(self, now: float, resp: Response | None, data: bytes | None) -> None:
        if self.tu is not None:
            self.tu.on_timeout(self, now)

    def _start(self, kind: str, delay: float, now: float) -> None:
        self.layer.queue.start(self, kind, now + delay)

    def _stop(self, kind: str) -> None:
        self.deadlines.pop(kind, None)

    # Retransmission timers run only over UDP; wait timers are zero over reliable transports.
    def _start_G(self, now: float, resp: Response | None, data: bytes | None) -> None:
        if not self.reliable:
            self.interval = self.layer.timers.t1
            self._start("G", self.interval, now)

    def _restart_G(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self.interval = min(self.interval * 2, self.layer.timers.t2)
        self._start("G", self.interval, now)

    def _stop_G(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("G")

    def _start_H(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("H", 64 * self.layer.timers.t1, now)

    def _stop_H(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("H")

    def _start_I(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("I", 0.0 if self.reliable else self.layer.timers.t4, now)

    def _start_L(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("L", 64 * self.layer.timers.t1, now)

    def _start_J(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("J", 0.0 if self.reliable else 64 * self.layer.timers.t1, now)

    def _restart_A(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self.interval *= 2
        self._start("A", self.interval, now)

    def _stop_A(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("A")

    def _stop_B(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("B")

    def _start_D(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("D", 0.0 if self.reliable else 32.0, now)

    def _start_M(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("M", 64 * self.layer.timers.t1, now)

    def _restart_E(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self.interval = min(self.interval * 2, self.layer.timers.t2)
        self._start("E", self.interval, now)

    def _restart_E_t2(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self.interval = self.layer.timers.t2
        self._start("E", self.interval, now)

    def _stop_E(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("E")

    def _stop_F(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._stop("F")

    def _start_K(self, now: float, resp: Response | None, data: bytes | None) -> None:
        self._start("K", 0.0 if self.reliable else self.layer.timers.t4, now)

    def terminate(self) -> None:
        """Drop the transaction now (the call it served is gone)."""
        self.deadlines.clear()
        self.state = TERMINATED
        self.layer._remove(self)


Action = Callable[[Transaction, float, "Response | None", "bytes | None"], None]

#: Each table row's action names resolved once to the methods they name (no getattr per event).
_ACTIONS: dict[tuple[str, ...], tuple[Action, ...]] = {
    names: tuple(getattr(Transaction, "_" + name) for name in names)
    for table in (SERVER_INVITE, CLIENT_INVITE, SERVER_NON_INVITE, CLIENT_NON_INVITE)
    for _, names in table.values()
}


def build_non2xx_ack(invite: Request, resp: Response) -> Request:
    """RFC 3261 17.1.1.3: same R-URI, top Via, From, Call-ID, CSeq number; To from the response."""
    from proxy.sip.message import Header

    headers = [
        next(h for h in invite.headers if h.key == "via"),
        *[h for h in invite.headers if h.key in ("from", "call-id", "route", "max-forwards")],
        Header.make("to", resp.header("to") or ""),
        Header.make("cseq", f"{invite.cseq[0]} ACK"),
    ]
    return Request("ACK", invite.uri, headers)


class TransactionLayer:
    """Holds every live transaction, matches messages to them and collects the bytes to send."""

    __slots__ = ("clients", "outbox", "queue", "senders", "servers", "timers")

    def __init__(self, timers: TimerConfig, queue: TimerQueue) -> None:
        self.timers = timers
        self.queue = queue
        self.servers: dict[tuple[str, str, str], Transaction] = {}
        self.clients: dict[tuple[str, str, str], Transaction] = {}
        self.outbox: list[tuple[bytes, Target]] = []
        #: Who made each outbox entry, aligned with `outbox`, kept only when set to a list (HEP capture: a copy's
        #: correlation id comes from its sender, not from its bytes): a transaction's user (the call), else its
        #: request's Call-ID, noted as it sends (it may let go of both once settled); the sender the engine's
        #: own sends name (a call, or None).
        self.senders: list[object] | None = None

    def __len__(self) -> int:
        return len(self.servers) + len(self.clients)

    def send(self, data: bytes, target: Target, sender: object = None) -> None:
        self.outbox.append((data, target))
        senders = self.senders
        if senders is not None:
            if isinstance(sender, Transaction):
                sender = sender.tu if sender.tu is not None else sender.request.header("call-id")
            senders.append(sender)

    # --- server side ------------------------------------------------------------------------------------------
    @staticmethod
    def server_key(req: Request) -> tuple[str, str, str]:
        branch, sent_by = req.via_key
        method = "INVITE" if req.method == "ACK" else req.method
        return (branch, sent_by, method)

    def match_server(self, req: Request, now: float) -> bool:
        """Feed a request to its server transaction if it has one. True when it was absorbed there."""
        txn = self.servers.get(self.server_key(req))
        if txn is None:
            return False
        if req.method == "ACK":
            # ACK for a non-2xx final belongs to the transaction; ACK for 2xx (in Accepted) goes to the TU.
            return txn.fire("ack", now) or txn.state == CONFIRMED
        txn.fire("request", now)
        return True

    def find_server(self, branch: str, sent_by: str, method: str) -> Transaction | None:
        return self.servers.get((branch, sent_by, method))

    def create_server(self, req: Request, source: Target, tu: TransactionUser | None) -> Transaction:
        key = self.server_key(req)
        if req.method == "INVITE":
            txn = Transaction(self, key, SERVER_INVITE, PROCEEDING, req, source, tu, False)
        else:
            txn = Transaction(self, key, SERVER_NON_INVITE, TRYING, req, source, tu, False)
        self.servers[key] = txn
        return txn

    def respond(self, txn: Transaction, resp: Response, now: float) -> bytes:
        """Send `resp` on a server transaction; returns its bytes (the B2BUA keeps a 2xx's for re-sending)."""
        status = resp.status
        if status < 200:
            event = "send_1xx"
        elif status < 300 and txn.method == "INVITE":
            event = "send_2xx"
        else:
            event = "send_final"
        data = resp.to_bytes()
        txn.fire(event, now, resp, data)
        return data

    # --- client side ------------------------------------------------------------------------------------------
    def send_request(self, req: Request, target: Target, tu: TransactionUser, now: float) -> Transaction:
        """Start a client transaction for `req` (its top Via already carries a fresh branch)."""
        key = (req.via_key[0], req.method, "")  # known without a parse when the B2BUA wrote the request
        if req.method == "INVITE":
            txn = Transaction(self, key, CLIENT_INVITE, CALLING, req, target, tu, True)
            retransmit, timeout = "A", "B"
        else:
            txn = Transaction(self, key, CLIENT_NON_INVITE, TRYING, req, target, tu, True)
            retransmit, timeout = "E", "F"
        self.clients[key] = txn
        txn.request_bytes = req.to_bytes()
        self.send(txn.request_bytes, target, txn)
        if not txn.reliable:
            self.queue.start(txn, retransmit, now + self.timers.t1)
        self.queue.start(txn, timeout, now + 64 * self.timers.t1)
        return txn

    def match_client(self, resp: Response, now: float) -> bool:
        """Feed a response to its client transaction. False when none matches (a stray or late 2xx)."""
        try:
            branch = resp.via_key[0]
            method = resp.cseq[1]
        except ValueError:
            return False
        txn = self.clients.get((branch, method, ""))
        if txn is None:
            return False
        status = resp.status
        if status < 200:
            event = "recv_1xx"
        elif status < 300:
            event = "recv_2xx" if txn.method == "INVITE" else "recv_final"
        else:
            event = "recv_final"
        txn.fire(event, now, resp)
        return True

    def transport_failed(self, target: Target, now: float) -> None:
        """The transport could not reach `target`: every client transaction still waiting on it ends at once
        and its user hears a timeout (RFC 3261 17.1.4)."""
        for txn in [t for t in self.clients.values() if t.target == target and t.state in (CALLING, TRYING)]:
            tu = txn.tu
            txn.terminate()
            if tu is not None:
                tu.on_timeout(txn, now)

    def _remove(self, txn: Transaction) -> None:
        table = self.clients if txn.is_client else self.servers
        if table.get(txn.key) is txn:
            del table[txn.key]
        txn.deadlines.clear()
        txn.tu = None
        txn.peer = None
        # A call keeps its INVITE transactions for the whole dialog: the bytes they re-sent are not needed now.
        txn.request_bytes = b""
        txn.last_response = None
