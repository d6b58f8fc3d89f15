"""Overload control and per-source protection (issue 6 parts 1-2), in memory."""

from __future__ import annotations

from proxy.sip.message import Response

from .sipfake import A, B, Callee, Caller, Harness, b_invite, established_call, loopback_config, make_engine, start_call


def harness(**overload_or_protection: object) -> Harness:
    text = "\n".join(f"  {k}: {v}" for k, v in overload_or_protection.items())
    section = "protection" if any(k.startswith(("pike", "tcp")) for k in overload_or_protection) else "overload"
    cfg = loopback_config(**{"logging:": f"{section}:\n{text}\n\nlogging:"})
    return Harness(make_engine(cfg))


def only_status(outs: list[object]) -> Response:
    (out,) = outs
    msg = out.msg  # type: ignore[attr-defined]
    assert isinstance(msg, Response)
    return msg


def test_calls_in_setup_limit_answers_503_with_retry_after_and_spares_calls_in_progress() -> None:
    h = harness(max_calls_in_setup=2, max_setup_share_per_source=1.0, retry_after=7)
    _first, outs1 = start_call(h)
    second, _ = start_call(h)
    third = Caller(h)
    resp = only_status(h.feed(third.invite(), A))
    assert resp.status == 503 and resp.header("retry-after") == "7"
    assert h.engine.calls_in_setup == 2 and h.engine.stats["overload_rejected"] == 1
    # The first call is still served: answered, and a new call fits again.
    callee = Callee(h, b_invite(outs1))
    outs = h.feed(callee.reply(None, 200), B)
    assert outs.to(A).statuses() == [200]
    assert h.engine.calls_in_setup == 1
    _, outs = start_call(h)
    assert outs.to(B).requests("INVITE")
    del second


def test_one_flooding_source_cannot_take_the_whole_setup_pool() -> None:
    h = harness(max_calls_in_setup=4, max_setup_share_per_source=0.5)
    start_call(h)
    start_call(h)
    assert only_status(h.feed(Caller(h).invite(), A)).status == 503  # the customer's share (2 of 4) is used up
    assert h.engine.overload_reasons == {"source-share": 1}
    carrier = Caller(h, addr=B)  # another trunk peer still gets in
    outs = h.feed(carrier.invite(), B)
    assert 503 not in outs.to(B).statuses()
    assert outs.to(A).requests("INVITE")  # routed to the customer


def test_dialog_limit_keeps_in_dialog_requests_flowing() -> None:
    h = harness(max_dialogs=1)
    caller, callee = established_call(h)
    refused = only_status(h.feed(Caller(h).invite(), A))
    assert refused.status == 503
    # In-dialog requests of the call already taken are relayed whatever the load.
    outs = h.feed(caller.request("BYE"), A)
    bye = outs.to(B).requests("BYE").one().msg
    outs = h.feed(callee.reply(bye, 200), B)  # type: ignore[arg-type]
    assert outs.to(A).statuses() == [200]
    assert h.engine.live_calls == 0 and h.engine.calls_in_setup == 0
    h.settle()
    h.assert_clean()


def test_loop_lag_sheds_new_calls() -> None:
    h = harness(max_loop_lag_ms=100)
    h.engine.loop_lag = 0.5
    assert only_status(h.feed(Caller(h).invite(), A)).status == 503
    assert h.engine.overload_reasons == {"loop-lag": 1}
    h.engine.loop_lag = 0.0
    _, outs = start_call(h)
    assert outs.to(B).requests("INVITE")


def test_counters_return_to_zero_on_every_ending() -> None:
    h = Harness()
    # cancelled, rejected, answered-then-hung-up
    c1, _outs = start_call(h)
    h.feed(c1.cancel(), A)
    _c2, outs2 = start_call(h)
    h.feed(Callee(h, b_invite(outs2)).reply(None, 486), B)
    established = established_call(h)
    assert h.engine.live_calls == 2  # the cancelled call waits for the B-leg's 487; the established one lives
    h.feed(established[0].request("BYE"), A)  # B never answers it: 408 to A after timer F
    h.run_until(h.now + 1000)
    assert (h.engine.live_calls, h.engine.calls_in_setup) == (0, 0)
    h.assert_clean()


def test_pike_silences_a_flooding_unknown_source_and_stays_bounded() -> None:
    h = harness(pike_window=1.0, pike_max_requests=3, pike_ban=60, pike_table_size=2)
    stranger = Caller(h, addr=("udp", "192.0.2.99", 5060))
    statuses = [s for _ in range(6) for s in h.feed(stranger.invite(), stranger.addr).statuses()]
    assert statuses == [403, 403, 403]  # then silence: answering a flood is how a proxy becomes a reflector
    assert h.engine.stats["pike_dropped"] == 3
    # Trunk peers are exempt by default: a busy carrier is not a scanner.
    for _ in range(6):
        _, outs = start_call(h)
        assert outs.to(B).requests("INVITE")
    # The table forgets the oldest sources beyond its size.
    for i in range(5):
        other = Caller(h, addr=("udp", f"192.0.2.{i}", 5060))
        h.feed(other.invite(), other.addr)
    assert len(h.engine.pike._sources) <= 2


def test_pike_ban_expires() -> None:
    h = harness(pike_window=1.0, pike_max_requests=1, pike_ban=10)
    stranger = Caller(h, addr=("udp", "192.0.2.7", 5060))
    assert h.feed(stranger.invite(), stranger.addr).statuses() == [403]
    assert h.feed(stranger.invite(), stranger.addr).statuses() == []
    h.advance(11)
    assert h.feed(stranger.invite(), stranger.addr).statuses() == [403]
