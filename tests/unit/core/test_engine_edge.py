"""Engine edges: malformed input, stateless answers, stray and late messages, transports, races."""

from __future__ import annotations

import pytest

from proxy.sip.message import Request, Response, parse

from .sipfake import (
    B2,
    SDP_A,
    SDP_B,
    A,
    B,
    Callee,
    Caller,
    Harness,
    b_invite,
    build_request,
    established_call,
    loopback_config,
    make_engine,
    start_call,
)

T1 = 0.5


@pytest.fixture
def h() -> Harness:
    return Harness()


def resp_of(o: object) -> Response:
    m = o.msg  # type: ignore[attr-defined]
    assert isinstance(m, Response)
    return m


def req_of(o: object) -> Request:
    m = o.msg  # type: ignore[attr-defined]
    assert isinstance(m, Request)
    return m


# --- input that never becomes a call ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\r\n\r\n", b"\r\n", b"\x00\x00", b" \t\r\n"])
def test_keepalives_ignored(h: Harness, data: bytes) -> None:
    assert h.feed(data, A) == []
    assert h.engine.stats["unparseable"] == 0


def test_oversize_udp_message_513_no_call() -> None:
    h = Harness(make_engine(max_udp_message=2000))
    c = Caller(h)
    outs = h.feed(c.invite(extra=["X-Pad: " + "a" * 3000]), A)
    assert outs.to(B) == []
    assert outs.to(A).statuses() == [513]
    assert h.engine.stats["oversize"] == 1
    h.settle()
    h.assert_clean()
    # Just under the limit is accepted.
    h2 = Harness(make_engine(max_udp_message=4000))
    outs = h2.feed(Caller(h2).invite(extra=["X-Pad: " + "a" * 3000]), A)
    assert outs.to(B).requests("INVITE")


def test_version_505(h: Harness) -> None:
    c = Caller(h)
    data = c.invite().replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)
    r = resp_of(h.feed(data, A).one())
    assert r.status == 505 and r.call_id == c.call_id
    h.assert_clean()


def test_unparseable_request_with_addressable_headers_gets_400(h: Harness) -> None:
    c = Caller(h)
    data = c.invite().replace(b"Content-Length: ", b"Content-Length: 9", 1)  # longer than the body
    outs = h.feed(data, A)
    r = resp_of(outs.one())
    assert outs[0].target == A
    assert r.status == 400 and "Content-Length" in r.reason
    assert r.call_id == c.call_id and r.via_key[0] == c.invite_branch
    h.assert_clean()


def test_unparseable_without_via_is_dropped(h: Harness) -> None:
    assert h.feed(b"INVITE sip:x@h SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nBad Header\r\n\r\n", A) == []
    assert h.engine.stats["unparseable"] == 1


