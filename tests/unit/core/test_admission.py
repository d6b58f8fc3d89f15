"""Per-trunk limits, fair shedding and stateless refusals at the engine's door (issue 19), with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from proxy.admission import Admission
from proxy.config import Config, ConfigError, load_config_text
from proxy.sip.message import Request, Response, parse

from .sipfake import (
    B2,
    LOOPBACK,
    STRANGER,
    A,
    B,
    Caller,
    Harness,
    build_request,
    established_call,
    make_engine,
)


def config(limits: dict[str, Any] | None = None, trunk: str = "customer", sources: list[str] | None = None,
           **overload: Any) -> Config:
    """examples/loopback.yaml without STIR, with `limits` (and `sources`) on one trunk and `overload` settings."""
    cfg = yaml.safe_load(LOOPBACK.read_text())
    cfg.pop("stir", None)
    for t in cfg["trunks"]:
        t.pop("sign", None)
        if t["name"] == trunk and limits is not None:
            t["limits"] = limits
        if t["name"] == trunk and sources is not None:
            t["sources"] = sources
    if overload:
        cfg["overload"] = overload
    return load_config_text(yaml.safe_dump(cfg, sort_keys=False), "test.yaml")


def harness(limits: dict[str, Any] | None = None, trunk: str = "customer", sources: list[str] | None = None,
            **overload: Any) -> Harness:
    return Harness(make_engine(config(limits, trunk, sources, **overload)))


def answer(outs: list[Any]) -> Response:
    (out,) = outs
    msg = out.msg
    assert isinstance(msg, Response)
    return msg


def shed(h: Harness, trunk: str = "customer") -> dict[str, int]:
    gate = h.engine.admission.gate(trunk)
    assert gate is not None
    return dict(gate.shed)


def taken(outs: list[Any], to: tuple[str, str, int] = B) -> bool:
    """The INVITE became a call: 100 Trying back, an INVITE out on the B-leg."""
    return any(o.data.startswith(b"INVITE ") and o.target == to for o in outs)


# --- contracted limits --------------------------------------------------------------------------------------------


def test_max_cps_refuses_the_excess_with_503_and_refills_with_time() -> None:
    h = harness({"max_cps": 2, "burst": 2, "retry_after": 3})
    assert taken(h.feed(Caller(h).invite(), A))
    assert taken(h.feed(Caller(h).invite(), A))
    txns = len(h.engine.txns)
    third = Caller(h)
    r = answer(h.feed(third.invite(), A))
    assert r.status == 503 and r.header("retry-after") == "3"
    assert r.call_id == third.call_id and r.to_tag and r.via_key[0] == third.invite_branch
    assert len(h.engine.txns) == txns and h.engine.active_calls() == 2  # nothing kept for it
    assert shed(h) == {"max-cps": 1} and h.engine.stats["limit_rejected"] == 1
    h.now += 0.5  # one token back at 2 per second
    assert taken(h.feed(Caller(h).invite(), A))
    assert answer(h.feed(Caller(h).invite(), A)).status == 503


def test_a_refused_invite_retransmitted_gets_the_same_answer_and_its_ack_is_absorbed() -> None:
    h = harness({"max_cps": 1, "burst": 1})
    assert taken(h.feed(Caller(h).invite(), A))
    caller = Caller(h)
    invite = caller.invite()
    first = h.feed(invite, A).one().data
    h.now += 5.0  # tokens are back: the retransmission is still the same refused request
    again = h.feed(invite, A).one().data
    assert again == first and parse(first).status == 503  # type: ignore[union-attr]
    assert h.engine.stats["shed_retransmissions"] == 1 and shed(h) == {"max-cps": 1}
    txns = len(h.engine.txns)
    refusal = parse(first)
    assert isinstance(refusal, Response)
    assert h.feed(caller.ack_non2xx(refusal), A) == []
    assert h.engine.stats["stateless_acks"] == 1 and len(h.engine.txns) == txns
    assert h.engine.active_calls() == 1
    # A new INVITE (new Call-ID) is judged afresh: a token is there.
    assert taken(h.feed(Caller(h).invite(), A))


def test_drop_action_answers_nothing_not_even_a_retransmission() -> None:
    h = harness({"max_cps": 1, "burst": 1, "action": "drop"})
    assert taken(h.feed(Caller(h).invite(), A))
    invite = Caller(h).invite()
    assert h.feed(invite, A) == []
    assert h.feed(invite, A) == []
    assert h.engine.stats["shed_dropped"] == 1 and h.engine.stats["shed_retransmissions"] == 1
    assert shed(h) == {"max-cps": 1}


def test_max_calls_counts_calls_in_progress_and_frees_at_their_end() -> None:
    h = harness({"max_calls": 1})
    caller, callee = established_call(h)
    r = answer(h.feed(Caller(h).invite(), A))
    assert r.status == 503 and shed(h) == {"max-calls": 1}
    outs = h.feed(caller.request("BYE"), A)
    bye = outs.to(B).requests("BYE").one().msg
    assert isinstance(bye, Request)
    h.feed(callee.reply(bye, 200), B)
    assert h.engine.active_calls() == 0
    assert taken(h.feed(Caller(h).invite(), A))


def test_in_dialog_requests_pass_whatever_the_limits() -> None:
    h = harness({"max_cps": 1, "burst": 1}, max_loop_lag_ms=50)
    caller, callee = established_call(h)  # took the only token
    h.engine.loop_lag = 1.0  # and the process is strained
    outs = h.feed(caller.request("INVITE"), A)  # a re-INVITE (To tag): relayed, never shed
    assert outs.to(B).requests("INVITE") and 503 not in outs.to(A).statuses()
    reinvite = outs.to(B).requests("INVITE").one().msg
    assert isinstance(reinvite, Request)
    outs = h.feed(callee.reply(reinvite, 200), B)
    assert outs.to(A).statuses() == [200]
    outs = h.feed(caller.request("BYE"), A)
    assert outs.to(B).requests("BYE")


def test_a_retransmission_of_a_call_taken_is_absorbed_not_refused() -> None:
    h = harness({"max_cps": 1, "burst": 1})
    caller = Caller(h)
    invite = caller.invite()
    assert taken(h.feed(invite, A))
    outs = h.feed(invite, A)  # over the limit now, but it is the call already taken
    assert outs.statuses() == [100] and h.engine.active_calls() == 1
    assert shed(h) == {}


def test_an_unusual_invite_is_refused_after_a_full_parse() -> None:
    h = harness({"max_cps": 1, "burst": 1})
    assert taken(h.feed(Caller(h).invite(), A))
    caller = Caller(h)
    folded = caller.invite().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards:\r\n 70\r\n")
    r = answer(h.feed(folded, A))
    assert r.status == 503 and r.header("retry-after") == "5" and r.call_id == caller.call_id
    assert shed(h) == {"max-cps": 1} and h.engine.active_calls() == 1


def test_limits_hold_per_trunk() -> None:
    h = harness({"max_cps": 1, "burst": 1}, trunk="carrier")
    carrier = Caller(h, addr=B)
    assert taken(h.feed(carrier.invite(), B), to=A)
    assert answer(h.feed(Caller(h, addr=B).invite(), B)).status == 503
    for _ in range(3):  # the customer trunk has no limits
        assert taken(h.feed(Caller(h).invite(), A))
    assert shed(h, "carrier") == {"max-cps": 1} and shed(h, "customer") == {}


# --- fair shedding --------------------------------------------------------------------------------------------


def test_under_strain_only_the_trunk_over_its_fair_share_is_shed() -> None:
    h = harness(max_loop_lag_ms=100)
    h.engine.loop_lag = 0.5
    flood = [h.feed(Caller(h, addr=B).invite(), B) for _ in range(20)]
    assert all(answer(outs).status == 503 for outs in flood)
    # carrier2 offers a little: under its share (the average of the trunks offering), it is served.
    for _ in range(3):
        assert taken(h.feed(Caller(h, addr=B2).invite(), B2), to=A)
        assert answer(h.feed(Caller(h, addr=B).invite(), B)).status == 503
    assert shed(h, "carrier") == {"loop-lag": 23} and shed(h, "carrier2") == {}
    # Without strain everyone is served again.
    h.engine.loop_lag = 0.0
    assert taken(h.feed(Caller(h, addr=B).invite(), B), to=A)


def test_a_full_receive_queue_sheds_like_a_slow_loop() -> None:
    h = harness(max_receive_queue=0.5)
    h.engine.receive_queue = 0.8
    assert answer(h.feed(Caller(h, addr=B).invite(), B)).status == 503
    assert h.engine.overload_reasons == {"receive-queue": 1}


def test_past_the_soft_fraction_of_the_setup_pool_the_fair_share_applies_at_the_bound_everyone_is_shed() -> None:
    h = harness(max_calls_in_setup=10, max_setup_share_per_source=1.0, soft_fraction=0.5)
    for _ in range(5):  # carrier fills half the pool (callees never answer)
        assert taken(h.feed(Caller(h, addr=B).invite(), B), to=A)
    assert answer(h.feed(Caller(h, addr=B).invite(), B)).status == 503  # over its share
    for _ in range(4):
        assert taken(h.feed(Caller(h, addr=B2).invite(), B2), to=A)  # carrier2 is under its share
    assert shed(h, "carrier") == {"calls-in-setup": 1}
    assert taken(h.feed(Caller(h, addr=B2).invite(), B2), to=A)  # the 10th call
    assert answer(h.feed(Caller(h, addr=B2).invite(), B2)).status == 503  # the pool is full: everyone
    assert shed(h, "carrier2") == {"calls-in-setup": 1}


def test_fair_share_follows_the_recent_window() -> None:
    adm = Admission(config(fair_window=1.0))
    carrier, carrier2 = adm.gate("carrier"), adm.gate("carrier2")
    assert carrier is not None and carrier2 is not None
    flood, modest = B[1], B2[1]
    for _ in range(100):
        adm.offer(carrier, flood, 10.0)
    adm.offer(carrier2, modest, 10.1)
    assert adm.within_share(modest, 10.1) and not adm.within_share(flood, 10.1)
    # Two quiet windows later the old flood no longer counts: a source alone is at its share (not within).
    adm.offer(carrier2, modest, 12.5)
    assert not adm.within_share(modest, 12.5)
    adm.offer(carrier, flood, 12.6)
    adm.offer(carrier, flood, 12.6)
    assert adm.within_share(modest, 12.6) and not adm.within_share(flood, 12.6)
    assert not adm.within_share("192.0.2.1", 12.6)  # a source that offered nothing is not tracked


def test_fair_shares_are_per_source_address_within_a_trunk() -> None:
    """Two addresses of one trunk (an SBC pair): the one flooding is shed, the other is served."""
    h = harness(max_loop_lag_ms=100, sources=["127.0.0.10", "127.0.0.11"])
    h.engine.loop_lag = 0.5
    pair = ("udp", "127.0.0.11", 5060)
    for _ in range(20):
        assert answer(h.feed(Caller(h).invite(), A)).status == 503
    assert taken(h.feed(Caller(h, addr=pair).invite(), pair))
    assert shed(h) == {"loop-lag": 20}


def test_token_bucket() -> None:
    adm = Admission(config({"max_cps": 10, "burst": 5}))
    gate = adm.gate("customer")
    assert gate is not None
    for _ in range(5):
        assert adm.over_limit(gate, 1.0) == ""
        adm.admitted(gate)
    assert adm.over_limit(gate, 1.0) == "max-cps"
    assert adm.over_limit(gate, 1.1) == ""  # 0.1 s at 10/s: one token
    assert adm.over_limit(gate, 100.0) == "" and gate.tokens == 5.0  # never beyond the burst


def test_a_share_enforces_its_part_of_the_contract() -> None:
    adm = Admission(config({"max_cps": 10, "burst": 20, "max_calls": 8}))
    gate = adm.gate("customer")
    assert gate is not None and gate.limited and gate.share == 1.0
    gate.set_share(0.25)
    assert (gate.rate, gate.burst, gate.max_calls) == (2.5, 5.0, 2)
    assert gate.tokens == 5.0  # the bucket shrank with it
    for _ in range(2):
        assert adm.over_limit(gate, 1.0) == ""
        adm.admitted(gate)
    assert adm.over_limit(gate, 1.0) == "max-calls"  # 2 in progress, 2 allowed here
    for _ in range(3):  # each call ends before the next: the 5 tokens of the smaller bucket
        adm.released("customer")
        assert adm.over_limit(gate, 1.0) == ""
        adm.admitted(gate)
    adm.released("customer")
    assert adm.over_limit(gate, 1.0) == "max-cps"
    assert adm.over_limit(gate, 1.5) == ""  # 0.5 s at 2.5/s: a token
    gate.set_share(0.0)  # a process the front sends nothing: still one call when one comes
    assert (gate.rate, gate.burst, gate.max_calls) == (0.0, 1.0, 1)
    gate.set_share(1.0)
    assert (gate.rate, gate.burst, gate.max_calls) == (10.0, 20.0, 8)


def test_a_trunk_without_limits_is_not_shared() -> None:
    adm = Admission(config())
    gate = adm.gate("customer")
    assert gate is not None and not gate.limited


def test_a_reload_keeps_the_share_with_the_new_contract() -> None:
    h = harness({"max_cps": 10})
    gate = h.engine.admission.gate("customer")
    assert gate is not None
    gate.set_share(0.5)
    h.engine.reconfigure(config({"max_cps": 40}), None)
    gate = h.engine.admission.gate("customer")
    assert gate is not None and gate.share == 0.5 and gate.rate == 20.0


# --- bounded memory, stateless answers ---------------------------------------------------------------------------


def test_refused_invites_are_remembered_up_to_a_count() -> None:
    h = harness({"max_cps": 1, "burst": 1}, shed_memory=3)
    assert taken(h.feed(Caller(h).invite(), A))
    invites = [Caller(h).invite() for _ in range(5)]
    for inv in invites:
        assert answer(h.feed(inv, A)).status == 503
    assert h.engine.admission.memory_size() == 3
    h.feed(invites[-1], A)
    assert h.engine.stats["shed_retransmissions"] == 1
    h.feed(invites[0], A)  # forgotten: judged again (and refused again)
    assert h.engine.stats["shed_retransmissions"] == 1 and shed(h) == {"max-cps": 6}


def test_answers_stirgate_gives_itself_leave_no_transaction() -> None:
    h = Harness()
    c = Caller(h)
    opts = c.request("OPTIONS")
    first = answer(h.feed(opts, A))
    assert first.status == 200 and "INVITE" in first.values("allow")
    assert answer(h.feed(opts, A)).to_tag == first.to_tag  # a retransmission: the same answer
    assert answer(h.feed(c.request("REGISTER"), A)).status == 405
    assert answer(h.feed(c.request("BYE"), A)).status == 481  # no dialog
    c.invite_branch = c.branch()
    assert answer(h.feed(c.cancel(), A)).status == 481  # no INVITE to cancel
    stranger = Caller(h, addr=STRANGER)
    r = answer(h.feed(stranger.invite(), STRANGER))
    assert r.status == 403 and r.to_tag
    assert h.feed(stranger.ack_non2xx(r), STRANGER) == []
    assert len(h.engine.txns) == 0


def test_a_reload_keeps_the_calls_in_progress_per_trunk() -> None:
    h = harness({"max_calls": 1})
    established_call(h)
    h.engine.reconfigure(config({"max_calls": 1}), None)
    assert answer(h.feed(Caller(h).invite(), A)).status == 503
    h.engine.reconfigure(config({"max_calls": 2}), None)
    assert taken(h.feed(Caller(h).invite(), A))


def test_draining_refuses_new_calls_statelessly() -> None:
    h = Harness()
    caller, callee = established_call(h)
    h.engine.accepting = False
    assert answer(h.feed(Caller(h).invite(), A)).status == 503
    assert h.engine.stats["not_accepting"] == 1
    outs = h.feed(caller.request("BYE"), A)  # the call in progress carries on
    assert outs.to(B).requests("BYE")
    del callee


@pytest.mark.parametrize(("limits", "key"), [
    ("{max_cps: -1}", "trunks[0].limits.max_cps"),
    ("{max_calls: lots}", "trunks[0].limits.max_calls"),
    ("{action: bounce}", "trunks[0].limits.action"),
    ("{max_cps: 5, brust: 10}", "trunks[0].limits.brust"),
])
def test_bad_limits_are_located(limits: str, key: str) -> None:
    line = "    sources: [127.0.0.10]\n"
    text = LOOPBACK.read_text().replace(line, f"{line}    limits: {limits}\n", 1)
    with pytest.raises(ConfigError) as ei:
        load_config_text(text, "x.yaml")
    assert ei.value.key == key and ei.value.line is not None, str(ei.value)


def test_unknown_source_403_is_built_without_a_parse_and_keeps_the_request_lines() -> None:
    h = Harness()
    data = build_request("INVITE", "sip:1@127.0.0.1", via=["SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKx",
                                                           "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKy"],
                         from_="<sip:a@192.0.2.99>;tag=1", to="<sip:1@127.0.0.1>", call_id="u1", cseq=7)
    r = answer(h.feed(data, STRANGER))
    assert r.status == 403 and len(r.headers_all("via")) == 2 and r.cseq == (7, "INVITE") and r.body == b""
    assert h.engine.stats["rejected_unknown_source"] == 1
