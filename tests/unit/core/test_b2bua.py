"""The B2BUA call through the sans-I/O engine, in memory (examples/loopback.yaml topology, fake clock)."""

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
    make_engine,
    start_call,
)

T1 = 0.5


@pytest.fixture
def h() -> Harness:
    return Harness()


def resp_of(outs_one: object) -> Response:
    m = outs_one.msg  # type: ignore[attr-defined]
    assert isinstance(m, Response)
    return m


def req_of(outs_one: object) -> Request:
    m = outs_one.msg  # type: ignore[attr-defined]
    assert isinstance(m, Request)
    return m


# --- basic call ------------------------------------------------------------------------------------------------


def test_basic_call_caller_hangs_up(h: Harness) -> None:
    caller, outs = start_call(h)
    trying = resp_of(outs.to(A).responses(100).one())
    assert trying.call_id == caller.call_id and trying.via_key == (caller.invite_branch, "127.0.0.10:5060")
    assert trying.to_tag is None
    binv = b_invite(outs)
    assert len(outs) == 2
    assert binv.uri == "sip:15551234567@127.0.0.20:5060"
    callee = Callee(h, binv)

    outs = h.feed(callee.reply(None, 100), B)
    assert outs == []  # B's 100 is hop-by-hop
    outs = h.feed(callee.reply(None, 180), B)
    ringing = resp_of(outs.to(A).one())
    assert ringing.status == 180
    assert ringing.call_id == caller.call_id and ringing.from_tag == caller.tag
    assert ringing.via_key[0] == caller.invite_branch
    a_tag = ringing.to_tag
    assert a_tag and a_tag != callee.tag

    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    ok = resp_of(outs.to(A).one())
    assert ok.status == 200 and ok.to_tag == a_tag and ok.body == SDP_B
    assert ok.cseq == (1, "INVITE")
    assert ok.contact is not None and ok.contact.uri == "sip:127.0.0.1:5060"
    caller.learn(ok)

    outs = h.feed(caller.ack(), A)
    ack = req_of(outs.to(B).one())
    assert ack.method == "ACK" and ack.call_id == binv.call_id
    assert ack.cseq == (binv.cseq[0], "ACK")
    assert ack.to_tag == callee.tag and ack.from_tag == binv.from_tag
    assert ack.uri == "sip:bob@127.0.0.20:5060"  # the remote target learnt from B's Contact
    assert ack.via_key[0] != binv.via_key[0]  # 2xx ACK is its own transaction

    outs = h.feed(caller.request("BYE"), A)
    bye = req_of(outs.to(B).one())
    assert bye.method == "BYE" and bye.call_id == binv.call_id and bye.to_tag == callee.tag
    assert bye.cseq[0] == binv.cseq[0] + 1
    assert outs.to(A) == []
    outs = h.feed(callee.reply(bye, 200), B)
    assert outs.to(A).statuses() == [200]
    assert h.engine.stats["answered"] == 1 and h.engine.stats["calls_ended"] == 1
    h.settle()
    h.assert_clean()