def test_unparseable_ack_and_response_never_answered(h: Harness) -> None:
    c = Caller(h)
    ack = c.ack().replace(b"Content-Length: 0", b"Content-Length: 5")
    assert h.feed(ack, A) == []
    assert h.feed(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\nContent-Length: 9\r\n\r\n", B) == []


@pytest.mark.parametrize("mutation,code", [
    (("Call-ID: ", "X-Call-ID: "), 400),
    (("CSeq: 1 INVITE", "CSeq: 1 BYE"), 400),
    (("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE"), 400),
    (("branch=z9hG4bK", "branch="), 400),
    (("INVITE sip:15551234567@127.0.0.1:5060", "INVITE mailto:bob@example.com"), 416),
    (("Max-Forwards: 70", "Max-Forwards: 0"), 483),
    (("Max-Forwards: 70", "Max-Forwards: 70\r\nProxy-Require: foo"), 420),
    (("To: <sip:15551234567@127.0.0.1>", "To: <sip:15551234567@127.0.0.1>\r\nt: <sip:other@h>"), 400),
])
def test_invalid_requests_answered_statelessly(h: Harness, mutation: tuple[str, str], code: int) -> None:
    c = Caller(h)
    data = c.invite().replace(mutation[0].encode(), mutation[1].encode(), 1)
    assert data != c.invite_bytes
    outs = h.feed(data, A)
    assert outs.statuses() == [code]
    assert outs.to(B) == []
    h.settle()
    h.assert_clean()


def test_too_long_ruri_414(h: Harness) -> None:
    c = Caller(h, user="1" * 600)
    outs = h.feed(c.invite(), A)
    assert outs.statuses() == [414]
    h.assert_clean()


def test_420_lists_unsupported(h: Harness) -> None:
    c = Caller(h)
    outs = h.feed(c.invite(extra=["Proxy-Require: foo, bar"]), A)
    r = resp_of(outs.one())
    assert r.status == 420
    assert r.values("unsupported") == ["foo", "bar"]


def test_invalid_ack_is_never_answered(h: Harness) -> None:
    c = Caller(h)
    data = c.ack().replace(b"CSeq: 1 ACK", b"CSeq: 1 INVITE")
    assert h.feed(data, A) == []


def test_ack_from_unknown_source_not_answered(h: Harness) -> None:
    c = Caller(h, addr=("udp", "192.0.2.99", 5060))
    assert h.feed(c.ack(), c.addr) == []


def test_response_from_unknown_source_dropped(h: Harness) -> None:
    _caller, outs = start_call(h)
    binv = b_invite(outs)
    outs = h.feed(Callee(h, binv).reply(None, 200, body=SDP_B), ("udp", "192.0.2.66", 5060))
    assert outs == []
    assert h.engine.stats["dropped_unknown_source"] == 1
    # The real carrier is still being waited for.
    assert len(h.engine.txns.clients) == 1


def test_stray_response_counted_and_ignored(h: Harness) -> None:
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnothing\r\nFrom: <sip:a@h>;tag=1\r\n"
            b"To: <sip:b@h>;tag=2\r\nCall-ID: nobody\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert h.feed(data, B) == []
    assert h.engine.stats["stray_responses"] == 1
    h.assert_clean()


def test_cidr_sources_match() -> None:
    cfg = loopback_config(**{"sources: [127.0.0.10]": "sources: [127.0.0.8/29]"})
    h = Harness(make_engine(cfg))
    c = Caller(h, addr=("udp", "127.0.0.13", 5060))
    outs = h.feed(c.invite(), c.addr)
    assert outs.to(c.addr).statuses() == [100]
    assert outs.to(B).requests("INVITE")


# --- engine-level answers -------------------------------------------------------------------------------------


def test_same_call_id_new_branch_482(h: Harness) -> None:
    caller, outs = start_call(h)
    again = Caller(h, call_id=caller.call_id)
    outs = h.feed(again.invite(), A)
    assert outs.to(A).statuses() == [482]
    assert outs.to(B) == []
    assert h.engine.active_calls() == 1


def test_not_accepting_503_retry_after(h: Harness) -> None:
    h.engine.accepting = False
    c = Caller(h)
    outs = h.feed(c.invite(), A)
    r = resp_of(outs.one())
    assert r.status == 503 and r.header("retry-after") == "5"
    h.feed(c.ack_non2xx(r), A)
    h.settle()
    h.assert_clean()


def test_server_header_only_when_configured() -> None:
    h = Harness(make_engine(server_header="stirgate-test"))
    c = Caller(h)
    outs = h.feed(c.invite(), A)
    assert resp_of(outs.to(A).one()).header("server") == "stirgate-test"
    h2 = Harness()
    outs = h2.feed(Caller(h2).invite(), A)
    raw = outs.to(A).one().data.lower()
    assert b"server:" not in raw and b"user-agent:" not in raw


def test_cancel_after_answer_gets_200_changes_nothing(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.cancel(), A)
    assert outs.to(A).statuses() == [200]
    assert outs.to(B) == []
    outs = h.feed(caller.ack(), A)
    assert req_of(outs.to(B).one()).method == "ACK"


def test_bye_timeout_on_b_408_to_a_call_ends(h: Harness) -> None:
    caller, _callee = established_call(h)
    h.feed(caller.request("BYE"), A)
    outs = h.run_until(h.now + 64 * T1)
    assert len(outs.to(B).requests("BYE")) > 3
    assert outs.to(A).statuses() == [408]
    h.settle()
    h.assert_clean()


def test_ack_retransmission_after_2xx_not_relayed_twice(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    caller.learn(resp_of(outs.to(A).one()))
    ack = caller.ack()
    assert len(h.feed(ack, A).to(B)) == 1
    assert h.feed(ack, A) == []


def test_ack_with_sdp_relayed(h: Harness) -> None:
    caller, outs = start_call(h, body=b"")  # late offer: the SDP answer travels in the ACK
    binv = b_invite(outs)
    assert binv.body == b""
    callee = Callee(h, binv)
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.ack(body=SDP_A), A)
    ack = req_of(outs.to(B).one())
    assert ack.body == SDP_A and ack.header("content-type") == "application/sdp"


def test_callee_bye_before_ack_from_a(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(callee.request("BYE"), B)
    bye = req_of(outs.to(A).requests("BYE").one())
    h.feed(caller.ack(), A)
    h.feed(caller.reply(bye, 200), A)
    h.settle()
    h.assert_clean()


def test_record_route_from_a_becomes_route_towards_a(h: Harness) -> None:
    caller = Caller(h)
    outs = h.feed(caller.invite(extra=["Record-Route: <sip:127.0.0.10:5070;lr>"]), A)
    binv = b_invite(outs)
    assert not binv.has("record-route")  # not copied to the other leg
    callee = Callee(h, binv)
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    ok = resp_of(outs.to(A).one())
    assert ok.values("record-route") == ["<sip:127.0.0.10:5070;lr>"]
    caller.learn(ok)
    h.feed(caller.ack(), A)
    outs = h.feed(callee.request("BYE"), B)
    bye = outs.to(("udp", "127.0.0.10", 5070)).one()
    assert req_of(bye).values("route") == ["<sip:127.0.0.10:5070;lr>"]


def test_tcp_carrier_leg() -> None:
    cfg = loopback_config(**{
        "destination: 127.0.0.20:5060\n    transport: udp": "destination: 127.0.0.20:5060\n    transport: tcp"})
    h = Harness(make_engine(cfg))
    caller, outs = start_call(h)
    tcp_b = ("tcp", "127.0.0.20", 5060)
    binv = req_of(outs.to(tcp_b).one())
    assert binv.via.transport == "TCP"
    assert binv.contact is not None and binv.contact.uri == "sip:127.0.0.1:5060;transport=tcp"
    assert h.run_until(h.now + 1.9).to(tcp_b) == []  # no timer A over a reliable transport
    callee = Callee(h, binv, addr=tcp_b)
    callee.contact = "<sip:bob@127.0.0.20:5060;transport=tcp>"
    outs = h.feed(callee.reply(None, 200, body=SDP_B), tcp_b)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.ack(), A)
    assert req_of(outs.to(tcp_b).one()).method == "ACK"
    outs = h.feed(caller.request("BYE"), A)
    bye = req_of(outs.to(tcp_b).one())
    h.feed(callee.reply(bye, 200), tcp_b)
    h.settle()
    h.assert_clean()


# --- bugs: leaks and misdirected messages ---------------------------------------------------------------------


def test_early_bye_from_caller_finishes_invite_and_leaks_nothing(h: Harness) -> None:
    """RFC 3261 15.1.2: BYE on the early dialog is answered 200, the INVITE gets 487, and the B-leg, still
    pending, is CANCELled (the one way every UAS understands); B's 487 is ACKed and nothing is left behind."""
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 180), B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.request("BYE"), A)
    assert sorted(outs.to(A).statuses()) == [200, 487]
    cancel = req_of(outs.to(B).one())
    assert cancel.method == "CANCEL"
    h.feed(callee.reply(cancel, 200), B)
    outs = h.feed(callee.reply(None, 487), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"]
    h.settle(1000)
    h.assert_clean()


def test_late_200_from_abandoned_trunk_is_acked_and_hung_up_there(h: Harness) -> None:
    caller, outs = start_call(h)
    callee1 = Callee(h, b_invite(outs))
    outs = h.run_until(h.now + 2.0)
    callee2 = Callee(h, b_invite(outs, B2), addr=B2)
    outs = h.feed(callee2.reply(None, 200, body=SDP_B), B2)
    caller.learn(resp_of(outs.to(A).one()))
    h.feed(caller.ack(), A)
    outs = h.feed(callee1.reply(None, 200, body=SDP_B), B)
    assert outs.to(B2) == []
    assert [req_of(o).method for o in outs.to(B)] == ["ACK", "BYE"]


def test_retransmitted_503_after_failover_is_reacked(h: Harness) -> None:
    _caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 503), B)
    outs = h.feed(callee.reply(None, 503), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"]


def test_sdp_a_constant_is_what_callers_send() -> None:
    m = parse(Caller(Harness()).invite())
    assert m.body == SDP_A
    assert isinstance(m, Request) and m.header("content-type") == "application/sdp"


def test_b_initiated_reinvite_sdp_with_unknown_headers(h: Harness) -> None:
    _caller, callee = established_call(h)
    outs = h.feed(callee.request("INVITE", body=SDP_B, extra=["X-Carrier: 7", "Session-Expires: 1800;refresher=uac"]),
                  B)
    raw = outs.to(A).one().data.decode("latin-1").split("\r\n")
    assert "X-Carrier: 7" in raw and "Session-Expires: 1800;refresher=uac" in raw


def test_build_request_helper_is_valid() -> None:
    from proxy.sip.validate import check_request

    m = parse(build_request("INFO", "sip:x@127.0.0.1", via=["SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1"],
                            from_="<sip:a@h>;tag=1",
                            to="<sip:b@h>", call_id="c", cseq=1))
    assert isinstance(m, Request) and check_request(m) is None


def test_pending_relayed_request_answered_when_call_ends(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(caller.request("INFO"), A)
    info = req_of(outs.to(B).one())
    outs = h.feed(callee.request("BYE"), B)
    bye = req_of(outs.to(A).one())
    h.feed(caller.reply(bye, 200), A)
    outs = h.feed(callee.reply(info, 481), B)
    outs += h.settle()
    assert outs.to(A).responses()  # A's INFO gets a final response (the relayed 481, or 481/408 of our own)
    h.settle()
    h.assert_clean()


def test_early_info_then_rejection_leaks_nothing(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 180), B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.request("INFO"), A)
    info = req_of(outs.to(B).one())
    h.feed(callee.reply(None, 486), B)
    h.feed(callee.reply(info, 200), B)
    h.settle(1000)
    h.assert_clean()
