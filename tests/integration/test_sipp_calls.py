"""SIPp calls through a live stirgate (issue 2, Tests): one test per scenario pair in sipp_scenarios/.

Topology (../shared/TOPOLOGY.md): SIPp UAC as the customer trunk on 127.0.0.10, stirgate on 127.0.0.1, SIPp UAS as
the carrier on 127.0.0.20 (or the second carrier on 127.0.0.21). Every SIPp runs a few calls under
`-timeout 30s -timeout_error`; exit code 0 means every call followed its scenario, including the SDP and header
checks inside the scenarios. The tests then read SIPp's message traces for what a scenario cannot say alone
(bytes on both legs, one INVITE at the UAS, the B2BUA's own identifiers).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import harness
from tests.integration.conftest import QUICK_TIMERS, StirgateFactory
from tests.integration.harness import (
    CARRIER2_IP,
    CARRIER_IP,
    CUSTOMER_IP,
    SIP_PORT,
    STIRGATE_IP,
    UNKNOWN_IP,
    Sipp,
    SippResult,
)

STIRGATE = (STIRGATE_IP, SIP_PORT)

pytestmark = pytest.mark.usefixtures("sipp_bin")  # skip, saying why, where SIPp is not installed


def uac(tmp_path: Path, scenario: str, *, ip: str = CUSTOMER_IP, **kw: object) -> Sipp:
    return Sipp(scenario, ip, tmp_path, remote=STIRGATE, **kw)  # type: ignore[arg-type]


def uas(tmp_path: Path, scenario: str, *, ip: str = CARRIER_IP, **kw: object) -> Sipp:
    return Sipp(scenario, ip, tmp_path, **kw)  # type: ignore[arg-type]


def run_pair(callee: Sipp, caller: Sipp) -> tuple[SippResult, SippResult]:
    """Start the UAS (bound before anything is sent), run the UAC to its end, then collect the UAS."""
    with harness.running(callee):
        caller.start()
        caller_result = caller.wait()
        callee_result = callee.wait()
    return caller_result, callee_result


def assert_passed(*results: SippResult, calls: int = 1) -> None:
    for r in results:
        assert r.returncode == 0 and r.failed in (0, None), r.summary()
        assert r.successful == calls, r.summary()


def final_response(r: SippResult, method: str = "INVITE") -> int | None:
    finals = [m.status for m in r.responses() if m.method == method and (m.status or 0) >= 200]
    return finals[0] if finals else None


def only(messages: list[harness.TracedMessage], what: str, r: SippResult) -> harness.TracedMessage:
    assert len(messages) == 1, f"expected exactly one {what}, got {len(messages)}\n{r.summary()}"
    return messages[0]


def tag_of(value: str) -> str:
    for param in value.split(";")[1:]:
        key, _, val = param.strip().partition("=")
        if key.lower() == "tag":
            return val
    return ""


def assert_in_dialog(req: harness.TracedMessage, side: SippResult, r: SippResult) -> None:
    """An in-dialog request received by `side` carries that side's dialog: same Call-ID as the initial INVITE,
    To tag = this side's tag, From tag = the peer's, and a CSeq of its own method."""
    initial = next(m for m in side.messages if m.is_request and m.method == "INVITE" and not tag_of(m.header("To")))
    ok = next(
        m
        for m in side.messages
        if not m.is_request and m.method == "INVITE" and m.status == 200 and m.direction != initial.direction
    )
    if initial.direction == "received":  # the UAS side: its tag is in its 200
        local_tag, remote_tag = tag_of(ok.header("To")), tag_of(initial.header("From"))
    else:  # the UAC side
        local_tag, remote_tag = tag_of(initial.header("From")), tag_of(ok.header("To"))
    assert req.header("Call-ID") == initial.header("Call-ID"), r.summary()
    assert tag_of(req.header("To")) == local_tag, f"To tag of {req.method} is not ours\n{r.summary()}"
    assert tag_of(req.header("From")) == remote_tag, f"From tag of {req.method} is not the peer's\n{r.summary()}"
    assert req.header("CSeq").split()[-1] == req.method


def assert_sdp_relayed(caller: SippResult, callee: SippResult) -> None:
    """The offer and the answer cross stirgate byte for byte (pytest's own check beside the scenarios')."""
    offer_sent = caller.requests("INVITE", "sent")[0].body
    offer_seen = callee.requests("INVITE")[0].body
    assert offer_sent and offer_seen == offer_sent
    answers_sent = [m.body for m in callee.responses("sent") if m.method == "INVITE" and m.body]
    answers_seen = [m.body for m in caller.responses() if m.method == "INVITE" and m.body]
    assert answers_sent and answers_seen and set(answers_seen) <= set(answers_sent)


# ----------------------------------------------------------------------------------------------- basic calls
def test_basic_call_caller_hangs_up(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_basic.xml"), uac(tmp_path, "uac_basic.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 200
    assert_sdp_relayed(caller, callee)

    # A B2BUA: the B-leg is stirgate's own dialog (new Call-ID, new From tag, its Via and Contact).
    a_inv = caller.requests("INVITE", "sent")[0]
    b_inv = only(callee.requests("INVITE"), "INVITE at the UAS", callee)
    assert b_inv.header("Call-ID") != a_inv.header("Call-ID")
    assert tag_of(b_inv.header("From")) and tag_of(b_inv.header("From")) != tag_of(a_inv.header("From"))
    assert len(b_inv.headers("Via")) == 1 and CUSTOMER_IP not in b_inv.header("Via"), b_inv.header("Via")
    assert CUSTOMER_IP not in b_inv.header("Contact"), b_inv.header("Contact")
    assert b_inv.header("Max-Forwards") == "69"
    assert b_inv.header("Subject") == a_inv.header("Subject")
    # The caller's in-dialog requests go to stirgate's Contact, and the BYE reached the callee.
    ok = next(m for m in caller.responses() if m.status == 200 and m.method == "INVITE")
    assert STIRGATE_IP in ok.header("Contact") and CARRIER_IP not in ok.header("Contact"), ok.header("Contact")
    assert_in_dialog(only(callee.requests("BYE"), "BYE at the UAS", callee), callee, callee)
    assert_in_dialog(only(callee.requests("ACK"), "ACK at the UAS", callee), callee, callee)
    b_bye = callee.requests("BYE")[0]
    assert int(b_bye.header("CSeq").split()[0]) > int(b_inv.header("CSeq").split()[0])
    # stirgate answers the INVITE with 100 Trying itself.
    assert caller.responses()[0].status == 100, caller.summary()


def test_basic_call_callee_hangs_up(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_callee_bye.xml"), uac(tmp_path, "uac_callee_bye.xml"))
    assert_passed(caller, callee)
    bye = only(caller.requests("BYE"), "BYE at the caller", caller)
    assert_in_dialog(bye, caller, caller)  # mapped back to the A-leg dialog
    assert [m.status for m in callee.responses() if m.method == "BYE"] == [200]


def test_busy_486(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_busy.xml"), uac(tmp_path, "uac_busy.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 486
    ack = only(callee.requests("ACK"), "ACK (hop by hop) at the UAS", callee)
    # RFC 3261 17.1.1.3: the ACK for a non-2xx has the INVITE's branch and CSeq number.
    inv = callee.requests("INVITE")[0]
    assert ack.header("Via") == inv.header("Via"), callee.summary()
    assert ack.header("CSeq").split()[0] == inv.header("CSeq").split()[0]


def test_cancel_while_ringing(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_ring.xml"), uac(tmp_path, "uac_cancel.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 487
    assert final_response(caller, "CANCEL") == 200
    only(callee.requests("CANCEL"), "CANCEL at the UAS", callee)


def test_cancel_before_callee_provisional(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """The caller cancels before the callee sent anything; the callee's 100 comes 300 ms later. stirgate must
    still cancel the B-leg (RFC 3261 9.1: once a provisional arrived) and end the A-leg with 487."""
    caller, callee = run_pair(uas(tmp_path, "uas_slow_trying.xml"), uac(tmp_path, "uac_cancel_early.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 487
    only(callee.requests("CANCEL"), "CANCEL at the UAS", callee)


def test_reinvite_with_sdp(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_reinvite.xml"), uac(tmp_path, "uac_reinvite.xml"))
    assert_passed(caller, callee)
    sent = caller.requests("INVITE", "sent")
    seen = callee.requests("INVITE")
    assert len(seen) == 2, callee.summary()
    assert seen[1].body == sent[-1].body  # the re-INVITE's offer, byte for byte
    assert_in_dialog(seen[1], callee, callee)


def test_update_with_sdp(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_update.xml"), uac(tmp_path, "uac_update.xml"))
    assert_passed(caller, callee)
    upd = only(callee.requests("UPDATE"), "UPDATE at the UAS", callee)
    assert_in_dialog(upd, callee, callee)
    assert upd.body == caller.requests("UPDATE", "sent")[0].body


def test_183_with_sdp_then_200(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_183_sdp.xml"), uac(tmp_path, "uac_183_sdp.xml"))
    assert_passed(caller, callee)
    early = [m for m in caller.responses() if m.status == 183]
    assert early and early[0].body == next(m for m in callee.responses("sent") if m.status == 183).body


def test_callee_never_answers_408(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """no_answer_timeout is 2 s here: stirgate cancels the B-leg and answers 408 to the caller."""
    caller, callee = run_pair(uas(tmp_path, "uas_ring.xml"), uac(tmp_path, "uac_no_answer.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 408
    only(callee.requests("CANCEL"), "CANCEL (from stirgate) at the UAS", callee)


# ----------------------------------------------------------------------------------------------- routing
def test_failover_to_second_carrier(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """Nothing listens on the first carrier (127.0.0.20): the call goes to the second (127.0.0.21)."""
    harness.wait_port_free(CARRIER_IP, SIP_PORT)  # nothing may listen there (bounded wait, then fail)
    caller, callee = run_pair(uas(tmp_path, "uas_basic.xml", ip=CARRIER2_IP), uac(tmp_path, "uac_basic.xml"))
    assert_passed(caller, callee)
    assert final_response(caller) == 200
    only(callee.requests("INVITE"), "INVITE at the second carrier", callee)


def test_failover_on_503_from_first_carrier(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """The first carrier answers 503: stirgate ACKs it and tries the second carrier, which answers."""
    first = uas(tmp_path, "uas_503.xml", ip=CARRIER_IP)
    second = uas(tmp_path, "uas_basic.xml", ip=CARRIER2_IP)
    with harness.running(first, second):
        caller = uac(tmp_path, "uac_basic.xml").start().wait()
        first_result, second_result = first.wait(), second.wait()
    assert_passed(caller, first_result, second_result)
    assert final_response(caller) == 200
    assert 503 not in [m.status for m in caller.responses()], caller.summary()
    only(second_result.requests("INVITE"), "INVITE at the second carrier", second_result)


def test_no_trunk_alive_503(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    for ip in (CARRIER_IP, CARRIER2_IP):
        harness.wait_port_free(ip, SIP_PORT)  # nothing may listen there (bounded wait, then fail)
    caller = uac(tmp_path, "uac_503.xml").start().wait()
    assert_passed(caller)
    assert final_response(caller) == 503


def test_max_forwards_zero_483(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller = uac(tmp_path, "uac_483.xml").start().wait()
    assert_passed(caller)
    assert final_response(caller) == 483


def test_unknown_source_403(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller = uac(tmp_path, "uac_403.xml", ip=UNKNOWN_IP).start().wait()
    assert_passed(caller)
    resp = [m for m in caller.responses() if m.status == 403]
    assert resp and resp[0].body == b"", caller.summary()


def test_info_after_answer(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_info.xml"), uac(tmp_path, "uac_info.xml"))
    assert_passed(caller, callee)
    info = only(callee.requests("INFO"), "INFO at the UAS", callee)
    assert_in_dialog(info, callee, callee)
    assert info.body == caller.requests("INFO", "sent")[0].body


def test_reinvite_from_callee(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_callee_reinvite.xml"), uac(tmp_path, "uac_callee_reinvite.xml"))
    assert_passed(caller, callee)
    reinvite = only(caller.requests("INVITE"), "re-INVITE at the caller", caller)
    assert_in_dialog(reinvite, caller, caller)
    assert reinvite.body == callee.requests("INVITE", "sent")[0].body
    only(caller.requests("ACK"), "ACK for the re-INVITE at the caller", caller)


def test_prack_reliable_183(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """RFC 3262 across the B2BUA: Require/RSeq relayed, the PRACK's RAck mapped to the B-leg's INVITE CSeq."""
    caller, callee = run_pair(uas(tmp_path, "uas_prack.xml"), uac(tmp_path, "uac_prack.xml"))
    assert_passed(caller, callee)
    prack = only(callee.requests("PRACK"), "PRACK at the UAS", callee)
    assert prack.header("RAck").split()[1] == callee.requests("INVITE")[0].header("CSeq").split()[0]


def test_unknown_source_dropped_when_configured(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """unknown_source: drop - a request from an address no trunk owns gets no answer at all."""
    stirgate_factory(sip=QUICK_TIMERS, extra={"unknown_source": "drop"})
    caller = uac(tmp_path, "uac_silence.xml", ip=UNKNOWN_IP, extra=("-nr",)).start().wait()
    assert_passed(caller)
    assert caller.responses() == [], caller.summary()


def test_register_gets_405(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller = uac(tmp_path, "uac_405.xml").start().wait()
    assert_passed(caller)


def test_malformed_invite_gets_400(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """An INVITE whose CSeq method is BYE: 400 from stirgate, nothing reaches the carrier."""
    callee = uas(tmp_path, "uas_basic.xml")
    with harness.running(callee):
        caller = uac(tmp_path, "uac_400.xml").start().wait()
        callee.kill()
    assert_passed(caller)
    assert callee.result().requests("INVITE") == [], callee.result().summary()


# ----------------------------------------------------------------------------------------------- transport
def test_retransmitted_invite_absorbed(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """The caller retransmits its INVITE while the callee rings: exactly one INVITE reaches the UAS."""
    caller, callee = run_pair(
        uas(tmp_path, "uas_ring_answer.xml"),
        uac(tmp_path, "uac_retransmit.xml", extra=("-nr",)),
    )
    copies = caller.requests("INVITE", "sent")
    assert len(copies) >= 2 and len({m.raw for m in copies}) == 1, caller.summary()
    invites = callee.requests("INVITE")
    assert len(invites) == 1, f"{len(invites)} INVITEs reached the UAS\n{callee.summary()}"
    assert_passed(caller, callee)


def test_late_ack_2xx_retransmitted(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    """The caller's ACK comes 1.6 s after the 200 (T1 = 0.5 s): stirgate retransmits the 200 meanwhile, and
    the call completes on both legs."""
    caller, callee = run_pair(uas(tmp_path, "uas_basic.xml"), uac(tmp_path, "uac_late_ack.xml"))
    assert_passed(caller, callee)
    copies = [m for m in caller.responses() if m.method == "INVITE" and m.status == 200]
    assert len(copies) >= 2, f"the 200 was not retransmitted while the ACK was late\n{caller.summary()}"
    assert len({m.raw for m in copies}) == 1, "a retransmitted 200 differs from the first"
    assert callee.requests("ACK"), callee.summary()


TCP_PAIRS = [
    ("uas_basic.xml", "uac_basic.xml"),
    ("uas_callee_bye.xml", "uac_callee_bye.xml"),
    ("uas_ring.xml", "uac_cancel.xml"),
]


@pytest.mark.parametrize(("uas_sf", "uac_sf"), TCP_PAIRS, ids=["basic", "callee_bye", "cancel"])
def test_call_over_tcp(stirgate_factory: StirgateFactory, tmp_path: Path, uas_sf: str, uac_sf: str) -> None:
    """Customer -> stirgate over TCP, stirgate -> carrier over TCP (the carrier trunk's transport). The callee's
    BYE reaches the caller over its own connection (a SIPp TCP UAC does not listen)."""
    stirgate_factory(sip=QUICK_TIMERS, trunks={"carrier": {"transport": "tcp"}})
    caller, callee = run_pair(uas(tmp_path, uas_sf, transport="t1"), uac(tmp_path, uac_sf, transport="t1"))
    assert_passed(caller, callee)
    assert {m.transport for m in caller.messages + callee.messages} == {"TCP"}
    assert callee.requests("INVITE")[0].body == caller.requests("INVITE", "sent")[0].body


def test_a_quiet_tcp_call_outlives_pings_its_peer_never_answers(stirgate_factory: StirgateFactory,
                                                                 tmp_path: Path) -> None:
    """SIPp never answers CRLF keep-alive pings (pongs are optional for a trunk peer). A call held quiet for 3 s
    over the connection stirgate dialled to it, pinged every ~1 s here, still ends with its BYE: the connection is
    kept (noted once as `keepalive_unanswered`), not closed for the missing pong."""
    sg = stirgate_factory(sip={**QUICK_TIMERS, "keepalive_interval": 0.5, "keepalive_timeout": 0.5},
                          trunks={"carrier": {"transport": "tcp"}})
    caller, callee = run_pair(uas(tmp_path, "uas_basic.xml", transport="t1"),
                              uac(tmp_path, "uac_long_call.xml", transport="t1"))  # BYE 3 s after the answer
    assert_passed(caller, callee)
    assert callee.requests("BYE"), callee.summary()
    assert len(sg.log_events("keepalive_unanswered")) == 1 and not sg.log_events("keepalive_timeout")


def test_sigterm_lets_the_call_in_progress_finish(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """Graceful stop (issue 2, Transport): on SIGTERM stirgate takes no new call (503) but lets the call in
    progress end normally (its BYE still crosses), then exits 0 by itself. /readyz says so over HTTP (503
    draining) while /healthz stays 200."""
    sg = stirgate_factory(sip={**QUICK_TIMERS, "drain_grace": 20.0})
    sg.calls_active_at_drain = True
    callee = uas(tmp_path, "uas_call_up.xml")
    caller = uac(tmp_path, "uac_long_call.xml")  # the caller hangs up 3 s after the answer
    with harness.running(callee, caller):
        flag = callee.dir / "call_up.flag"  # written by the UAS on the ACK
        assert caller.proc is not None
        proc = caller.proc
        harness.wait_until(lambda: flag.exists() or proc.poll() is not None, "the call to be up", attempts=750)
        assert flag.exists(), caller.result().summary()
        assert sg.api_get("/readyz") == (200, {"status": "ready"})
        sg.terminate()
        harness.wait_until(lambda: any(e.get("event") == "draining" for e in sg.log_events()), "stirgate to drain")
        assert sg.api_get("/readyz") == (503, {"status": "draining"})
        assert sg.api_get("/healthz")[0] == 200
        late = uac(tmp_path, "uac_503.xml", name="late_caller", port=SIP_PORT + 1).start().wait()
        caller_result, callee_result = caller.wait(), callee.wait()
    assert_passed(late)
    assert final_response(late) == 503
    assert_passed(caller_result, callee_result)
    only(callee_result.requests("INVITE"), "INVITE at the UAS (the late call must not reach it)", callee_result)
    assert sg.proc is not None
    rc = sg.proc.wait(timeout=20)  # drained: it stops by itself
    assert rc == 0, sg.log_tail()


# ----------------------------------------------------------------------------------------------- headers, load
def test_custom_header_passes_unchanged(stirgate: harness.Stirgate, tmp_path: Path) -> None:
    caller, callee = run_pair(uas(tmp_path, "uas_custom_header.xml"), uac(tmp_path, "uac_custom_header.xml"))
    assert_passed(caller, callee)
    for name in ("X-Custom-Header", "P-Asserted-Identity", "Privacy", "Diversion", "History-Info"):
        sent = caller.requests("INVITE", "sent")[0].headers(name)
        assert sent and callee.requests("INVITE")[0].headers(name) == sent, name
    ok_sent = next(m for m in callee.responses("sent") if m.status == 200 and m.method == "INVITE")
    ok_seen = next(m for m in caller.responses() if m.status == 200 and m.method == "INVITE")
    assert ok_sent.headers("X-Custom-Reply") and ok_seen.headers("X-Custom-Reply") == ok_sent.headers("X-Custom-Reply")


@pytest.mark.parametrize("calls", [20])
def test_uas_answering_directly_several_calls(stirgate: harness.Stirgate, tmp_path: Path, calls: int) -> None:
    """The throughput pair, a few calls at 20 calls/s: all complete (no timing asserted)."""
    caller, callee = run_pair(
        uas(tmp_path, "uas_answer.xml", calls=calls),
        uac(tmp_path, "uac_basic.xml", calls=calls, extra=("-r", "20", "-l", "10")),
    )
    assert_passed(caller, callee, calls=calls)
    assert len({m.header("Call-ID") for m in callee.requests("INVITE")}) == calls


def test_calls_leave_nothing_for_the_gc_pass(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """stirgate runs with the automatic cyclic GC off and a periodic full pass (proxy.server): calls must leave it
    nothing to find, and a pass that finds nothing doubles the wait for the next, up to gc_full_max_interval."""
    sg = stirgate_factory(sip={**QUICK_TIMERS, "gc_full_interval": 0.5, "gc_full_max_interval": 1.0})

    def passes() -> list[dict[str, object]]:
        return sg.log_events("gc_full")

    harness.wait_until(lambda: len(passes()) >= 1, "a first GC pass (start-up's leftovers)", attempts=500)
    before = len(passes())
    caller, callee = run_pair(
        uas(tmp_path, "uas_answer.xml", calls=20),
        uac(tmp_path, "uac_basic.xml", calls=20, extra=("-r", "20", "-l", "10")),
    )
    assert_passed(caller, callee, calls=20)
    ended = len(passes())
    harness.wait_until(lambda: len(passes()) >= ended + 2, "two GC passes after the calls", attempts=500)
    found = [e["unreachable"] for e in passes()[before:]]
    assert found and all(n == 0 for n in found), found
    assert passes()[-1]["next_s"] == 1.0  # clean: doubled from 0.5, held at the cap
    logged = passes()
    with urllib.request.urlopen(f"{sg.api_base}/metrics", timeout=5) as resp:
        samples = {s.name: s.value for fam in text_string_to_metric_families(resp.read().decode())
                   for s in fam.samples if not s.labels}
    assert samples["stirgate_gc_pass_seconds_count"] >= len(logged) >= 3
    assert samples["stirgate_gc_unreachable_total"] == sum(e["unreachable"] for e in logged)  # later ones find 0


def test_unreachable_tcp_trunks_leave_nothing_for_the_gc_pass(stirgate_factory: StirgateFactory,
                                                              tmp_path: Path) -> None:
    """Both carriers over TCP with nothing listening: every call's two connection attempts are refused and it
    gets 503. A refused connection's exception chain must not be left for the GC pass (before: ~22 objects per
    attempt, so a trunk outage at a thousand calls a second kept every pass busy)."""
    sg = stirgate_factory(sip={**QUICK_TIMERS, "gc_full_interval": 0.5, "gc_full_max_interval": 1.0},
                          trunks={"carrier": {"transport": "tcp"}, "carrier2": {"transport": "tcp"}})
    harness.wait_until(lambda: len(sg.log_events("gc_full")) >= 1, "a first GC pass (start-up's leftovers)",
                       attempts=500)
    start = len(sg.log_events("gc_full"))
    for ip in (CARRIER_IP, CARRIER2_IP):
        harness.wait_port_free(ip, SIP_PORT, "tcp")  # nothing may listen there (bounded wait, then fail)
    caller = uac(tmp_path, "uac_503.xml", calls=10, extra=("-r", "10", "-l", "10")).start().wait()
    assert_passed(caller, calls=10)
    assert sg.metrics()['stirgate_sip_events_total{event="connect_failures"}'] == 20
    ended = len(sg.log_events("gc_full"))
    harness.wait_until(lambda: len(sg.log_events("gc_full")) >= ended + 2, "two GC passes after the calls",
                       attempts=500)
    found = [e["unreachable"] for e in sg.log_events("gc_full")[start:]]
    assert all(n == 0 for n in found), found


# ----------------------------------------------------------------------------------------------- the scenarios
DIRECT_PAIRS = [
    ("uas_basic.xml", "uac_basic.xml", ()),
    ("uas_answer.xml", "uac_basic.xml", ()),
    ("uas_callee_bye.xml", "uac_callee_bye.xml", ()),
    ("uas_busy.xml", "uac_busy.xml", ()),
    ("uas_ring.xml", "uac_cancel.xml", ()),
    ("uas_reinvite.xml", "uac_reinvite.xml", ()),
    ("uas_update.xml", "uac_update.xml", ()),
    ("uas_183_sdp.xml", "uac_183_sdp.xml", ()),
    ("uas_ring_answer.xml", "uac_retransmit.xml", ("-nr",)),
    ("uas_custom_header.xml", "uac_custom_header.xml", ()),
    ("uas_info.xml", "uac_info.xml", ()),
    ("uas_callee_reinvite.xml", "uac_callee_reinvite.xml", ()),
    ("uas_prack.xml", "uac_prack.xml", ()),
    ("uas_basic.xml", "uac_late_ack.xml", ()),
    ("uas_call_up.xml", "uac_long_call.xml", ()),
    ("uas_slow_trying.xml", "uac_cancel_early.xml", ()),
]


@pytest.mark.parametrize(("uas_sf", "uac_sf", "uac_extra"), DIRECT_PAIRS, ids=[p[1][4:-4] for p in DIRECT_PAIRS])
def test_scenario_pair_without_stirgate(
    sipp_bin: str, tmp_path: Path, uas_sf: str, uac_sf: str, uac_extra: tuple[str, ...]
) -> None:
    """Each pair run UAC -> UAS directly: the scenarios themselves are right (so a failure through stirgate is
    stirgate's). The pairs that need stirgate's own answers (403, 503, 408) are not here."""
    callee = uas(tmp_path, uas_sf)
    caller = Sipp(uac_sf, CUSTOMER_IP, tmp_path, remote=(CARRIER_IP, SIP_PORT), extra=uac_extra)
    caller_result, callee_result = run_pair(callee, caller)
    assert_passed(caller_result, callee_result)