def test_bye_from_callee(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(callee.request("BYE", extra=["Reason: Q.850;cause=16"]), B)
    bye = req_of(outs.to(A).one())
    assert bye.method == "BYE"
    assert bye.call_id == caller.call_id
    assert bye.to_tag == caller.tag and bye.from_tag == caller.remote_tag
    assert bye.uri == "sip:alice@127.0.0.10:5060"
    assert bye.header("reason") == "Q.850;cause=16"
    outs = h.feed(caller.reply(bye, 200), A)
    ok = resp_of(outs.to(B).one())
    assert ok.status == 200 and ok.call_id == callee.call_id and ok.cseq == (callee.cseq, "BYE")
    h.settle()
    h.assert_clean()


def test_b_leg_hides_a_leg_identifiers(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    raw = outs.to(B).one().data
    assert caller.call_id.encode() not in raw
    assert caller.tag.encode() not in raw
    assert caller.invite_branch.encode() not in raw
    assert b"127.0.0.10" not in raw.split(b"\r\n\r\n", 1)[0].replace(b"From: \"Alice\" <sip:+12125550100@127.0.0.10>",
                                                                      b"")
    assert binv.via_key[1] == "127.0.0.1:5060" and binv.via_key[0].startswith("z9hG4bK")
    assert binv.count("via") == 1
    assert binv.contact is not None and binv.contact.uri == "sip:127.0.0.1:5060"
    assert binv.from_tag and binv.from_tag != caller.tag
    assert binv.from_.uri == "sip:+12125550100@127.0.0.10"  # caller identity kept, tag new
    assert binv.to_tag is None


def test_sdp_byte_identical_both_ways(h: Harness) -> None:
    odd_sdp = b"v=0\r\no=- 0 0 IN IP4 127.0.0.10\r\ns=\xe9\xff weird\r\na=x:\x00\x01\r\n\r\nm=audio 9 RTP/AVP 0\n"
    _caller, outs = start_call(h, body=odd_sdp)
    binv = b_invite(outs)
    assert binv.body == odd_sdp
    assert outs.to(B).one().data.endswith(b"\r\n\r\n" + odd_sdp)
    callee = Callee(h, binv)
    answer = SDP_B + b"a=sendrecv\r\n\xfe"
    outs = h.feed(callee.reply(None, 200, body=answer), B)
    assert outs.to(A).one().data.endswith(b"\r\n\r\n" + answer)
    assert resp_of(outs.to(A).one()).header("content-type") == "application/sdp"


UNKNOWN = [
    "X-Custom: some value ;with=params",
    "Identity: eyJhbGciOiJFUzI1NiJ9.eyJhdHRlc3QiOiJBIn0.c2ln;info=<https://cert.example/sp.pem>;alg=ES256;ppt=shaken",
    "P-Asserted-Identity: \"Alice\" <sip:+12125550100@127.0.0.10;user=phone>",
    "Diversion: <sip:+12125550199@127.0.0.10>;reason=unconditional;counter=1",
    "History-Info: <sip:+15551234567@127.0.0.1>;index=1, <sip:+15550000000@127.0.0.1>;index=1.1",
    "Privacy: id",
    "x-lowercase:  kept   as  is",
]


def test_unknown_headers_identical_on_b_leg(h: Harness) -> None:
    _caller, outs = start_call(h, extra=UNKNOWN)
    raw = outs.to(B).one().data.decode("latin-1").split("\r\n")
    positions = [raw.index(line) for line in UNKNOWN]  # every line byte-identical
    assert positions == sorted(positions)  # and in the same order


def test_unknown_headers_in_responses_relayed(h: Harness) -> None:
    _caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 180, extra=["X-Ring: 1", "P-Early-Media: supported", "Require: 100rel",
                                                "RSeq: 1"]), B)
    raw = outs.to(A).one().data.decode("latin-1").split("\r\n")
    for line in ("X-Ring: 1", "P-Early-Media: supported", "Require: 100rel", "RSeq: 1"):
        assert line in raw


def test_max_forwards_decremented(h: Harness) -> None:
    caller = Caller(h)
    outs = h.feed(caller.invite(max_forwards=17), A)
    assert b_invite(outs).max_forwards == 16


def test_max_forwards_zero_483(h: Harness) -> None:
    caller = Caller(h)
    outs = h.feed(caller.invite(max_forwards=0), A)
    assert outs.to(A).statuses() == [483]
    assert outs.to(B) == []
    h.settle()
    h.assert_clean()


# --- failures ---------------------------------------------------------------------------------------------------


