"""RFC 3261 section 17 transaction machines (and RFC 6026 Accepted), driven with a fake TU and an injected clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from proxy.sip import transaction as tx
from proxy.sip.message import Request, Response, parse
from proxy.sip.timers import TimerQueue
from proxy.sip.transaction import TimerConfig, Transaction, TransactionLayer

UDP = ("udp", "192.0.2.20", 5060)
TCP = ("tcp", "192.0.2.20", 5060)
T1, T2, T4 = 0.5, 4.0, 5.0


class FakeTU:
    def __init__(self) -> None:
        self.responses: list[tuple[int, float]] = []
        self.timeouts: list[float] = []

    def on_response(self, txn: Transaction, resp: Response, now: float) -> None:
        self.responses.append((resp.status, now))

    def on_timeout(self, txn: Transaction, now: float) -> None:
        self.timeouts.append(now)


class Rig:
    def __init__(self) -> None:
        self.queue = TimerQueue()
        self.layer = TransactionLayer(TimerConfig(T1, T2, T4), self.queue)
        self.tu = FakeTU()
        self.now = 0.0

    def sent(self) -> list[tuple[bytes, Any]]:
        out = list(self.layer.outbox)
        self.layer.outbox.clear()
        return out

    def run_to(self, until: float) -> list[tuple[float, bytes]]:
        """Fire timers one deadline at a time up to `until`; returns (time, bytes) of everything sent."""
        out: list[tuple[float, bytes]] = []
        while True:
            nxt = self.queue.next_deadline()
            if nxt is None or nxt > until:
                break
            self.now = nxt
            self.queue.fire_due(nxt)
            out += [(nxt, d) for d, _ in self.sent()]
        self.now = until
        return out


def request(method: str = "INVITE", branch: str = "z9hG4bKc1", cseq: int = 1) -> Request:
    m = parse((f"{method} sip:bob@192.0.2.20 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:a@192.0.2.1>;tag=ft\r\nTo: <sip:bob@192.0.2.20>\r\n"
               f"Call-ID: cid1\r\nCSeq: {cseq} {method}\r\nRoute: <sip:p1;lr>\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(m, Request)
    return m


def response(req: Request, status: int, tag: str = "tt") -> Response:
    to = req.header("to") or ""
    if status > 100 and ";tag=" not in to:
        to += f";tag={tag}"
    vias = "".join(f"{h.raw}\r\n" for h in req.headers if h.key == "via")
    m = parse((f"SIP/2.0 {status} X\r\n{vias}From: {req.header('from')}\r\nTo: {to}\r\n"
               f"Call-ID: {req.call_id}\r\nCSeq: {req.header('cseq')}\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(m, Response)
    return m


# --- client INVITE -------------------------------------------------------------------------------------------------


def test_client_invite_timer_a_doubles_and_timer_b_times_out() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.send_request(inv, UDP, r.tu, 0.0)
    first = r.sent()
    assert first == [(inv.to_bytes(), UDP)]
    sends = r.run_to(100.0)
    times = [t for t, _ in sends]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # T1, 2T1, 4T1... (timer A is not capped by T2)
    assert all(d == inv.to_bytes() for _, d in sends)
    assert r.tu.timeouts == [64 * T1]
    assert txn.state == tx.TERMINATED
    assert len(r.layer) == 0
    assert r.queue.next_deadline() is None


def test_client_invite_1xx_stops_a_and_b() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.send_request(inv, UDP, r.tu, 0.0)
    r.sent()
    r.run_to(0.6)  # one retransmission
    assert r.layer.match_client(response(inv, 180), 0.7)
    assert txn.state == tx.PROCEEDING
    assert r.tu.responses == [(180, 0.7)]
    assert r.run_to(1000.0) == []
    assert r.tu.timeouts == []
    assert len(r.layer) == 1  # Proceeding waits for the final response without a timer (RFC 3261 17.1.1.2)


def test_client_invite_non2xx_final_acked_with_same_branch_timer_d() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.send_request(inv, UDP, r.tu, 0.0)
    r.sent()
    r.layer.match_client(response(inv, 180), 0.1)
    busy = response(inv, 486)
    assert r.layer.match_client(busy, 1.0)
    assert txn.state == tx.COMPLETED
    (ack_bytes, target), = r.sent()
    assert target == UDP
    ack = parse(ack_bytes)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == inv.uri
    assert ack.via_key == inv.via_key  # same branch: the ACK is part of the INVITE transaction
    assert ack.cseq == (1, "ACK")
    assert ack.to_tag == "tt" and ack.from_tag == "ft" and ack.call_id == "cid1"
    assert ack.values("route") == ["<sip:p1;lr>"]
    assert r.tu.responses == [(180, 0.1), (486, 1.0)]
    # Timer D absorbs retransmitted finals, re-ACKing each; the TU hears nothing more.
    assert r.layer.match_client(busy, 5.0)
    assert r.sent() == [(ack_bytes, UDP)]
    assert r.tu.responses == [(180, 0.1), (486, 1.0)]
    assert r.queue.next_deadline() == pytest.approx(1.0 + 32.0)
    r.run_to(1.0 + 31.9)
    assert len(r.layer) == 1
    r.run_to(1.0 + 32.0)
    assert len(r.layer) == 0
    assert not r.layer.match_client(busy, 40.0)  # gone: now a stray
    assert r.sent() == []


def test_client_invite_final_in_calling_stops_a() -> None:
    r = Rig()
    inv = request()
    r.layer.send_request(inv, UDP, r.tu, 0.0)
    r.sent()
    r.layer.match_client(response(inv, 503), 0.2)
    assert [parse(d).method for d, _ in r.sent()] == ["ACK"]  # type: ignore[union-attr]
    assert r.run_to(0.2 + 32.0) == []  # no INVITE retransmission after the final
    assert r.tu.timeouts == []
    assert len(r.layer) == 0


def test_client_invite_2xx_accepted_retransmissions_to_tu_timer_m() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.send_request(inv, UDP, r.tu, 0.0)
    r.sent()
    ok = response(inv, 200)
    r.layer.match_client(ok, 0.2)
    assert txn.state == tx.ACCEPTED
    assert r.sent() == []  # the transaction never ACKs a 2xx: the TU does
    r.layer.match_client(ok, 1.0)
    r.layer.match_client(ok, 2.0)
    assert r.tu.responses == [(200, 0.2), (200, 1.0), (200, 2.0)]
    assert r.queue.next_deadline() == pytest.approx(0.2 + 64 * T1)
    assert r.run_to(0.2 + 64 * T1) == []
    assert txn.state == tx.TERMINATED and len(r.layer) == 0
    assert r.tu.timeouts == []


# --- client non-INVITE ------------------------------------------------------------------------------------------------


def test_client_non_invite_timer_e_capped_at_t2_and_timer_f() -> None:
    r = Rig()
    bye = request("BYE")
    r.layer.send_request(bye, UDP, r.tu, 0.0)
    r.sent()
    sends = r.run_to(100.0)
    times = [t for t, _ in sends]
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # 0.5, 1, 2, 4 then T2=4 each
    assert all(b - a <= T2 + 1e-9 for a, b in itertools.pairwise(times))
    assert times[-1] < 32.0
    assert r.tu.timeouts == [32.0]
    assert len(r.layer) == 0


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    r = Rig()
    bye = request("BYE")
    txn = r.layer.send_request(bye, UDP, r.tu, 0.0)
    r.sent()
    r.layer.match_client(response(bye, 100), 0.1)
    assert txn.state == tx.PROCEEDING
    times = [t for t, _ in r.run_to(20.0)]
    assert times[0] == 0.5
    assert [round(b - a, 6) for a, b in itertools.pairwise(times[1:])] == [T2] * (len(times) - 2)


def test_client_non_invite_final_timer_k() -> None:
    r = Rig()
    bye = request("BYE")
    txn = r.layer.send_request(bye, UDP, r.tu, 0.0)
    r.sent()
    ok = response(bye, 200)
    r.layer.match_client(ok, 0.3)
    assert txn.state == tx.COMPLETED
    r.layer.match_client(ok, 0.4)  # absorbed in Completed
    assert r.tu.responses == [(200, 0.3)]
    assert r.run_to(0.3 + T4 - 0.01) == [] and len(r.layer) == 1
    r.run_to(0.3 + T4)
    assert len(r.layer) == 0


def test_client_non_invite_response_with_wrong_method_does_not_match() -> None:
    r = Rig()
    bye = request("BYE")
    r.layer.send_request(bye, UDP, r.tu, 0.0)
    other = response(request("INFO"), 200)
    assert not r.layer.match_client(other, 0.1)
    assert r.tu.responses == []


# --- server INVITE ------------------------------------------------------------------------------------------------


def test_server_invite_retransmission_answered_with_last_provisional() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    assert r.layer.match_server(inv, 0.1)  # nothing sent yet: absorbed silently
    assert r.sent() == []
    r.layer.respond(txn, response(inv, 100), 0.1)
    r.layer.respond(txn, response(inv, 180), 0.2)
    ringing = r.sent()[-1]
    assert r.layer.match_server(inv, 0.5)
    assert r.sent() == [ringing]
    assert txn.state == tx.PROCEEDING
    assert r.queue.next_deadline() is None  # no timers in Proceeding


def test_server_invite_non2xx_timer_g_until_ack_then_i() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    r.layer.respond(txn, response(inv, 486), 0.0)
    (final, target), = r.sent()
    assert target == UDP and final.startswith(b"SIP/2.0 486")
    sends = r.run_to(8.0)
    assert [t for t, _ in sends] == [0.5, 1.5, 3.5, 7.5]  # G: T1, 2T1, 4T1, capped at T2
    assert all(d == final for _, d in sends)
    # Retransmitted INVITE in Completed: the final again.
    r.layer.match_server(inv, 8.1)
    assert r.sent() == [(final, UDP)]
    ack = request("ACK")
    assert r.layer.match_server(ack, 9.0)
    assert txn.state == tx.CONFIRMED
    assert r.layer.match_server(ack, 9.1)  # ACK retransmission absorbed in Confirmed
    assert r.layer.match_server(inv, 9.2)
    assert r.sent() == []
    assert r.run_to(9.0 + T4 - 0.01) == [] and len(r.layer) == 1
    r.run_to(9.0 + T4)
    assert len(r.layer) == 0 and r.tu.timeouts == []


def test_server_invite_g_interval_capped_at_t2() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    r.layer.respond(txn, response(inv, 500), 0.0)
    r.sent()
    times = [t for t, _ in r.run_to(31.0)]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:3] == [1.0, 2.0, 4.0]
    assert set(gaps[3:]) == {T2}


def test_server_invite_timer_h_without_ack() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    r.layer.respond(txn, response(inv, 486), 0.0)
    r.run_to(64 * T1 - 0.01)
    assert r.tu.timeouts == [] and txn.state == tx.COMPLETED
    r.run_to(64 * T1)
    assert r.tu.timeouts == [64 * T1]
    assert len(r.layer) == 0
    assert r.run_to(200.0) == []  # G stops with the transaction


def test_server_invite_2xx_accepted_timer_l() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    r.layer.respond(txn, response(inv, 200), 0.0)
    ok = r.sent()
    assert txn.state == tx.ACCEPTED
    # In Accepted the TU retransmits 2xx through the transaction; retransmitted INVITEs are absorbed.
    assert r.layer.match_server(inv, 1.0)
    assert r.sent() == []
    r.layer.respond(txn, response(inv, 200), 1.0)
    assert r.sent() == ok
    # An ACK for a 2xx is not the transaction's: it goes to the TU.
    assert not r.layer.match_server(request("ACK"), 1.5)
    assert txn.state == tx.ACCEPTED
    assert r.run_to(64 * T1 - 0.01) == [] and len(r.layer) == 1
    r.run_to(64 * T1)
    assert len(r.layer) == 0


# --- server non-INVITE ------------------------------------------------------------------------------------------


def test_server_non_invite_timer_j() -> None:
    r = Rig()
    bye = request("BYE")
    txn = r.layer.create_server(bye, UDP, r.tu)
    assert r.layer.match_server(bye, 0.0)  # Trying: retransmission absorbed, nothing to resend
    assert r.sent() == []
    r.layer.respond(txn, response(bye, 200), 0.1)
    ok = r.sent()
    assert txn.state == tx.COMPLETED
    assert r.layer.match_server(bye, 1.0)
    assert r.sent() == ok
    assert r.run_to(0.1 + 64 * T1 - 0.01) == [] and len(r.layer) == 1
    r.run_to(0.1 + 64 * T1)
    assert len(r.layer) == 0


def test_server_non_invite_provisional_resent_in_proceeding() -> None:
    r = Rig()
    opt = request("OPTIONS")
    txn = r.layer.create_server(opt, UDP, r.tu)
    r.layer.respond(txn, response(opt, 100), 0.0)
    trying = r.sent()
    assert txn.state == tx.PROCEEDING
    r.layer.match_server(opt, 0.2)
    assert r.sent() == trying


# --- reliable transports ---------------------------------------------------------------------------------------


def test_reliable_client_invite_no_retransmission_b_still_runs() -> None:
    r = Rig()
    inv = request()
    r.layer.send_request(inv, TCP, r.tu, 0.0)
    r.sent()
    assert r.run_to(100.0) == []
    assert r.tu.timeouts == [64 * T1]


def test_reliable_client_non_invite_no_retransmission_k_zero() -> None:
    r = Rig()
    bye = request("BYE")
    txn = r.layer.send_request(bye, TCP, r.tu, 0.0)
    r.sent()
    assert r.run_to(10.0) == []
    r.layer.match_client(response(bye, 200), 10.0)
    assert txn.state == tx.COMPLETED
    assert r.queue.next_deadline() == 10.0  # K = 0
    r.run_to(10.0)
    assert len(r.layer) == 0


def test_reliable_client_invite_timer_d_zero() -> None:
    r = Rig()
    inv = request()
    r.layer.send_request(inv, TCP, r.tu, 0.0)
    r.sent()
    r.layer.match_client(response(inv, 486), 1.0)
    assert len(r.sent()) == 1  # the ACK
    assert r.queue.next_deadline() == 1.0
    r.run_to(1.0)
    assert len(r.layer) == 0


def test_reliable_server_invite_no_g_and_zero_i() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, TCP, r.tu)
    r.layer.respond(txn, response(inv, 486), 0.0)
    r.sent()
    assert r.queue.next_deadline() == 64 * T1  # only H
    r.layer.match_server(request("ACK"), 1.0)
    assert txn.state == tx.CONFIRMED
    assert r.queue.next_deadline() == 1.0  # I = 0
    assert r.run_to(1.0) == []
    assert len(r.layer) == 0


def test_reliable_server_non_invite_zero_j() -> None:
    r = Rig()
    bye = request("BYE")
    txn = r.layer.create_server(bye, TCP, r.tu)
    r.layer.respond(txn, response(bye, 200), 2.0)
    r.sent()
    assert r.queue.next_deadline() == 2.0
    r.run_to(2.0)
    assert len(r.layer) == 0


# --- tables ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table,state,event", [
    (tx.CLIENT_INVITE, tx.CALLING, "timer_D"),
    (tx.CLIENT_INVITE, tx.COMPLETED, "recv_1xx"),
    (tx.CLIENT_INVITE, tx.ACCEPTED, "recv_final"),
    (tx.SERVER_INVITE, tx.CONFIRMED, "send_final"),
    (tx.SERVER_INVITE, tx.ACCEPTED, "ack"),
    (tx.SERVER_INVITE, tx.COMPLETED, "send_2xx"),
    (tx.SERVER_NON_INVITE, tx.COMPLETED, "send_final"),
    (tx.CLIENT_NON_INVITE, tx.COMPLETED, "timer_E"),
])
def test_event_without_row_returns_false_and_changes_nothing(table: dict[Any, Any], state: str, event: str) -> None:
    assert (state, event) not in table
    r = Rig()
    is_client = table in (tx.CLIENT_INVITE, tx.CLIENT_NON_INVITE)
    req = request("INVITE" if table in (tx.CLIENT_INVITE, tx.SERVER_INVITE) else "BYE")
    txn = Transaction(r.layer, ("k", "", ""), table, state, req, UDP, r.tu, is_client)
    (r.layer.clients if is_client else r.layer.servers)[txn.key] = txn
    txn.deadlines["X"] = 5.0
    resp = response(req, 200)
    assert txn.fire(event, 1.0, resp, resp.to_bytes()) is False
    assert txn.state == state
    assert txn.deadlines == {"X": 5.0}
    assert r.sent() == [] and r.tu.responses == [] and r.tu.timeouts == []
    assert len(r.layer) == 1


def test_every_table_row_names_real_actions() -> None:
    for table in (tx.CLIENT_INVITE, tx.CLIENT_NON_INVITE, tx.SERVER_INVITE, tx.SERVER_NON_INVITE):
        for (_state, event), (_nxt, actions) in table.items():
            assert isinstance(event, str)
            for action in actions:
                assert hasattr(Transaction, "_" + action), action


def test_stale_timer_after_state_change_is_ignored() -> None:
    r = Rig()
    inv = request()
    txn = r.layer.create_server(inv, UDP, r.tu)
    r.layer.respond(txn, response(inv, 486), 0.0)
    r.sent()
    r.layer.match_server(request("ACK"), 0.1)  # G and H stopped
    # Firing a late G by hand finds no row in Confirmed.
    assert txn.fire("timer_G", 0.5) is False
    assert r.sent() == []


def test_timer_queue_cancel_and_supersede() -> None:
    q = TimerQueue()

    class Owner:
        def __init__(self) -> None:
            self.deadlines: dict[str, float] = {}
            self.fired: list[tuple[str, float]] = []

        def on_timer(self, kind: str, now: float) -> None:
            self.fired.append((kind, now))

    o = Owner()
    q.start(o, "a", 5.0)
    q.start(o, "a", 7.0)  # supersedes 5.0
    q.start(o, "b", 3.0)
    q.cancel(o, "b")
    assert q.next_deadline() == 7.0
    assert q.fire_due(6.0) == 0
    assert q.fire_due(7.0) == 1
    assert o.fired == [("a", 7.0)]
    assert q.next_deadline() is None