def test_486_relayed_and_acked_hop_by_hop(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    callee = Callee(h, binv)
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(callee.reply(None, 486, "Busy Here", extra=["X-Why: busy"]), B)
    ack = req_of(outs.to(B).one())
    assert ack.method == "ACK" and ack.via_key == binv.via_key and ack.to_tag == callee.tag
    busy = resp_of(outs.to(A).one())
    assert (busy.status, busy.reason) == (486, "Busy Here")
    assert busy.call_id == caller.call_id and busy.header("x-why") == "busy"
    # B retransmits its 486: re-ACKed, not relayed again.
    outs = h.feed(callee.reply(None, 486, "Busy Here"), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"] and outs.to(A) == []
    # Without A's ACK, our 486 is retransmitted to A.
    outs = h.advance(T1)
    assert outs.to(A).statuses() == [486]
    outs = h.feed(caller.ack_non2xx(busy), A)
    assert outs == []  # the ACK ends at our server transaction; B already has its own
    assert h.advance(10).to(A) == []
    h.settle()
    h.assert_clean()


def test_503_from_carrier_fails_over_to_carrier2(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    outs = h.feed(Callee(h, binv).reply(None, 503, "Service Unavailable"), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"]
    assert outs.to(A) == []
    binv2 = b_invite(outs, B2)
    assert binv2.uri == "sip:15551234567@127.0.0.21:5060"
    assert binv2.call_id != binv.call_id and binv2.from_tag != binv.from_tag
    assert binv2.body == SDP_A
    callee2 = Callee(h, binv2, addr=B2)
    outs = h.feed(callee2.reply(None, 200, body=SDP_B), B2)
    ok = resp_of(outs.to(A).one())
    assert ok.status == 200 and ok.body == SDP_B
    caller.learn(ok)
    outs = h.feed(caller.ack(), A)
    assert req_of(outs.to(B2).one()).method == "ACK"
    outs = h.feed(caller.request("BYE"), A)
    bye = req_of(outs.to(B2).one())
    h.feed(callee2.reply(bye, 200), B2)
    assert h.engine.stats["failovers"] == 1
    h.settle()
    h.assert_clean()


def test_503_from_last_trunk_becomes_500(h: Harness) -> None:
    _caller, outs = start_call(h)
    outs = h.feed(Callee(h, b_invite(outs)).reply(None, 503), B)
    outs = h.feed(Callee(h, b_invite(outs, B2), addr=B2).reply(None, 503, "Service Unavailable"), B2)
    assert outs.to(A).statuses() == [500]
    assert [req_of(o).method for o in outs.to(B2)] == ["ACK"]
    h.settle()
    h.assert_clean()


@pytest.mark.parametrize("code", [404, 480, 486, 603])
def test_non_failover_codes_relayed_without_failover(h: Harness, code: int) -> None:
    _caller, outs = start_call(h)
    outs = h.feed(Callee(h, b_invite(outs)).reply(None, code), B)
    assert outs.to(A).statuses() == [code]
    assert outs.to(B2) == []
    h.settle()
    h.assert_clean()


def test_silent_first_trunk_fails_over_after_failover_timeout(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    outs = h.run_until(h.now + 2.0 - 0.001)
    assert outs.to(B2) == [] and outs.to(A) == []
    assert len(outs.to(B).requests("INVITE")) == 2  # timer A retransmissions at T1, 3T1
    outs = h.run_until(h.now + 0.001)
    binv2 = b_invite(outs, B2)
    assert binv2.call_id != binv.call_id
    callee2 = Callee(h, binv2, addr=B2)
    h.feed(callee2.reply(None, 180), B2)
    # No more INVITE retransmissions to the abandoned trunk.
    assert h.run_until(h.now + 30).to(B) == []
    outs = h.feed(caller.cancel(), A)
    assert outs.to(A).statuses() == [200, 487]
    cancel = req_of(outs.to(B2).one())
    h.feed(callee2.reply(cancel, 200), B2)
    h.feed(callee2.reply(None, 487), B2)
    h.settle()
    h.assert_clean()


def test_both_trunks_silent_503_to_caller(h: Harness) -> None:
    caller, outs = start_call(h)
    outs = h.run_until(h.now + 4.0)
    assert len(outs.to(B2).requests("INVITE")) >= 1
    assert outs.to(A).statuses() == [503]
    busy = resp_of(outs.to(A).one())
    h.feed(caller.ack_non2xx(busy), A)
    h.settle()
    h.assert_clean()


def test_no_answer_timeout_cancels_b_and_408_to_a() -> None:
    h = Harness(make_engine(no_answer_timeout=30.0))
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.run_until(h.now + 30.0 - 0.01)
    assert outs == []
    outs = h.run_until(h.now + 0.01)
    cancel = req_of(outs.to(B).one())
    assert cancel.method == "CANCEL" and cancel.via_key == callee.invite.via_key
    timeout = resp_of(outs.to(A).one())
    assert timeout.status == 408 and timeout.cseq == (1, "INVITE")
    outs = h.feed(callee.reply(cancel, 200), B)
    assert outs == []
    outs = h.feed(callee.reply(None, 487), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"] and outs.to(A) == []
    assert h.feed(caller.ack_non2xx(timeout), A) == []
    h.settle()
    h.assert_clean()


# --- CANCEL ---------------------------------------------------------------------------------------------------


def test_cancel_while_ringing(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    callee = Callee(h, binv)
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.cancel(), A)
    a = outs.to(A)
    assert a.statuses() == [200, 487]
    assert resp_of(a[0]).cseq == (1, "CANCEL")
    assert resp_of(a[1]).cseq == (1, "INVITE")
    cancel = req_of(outs.to(B).one())
    assert cancel.method == "CANCEL"
    assert cancel.via_key == binv.via_key and cancel.call_id == binv.call_id
    assert cancel.cseq == (binv.cseq[0], "CANCEL") and cancel.uri == binv.uri
    assert cancel.to_tag is None
    h.feed(callee.reply(cancel, 200), B)
    outs = h.feed(callee.reply(None, 487, "Request Terminated"), B)
    ack = req_of(outs.to(B).one())
    assert ack.method == "ACK" and ack.via_key == binv.via_key
    assert outs.to(A) == []  # A already has its 487
    h.feed(caller.ack_non2xx(resp_of(a[1])), A)
    h.settle()
    h.assert_clean()


def test_cancel_before_any_response_is_deferred_until_b_1xx(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    callee = Callee(h, binv)
    outs = h.feed(caller.cancel(), A)
    assert outs.to(A).statuses() == [200, 487]
    assert outs.to(B) == []  # RFC 3261 9.1: no CANCEL before a provisional
    outs = h.feed(callee.reply(None, 180), B)
    cancel = req_of(outs.to(B).one())
    assert cancel.method == "CANCEL" and cancel.via_key == binv.via_key
    assert outs.to(A) == []
    h.feed(callee.reply(cancel, 200), B)
    outs = h.feed(callee.reply(None, 487), B)
    assert [req_of(o).method for o in outs.to(B)] == ["ACK"]
    h.settle()
    h.assert_clean()


def test_deferred_cancel_released_by_100(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(caller.cancel(), A)
    outs = h.feed(callee.reply(None, 100), B)
    assert req_of(outs.to(B).one()).method == "CANCEL"


def test_one_cancel_only_even_if_b_sends_more_provisionals(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.cancel(), A)
    assert len(outs.to(B).requests("CANCEL")) == 1
    outs = h.feed(callee.reply(None, 183, body=SDP_B), B)
    assert outs.to(B).requests("CANCEL") == []


def test_cancelled_b_leg_without_final_does_not_leak(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.cancel(), A)
    cancel = req_of(outs.to(B).one())
    h.feed(callee.reply(cancel, 200), B)
    h.feed(caller.ack_non2xx(resp_of(outs.to(A).responses(487).one())), A)
    h.settle(1000)
    h.assert_clean()


def test_cancel_deferred_sent_on_180(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(caller.cancel(), A)
    outs = h.feed(callee.reply(None, 180), B)
    assert req_of(outs.to(B).one()).method == "CANCEL"
    assert outs.to(A) == []  # the 180 is not relayed to a cancelled caller


def test_cancel_unknown_transaction_481(h: Harness) -> None:
    caller = Caller(h)
    caller.invite_branch = "z9hG4bKnever"
    outs = h.feed(caller.cancel(), A)
    assert outs.to(A).statuses() == [481]
    h.settle()
    h.assert_clean()


def test_200_races_cancel_call_is_hung_up(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.cancel(), A)
    cancel = req_of(outs.to(B).one())
    h.feed(callee.reply(cancel, 200), B)
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    methods = [req_of(o).method for o in outs.to(B)]
    assert methods == ["ACK", "BYE"]
    assert outs.to(A) == []
    bye = req_of(outs.to(B)[1])
    h.feed(callee.reply(bye, 200), B)
    h.settle()
    h.assert_clean()


# --- in-dialog relays ----------------------------------------------------------------------------------------


def test_reinvite_from_a_relayed_with_sdp_and_ack_mapped(h: Harness) -> None:
    caller, callee = established_call(h)
    new_sdp = SDP_A.replace(b"49170", b"50000")
    outs = h.feed(caller.request("INVITE", body=new_sdp), A)
    assert outs.to(A).statuses() == [100]
    reinv = req_of(outs.to(B).one())
    assert reinv.method == "INVITE" and reinv.body == new_sdp
    assert reinv.call_id == callee.call_id and reinv.to_tag == callee.tag
    assert reinv.cseq == (callee.invite.cseq[0] + 1, "INVITE")
    new_answer = SDP_B.replace(b"3456", b"4000")
    outs = h.feed(callee.reply(reinv, 200, body=new_answer), B)
    ok = resp_of(outs.to(A).one())
    assert ok.status == 200 and ok.body == new_answer and ok.cseq == (caller.cseq, "INVITE")
    assert h.engine.calls[caller.call_id][0].reinvites is None  # answered: nothing left to 487 at the end
    outs = h.feed(caller.ack(cseq=caller.cseq), A)
    ack = req_of(outs.to(B).one())
    assert ack.method == "ACK" and ack.cseq == (reinv.cseq[0], "ACK") and ack.call_id == callee.call_id
    # A second re-INVITE increments the B-leg CSeq again.
    outs = h.feed(caller.request("INVITE", body=SDP_A), A)
    reinv2 = req_of(outs.to(B).one())
    assert reinv2.cseq[0] == reinv.cseq[0] + 1
    outs = h.feed(callee.reply(reinv2, 200, body=SDP_B), B)
    h.feed(caller.ack(cseq=caller.cseq), A)
    hang_up(h, caller, callee)


def hang_up(h: Harness, caller: Caller, callee: Callee) -> None:
    outs = h.feed(caller.request("BYE"), A)
    bye = req_of(outs.to(B).requests("BYE").one())
    assert h.feed(callee.reply(bye, 200), B).to(A).statuses() == [200]
    h.settle()
    h.assert_clean()


def test_reinvite_from_b_relayed_and_ack_mapped(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(callee.request("INVITE", body=SDP_B), B)
    reinv = req_of(outs.to(A).one())
    assert outs.to(B).statuses() == [100]
    assert reinv.body == SDP_B and reinv.call_id == caller.call_id
    assert reinv.to_tag == caller.tag and reinv.from_tag == caller.remote_tag
    assert reinv.contact is not None and reinv.contact.uri == "sip:127.0.0.1:5060"
    outs = h.feed(caller.reply(reinv, 200, body=SDP_A), A)
    ok = resp_of(outs.to(B).one())
    assert ok.status == 200 and ok.body == SDP_A and ok.cseq == (callee.cseq, "INVITE")
    outs = h.feed(callee.ack(ok), B)
    ack = req_of(outs.to(A).one())
    assert ack.method == "ACK" and ack.cseq == (reinv.cseq[0], "ACK") and ack.call_id == caller.call_id
    # The A-leg CSeq space of stirgate keeps increasing.
    outs = h.feed(callee.request("INFO"), B)
    info = req_of(outs.to(A).one())
    assert info.cseq[0] > reinv.cseq[0]
    assert resp_of(h.feed(caller.reply(info, 200), A).to(B).one()).status == 200
    hang_up(h, caller, callee)


@pytest.mark.parametrize("method", ["UPDATE", "INFO"])
def test_update_and_info_relayed(h: Harness, method: str) -> None:
    caller, callee = established_call(h)
    body = SDP_A if method == "UPDATE" else b"Signal=5\r\nDuration=160\r\n"
    ctype = [] if method == "UPDATE" else ["Content-Type: application/dtmf-relay"]
    data = caller.request(method, body=b"", extra=ctype)
    if body:
        data = build_request(method, "sip:127.0.0.1:5060", via=[caller.via(caller.branch())], from_=caller.from_,
                             to=caller.to, call_id=caller.call_id, cseq=caller.cseq, extra=ctype, body=body,
                             content_type=None if method == "UPDATE" else "")
    outs = h.feed(data, A)
    relayed = req_of(outs.to(B).one())
    assert relayed.method == method and relayed.body == body
    assert outs.to(A) == []  # no 100 for non-INVITE
    outs = h.feed(callee.reply(relayed, 200), B)
    ok = resp_of(outs.to(A).one())
    assert ok.status == 200 and ok.cseq[1] == method and ok.call_id == caller.call_id
    hang_up(h, caller, callee)


def test_in_dialog_error_response_relayed(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(caller.request("INFO"), A)
    info = req_of(outs.to(B).one())
    outs = h.feed(callee.reply(info, 415, "Unsupported Media Type", extra=["Accept: application/dtmf"]), B)
    r = resp_of(outs.to(A).one())
    assert (r.status, r.header("accept")) == (415, "application/dtmf")


def test_prack_with_rack_relayed(h: Harness) -> None:
    caller, outs = start_call(h, extra=["Supported: 100rel"])
    binv = b_invite(outs)
    assert binv.header("supported") == "100rel"
    callee = Callee(h, binv)
    outs = h.feed(callee.reply(None, 183, body=SDP_B, extra=["Require: 100rel", "RSeq: 813520"]), B)
    p = resp_of(outs.to(A).one())
    assert p.status == 183 and p.body == SDP_B and p.header("rseq") == "813520"
    caller.learn(p)
    outs = h.feed(caller.request("PRACK", extra=["RAck: 813520 1 INVITE"]), A)
    prack = req_of(outs.to(B).one())
    assert prack.method == "PRACK" and prack.header("rack") == "813520 1 INVITE"
    assert prack.call_id == binv.call_id and prack.to_tag == callee.tag
    outs = h.feed(callee.reply(prack, 200), B)
    assert resp_of(outs.to(A).one()).cseq == (caller.cseq, "PRACK")
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    ok = resp_of(outs.to(A).one())
    caller.learn(ok)
    assert req_of(h.feed(caller.ack(), A).to(B).one()).method == "ACK"
    hang_up(h, caller, callee)


@pytest.mark.parametrize("method", ["PRACK", "UPDATE"])
def test_ack_cseq_matches_invite_after_early_dialog_request(h: Harness, method: str) -> None:
    caller, outs = start_call(h, extra=["Supported: 100rel"])
    binv = b_invite(outs)
    callee = Callee(h, binv)
    outs = h.feed(callee.reply(None, 183, body=SDP_B, extra=["Require: 100rel", "RSeq: 1"]), B)
    caller.learn(resp_of(outs.to(A).one()))
    extra = ["RAck: 1 1 INVITE"] if method == "PRACK" else []
    outs = h.feed(caller.request(method, extra=extra), A)
    early = req_of(outs.to(B).one())
    h.feed(callee.reply(early, 200), B)
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    caller.learn(resp_of(outs.to(A).one()))
    ack = req_of(h.feed(caller.ack(), A).to(B).one())
    assert ack.cseq == (binv.cseq[0], "ACK")


def test_183_with_sdp_relayed(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 183, body=SDP_B), B)
    r = resp_of(outs.to(A).one())
    assert r.status == 183 and r.body == SDP_B
    assert r.header("content-type") == "application/sdp"
    # A retransmitted INVITE now gets the 183 again.
    outs = h.feed(caller.invite_bytes, A)
    assert outs.to(A).statuses() == [183] and outs.to(B) == []


def test_in_dialog_request_with_wrong_to_tag_481(h: Harness) -> None:
    caller, _callee = established_call(h)
    caller.remote_tag = "not-ours"
    outs = h.feed(caller.request("INFO"), A)
    assert outs.to(A).statuses() == [481] and outs.to(B) == []


# --- retransmissions ---------------------------------------------------------------------------------------------


def test_retransmitted_invite_one_b_leg_answered_with_last_provisional(h: Harness) -> None:
    caller, outs = start_call(h)
    binv = b_invite(outs)
    outs = h.feed(caller.invite_bytes, A)
    assert outs.to(A).statuses() == [100] and outs.to(B) == []
    callee = Callee(h, binv)
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.invite_bytes, A)
    assert outs.to(A).statuses() == [180] and outs.to(B) == []
    assert h.engine.stats["invites"] == 1
    assert h.engine.active_calls() == 1


def test_retransmitted_2xx_from_b_after_ack_reacked(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    ok_bytes = callee.reply(None, 200, body=SDP_B)
    outs = h.feed(ok_bytes, B)
    caller.learn(resp_of(outs.to(A).one()))
    outs = h.feed(caller.ack(), A)
    ack = outs.to(B).one().data
    outs = h.feed(ok_bytes, B)
    assert [o.data for o in outs.to(B)] == [ack]
    assert outs.to(A) == []
    # ...and still after the B-leg INVITE transaction is gone (timer M).
    h.advance(64 * T1 + 1)
    outs = h.feed(ok_bytes, B)
    assert [o.data for o in outs.to(B)] == [ack]


def test_2xx_retransmitted_to_a_until_ack(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    ok = outs.to(A).one().data
    outs = h.run_until(h.now + 3.6)
    assert [o.data for o in outs.to(A)] == [ok, ok, ok]  # T1, 2T1, 4T1
    caller.learn(parse(ok))  # type: ignore[arg-type]
    h.feed(caller.ack(), A)
    assert h.run_until(h.now + 60).to(A) == []


def test_a_never_acks_200_bye_on_both_legs(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    ok = outs.to(A).one().data
    start = h.now
    outs = h.run_until(start + 64 * T1 - 0.01)
    assert len(outs.to(A).responses(200)) >= 7
    assert all(o.data == ok for o in outs.to(A))
    assert outs.requests("BYE") == []
    outs = h.run_until(start + 64 * T1 + 4.0)
    byes_a, byes_b = outs.to(A).requests("BYE"), outs.to(B).requests("BYE")
    assert byes_a and byes_b
    assert len({o.data for o in byes_a}) == 1 and len({o.data for o in byes_b}) == 1  # one BYE each, retransmitted
    bye_a, bye_b = req_of(byes_a[0]), req_of(byes_b[0])
    assert bye_a.call_id == caller.call_id and bye_a.to_tag == caller.tag
    assert bye_b.call_id == callee.call_id and bye_b.to_tag == callee.tag
    h.feed(caller.reply(bye_a, 200), A)
    h.feed(callee.reply(bye_b, 200), B)
    h.settle()
    h.assert_clean()


def test_a_never_acks_b_gets_ack_before_bye(h: Harness) -> None:
    _caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 200, body=SDP_B), B)
    outs = h.run_until(h.now + 64 * T1 + 1)
    assert [req_of(o).method for o in outs.to(B)][:2] == ["ACK", "BYE"]


# --- edge answers --------------------------------------------------------------------------------------------


def test_unknown_source_403_no_body(h: Harness) -> None:
    stranger = Caller(h, addr=("udp", "192.0.2.99", 5060))
    outs = h.feed(stranger.invite(), stranger.addr)
    r = resp_of(outs.one())
    assert outs[0].target == stranger.addr
    assert r.status == 403 and r.body == b"" and r.header("content-length") == "0"
    assert r.call_id == stranger.call_id and r.via_key[0] == stranger.invite_branch
    assert not r.has("server") and not r.has("user-agent")
    h.settle()
    h.assert_clean()


def test_unknown_source_drop() -> None:
    from .sipfake import loopback_config

    h = Harness(make_engine(loopback_config(**{"unknown_source: reject": "unknown_source: drop"})))
    stranger = Caller(h, addr=("udp", "192.0.2.99", 5060))
    assert h.feed(stranger.invite(), stranger.addr) == []
    assert h.engine.stats["dropped_unknown_source"] == 1
    h.assert_clean()


def test_options_200_with_allow(h: Harness) -> None:
    c = Caller(h)
    outs = h.feed(build_request("OPTIONS", "sip:127.0.0.1:5060", via=[c.via(c.branch())], from_=c.from_,
                                to="<sip:127.0.0.1>", call_id="opt1", cseq=1), A)
    r = resp_of(outs.to(A).one())
    assert r.status == 200
    allow = r.values("allow")
    for m in ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"):
        assert m in allow
    assert "REGISTER" not in allow
    assert r.to_tag
    h.settle()
    h.assert_clean()


def test_options_probe_503_while_draining_or_overloaded(h: Harness) -> None:
    """The dispatcher's health probe: a draining or overloaded node answers 503 and leaves the rotation."""
    c = Caller(h)

    def probe(n: int) -> Response:
        outs = h.feed(build_request("OPTIONS", "sip:127.0.0.1:5060", via=[c.via(c.branch())], from_=c.from_,
                                    to="<sip:127.0.0.1>", call_id=f"probe{n}", cseq=1), A)
        return resp_of(outs.to(A).one())

    assert probe(1).status == 200
    h.engine.calls_in_setup = h.engine.config.overload.max_calls_in_setup
    r = probe(2)
    assert (r.status, r.header("retry-after")) == (503, str(h.engine.config.overload.retry_after))
    h.engine.calls_in_setup = 0
    assert probe(3).status == 200
    h.engine.accepting = False
    assert probe(4).status == 503


def test_drain_probe_delay_probes_fail_while_invites_are_still_taken(h: Harness) -> None:
    """SIGTERM with sip.drain_probe_delay: the probes fail first (the dispatcher moves new calls to other nodes)
    while an INVITE that still arrives meanwhile is carried, not refused."""
    c = Caller(h)
    h.engine.draining = True
    outs = h.feed(build_request("OPTIONS", "sip:127.0.0.1:5060", via=[c.via(c.branch())], from_=c.from_,
                                to="<sip:127.0.0.1>", call_id="probe-draining", cseq=1), A)
    assert resp_of(outs.to(A).one()).status == 503
    outs = h.feed(c.invite(), A)
    assert outs.to(A).statuses() == [100]
    assert len(outs.to(B)) == 1
    assert h.engine.stats["not_accepting"] == 0


@pytest.mark.parametrize("method", ["REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH"])
def test_not_relayed_methods_405_with_allow(h: Harness, method: str) -> None:
    c = Caller(h)
    outs = h.feed(build_request(method, "sip:127.0.0.1:5060", via=[c.via(c.branch())], from_=c.from_,
                                to="<sip:127.0.0.1>", call_id="reg1", cseq=1), A)
    r = resp_of(outs.to(A).one())
    assert r.status == 405 and "INVITE" in r.values("allow") and method not in r.values("allow")
    h.settle()
    h.assert_clean()


@pytest.mark.parametrize("method", ["BYE", "INFO", "UPDATE", "INVITE"])
def test_in_dialog_unknown_call_id_481(h: Harness, method: str) -> None:
    c = Caller(h)
    c.remote_tag = "whatever"
    outs = h.feed(c.request(method, body=SDP_A if method == "INVITE" else b""), A)
    assert outs.to(A).statuses() == [481]
    assert outs.to(B) == []
    h.settle()
    h.assert_clean()


def test_request_after_call_ended_481(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(caller.request("BYE"), A)
    h.feed(callee.reply(req_of(outs.to(B).one()), 200), B)
    outs = h.feed(caller.request("INFO"), A)
    assert outs.to(A).statuses() == [481]
    h.settle()
    h.assert_clean()


def test_invite_without_route_404(h: Harness) -> None:
    from .sipfake import loopback_config

    old = '    prefix: ""\n    trunks: [carrier, carrier2]'
    cfg = loopback_config(**{old: '    prefix: "44"\n    trunks: [carrier]'})
    h = Harness(make_engine(cfg))
    caller, outs = start_call(h)
    assert outs.to(A).statuses() == [100, 404]
    h.feed(caller.ack_non2xx(resp_of(outs.to(A)[1])), A)
    h.settle()
    h.assert_clean()
