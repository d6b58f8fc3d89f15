"""record_from_call on calls driven through a real in-memory engine, and on a Call-like object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from proxy.b2bua import Call
from proxy.records import CallRecord, call_end_hook, record_from_call
from proxy.sip.grammar import parse_name_addr
from proxy.sip.message import Request
from proxy.stir.signer import SignedCall
from proxy.stir.tn import TNPolicy
from tests.unit.core.sipfake import A, B, Callee, Caller, Harness, build_request
from tests.unit.records.helpers import (
    ORIGID,
    X5U,
    answered_call,
    collect,
    make_pki,
    rejected_call,
    sign_identity,
    stir_config,
    wall_harness,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_answered_call() -> None:
    h = Harness()
    h.engine.wall_offset = 1_700_000_000.0
    calls = collect(h)
    t0 = h.now
    caller, callee = answered_call(h, hold=42.5)
    (call,) = calls
    r = record_from_call(call, h.engine.wall_offset)
    assert r.a_call_id == caller.call_id
    assert r.b_call_id == callee.call_id and r.b_call_id != r.a_call_id
    assert (r.ingress, r.egress) == ("customer", "carrier")
    assert (r.source_ip, r.source_port, r.transport) == ("127.0.0.10", 5060, "udp")
    assert (r.orig_signaled, r.orig) == ("+12125550100", "12125550100")
    assert (r.dest_signaled, r.dest) == ("15551234567", "15551234567")
    assert r.display_name == "Alice"
    assert r.status == 200 and r.end_reason == "bye-a"
    assert r.invite_at == pytest.approx(t0 + 1_700_000_000.0)
    assert r.answered_at == pytest.approx(r.invite_at)
    assert r.duration == pytest.approx(42.5)
    assert r.ended_at == pytest.approx(r.invite_at + 42.5)
    # Not verified, not signed (loopback has no STIR), no policies yet.
    assert r.verification is None and r.verstat is None and not r.signed and r.policy_decisions == ()
    assert not r.identity_verified


def test_rejected_and_cancelled_calls() -> None:
    h = Harness()
    calls = collect(h)
    rejected_call(h, 486)
    caller = Caller(h)
    h.feed(caller.invite(), A)
    h.feed(caller.cancel(), A)
    h.settle()
    busy, cancelled = (record_from_call(c, 0.0) for c in calls)
    assert busy.status == 486 and busy.end_reason == "rejected:486"
    assert busy.answered_at is None and busy.duration == 0.0 and busy.egress == "carrier"
    assert cancelled.status == 487 and cancelled.end_reason == "cancelled" and cancelled.answered_at is None


def test_signed_call_carries_our_attest_and_origid(pki: Path) -> None:
    h = wall_harness(stir_config(pki))
    calls = collect(h)
    answered_call(h)
    r = record_from_call(calls[0], h.engine.wall_offset, h.engine.auth.tn_policy)
    assert r.signed
    assert r.attest == "A"  # +1212... is in the customer's prefixes
    assert r.origid == ORIGID
    assert r.verification is None
    # Answered, the call let go of the header values it sent (no failover now), and kept what the record needs.
    kept = calls[0].signed
    assert isinstance(kept, SignedCall) and kept.identity == "" and kept.extra == () and kept.attest == "A"


def _verified_call(h: Harness, pki: Path, identity: str | None, answer: tuple[int, str] = (486, "Busy Here")) -> Call:
    calls = collect(h)
    extra = [f"Identity: {identity}"] if identity else []
    invite = build_request(
        "INVITE", "sip:+12125550100@127.0.0.1:5060", via=["SIP/2.0/UDP 127.0.0.20:5060;branch=z9hG4bKv1"],
        from_='"Carol" <sip:+15551230001@127.0.0.20>;tag=c1', to="<sip:+12125550100@127.0.0.1>",
        call_id="v-1@127.0.0.20", cseq=1, contact="<sip:carol@127.0.0.20>",
        extra=["P-Asserted-Identity: <sip:+15551230001@127.0.0.20>", *extra])
    outs = h.feed(invite, B)
    if h.engine.fetch_requests:
        call_id, _values = h.engine.fetch_requests.pop()
        fetcher = h.engine.auth.fetcher
        assert fetcher is not None
        entry = fetcher.trust.validate_body(X5U, (pki / "sp.pem").read_bytes(), h.now + h.engine.wall_offset)
        h.engine.resume(call_id, h.now, {X5U: entry})
        outs = h.drain()
    to_customer = outs.to(A).requests("INVITE")
    if to_customer:
        callee = Callee(h, cast(Request, to_customer.one().msg), addr=A)
        h.feed(callee.reply(None, *answer), A)
    if not calls:  # answered: the call is still up
        return h.engine.calls["v-1@127.0.0.20"][0]
    (call,) = calls
    return call


def test_verified_call(pki: Path) -> None:
    h = wall_harness(stir_config(pki))
    call = _verified_call(h, pki, sign_identity(pki, "15551230001", "12125550100", "B"))
    r = record_from_call(call, h.engine.wall_offset, h.engine.auth.tn_policy)
    assert r.verification == "passed" and r.identity_verified and r.identity_present
    assert r.verstat == "TN-Validation-Passed"
    assert (r.attest, r.origid, r.spc) == ("B", ORIGID, "1234")
    assert r.cert_subject and "1234" in r.cert_subject
    assert r.x5u_fetched  # the certificate was not cached yet
    assert (r.ingress, r.source_ip, r.egress, r.status) == ("carrier", "127.0.0.20", "customer", 486)
    # Without `pai` kept on the Call, the From user stands in for the signalled caller.
    assert r.orig == "15551230001" and r.dest == "12125550100" and r.display_name == "Carol"


def test_an_answered_verified_call_keeps_its_verdict_only(pki: Path) -> None:
    """A held verified call keeps what its record needs (the verdict), neither the per-header results nor the
    edits verification made to its B-leg INVITE (no failover can follow an answer)."""
    h = wall_harness(stir_config(pki))
    call = _verified_call(h, pki, sign_identity(pki, "15551230001", "12125550100", "B"), (200, "OK"))
    assert call.final_status == 200
    kept = call.inbound
    assert kept is not None and kept.result.status == "passed" and kept.result.headers == ()
    assert (kept.pai, kept.from_value, kept.extra) == (None, None, ())
    r = record_from_call(call, h.engine.wall_offset, h.engine.auth.tn_policy)
    assert (r.verification, r.verstat, r.attest, r.origid, r.spc) == ("passed", "TN-Validation-Passed", "B",
                                                                       ORIGID, "1234")


def test_unsigned_and_bad_verified_calls(pki: Path) -> None:
    h = wall_harness(stir_config(pki))
    r = record_from_call(_verified_call(h, pki, None), 0.0)
    assert r.verification == "missing" and r.identity_present is False
    assert r.verstat == "No-TN-Validation" and not r.x5u_fetched
    h = wall_harness(stir_config(pki))
    bad = sign_identity(pki, "15559999999", "12125550100")  # orig does not match the PAI
    r = record_from_call(_verified_call(h, pki, bad), 0.0)
    assert r.verification == "failed" and r.verstat == "TN-Validation-Failed"
    assert r.failures and all(isinstance(f, str) for f in r.failures)


def _fake_call(**over: Any) -> Call:
    """A Call-like object with the optional attributes the B2BUA may keep (ruri, pai, decisions)."""
    a = SimpleNamespace(call_id="a1", remote_na=parse_name_addr('"O\'Brien \\"Jr\\"" <sip:5551230001@pbx>;tag=x'),
                        local_na=parse_name_addr("<sip:999@gw>"))
    fields: dict[str, Any] = {
        "a": a, "b": None, "ingress": SimpleNamespace(name="customer"), "source": ("tcp", "10.0.0.1", 5070),
        "inbound": None, "signed": False, "egress": None, "final_status": 403, "created_at": 10.0,
        "answered_at": None, "ended_at": 10.5, "end_reason": "rejected:403", "verify_waited": False,
        "host": SimpleNamespace(wall_offset=100.0),
        "ruri": "tel:+1-555-123-0002;phone-context=x", "pai": "<sip:+15551230009@pbx;user=phone>",
        "identity_present": True, "decisions": [("velocity", "dry-run", "reject")],
    }
    fields.update(over)
    return cast(Call, SimpleNamespace(**fields))


def test_fake_call_optional_attributes() -> None:
    policy = TNPolicy(country_code="1")
    r = record_from_call(_fake_call(), 100.0, policy)
    assert r.orig_signaled == "+15551230009" and r.orig == "15551230009"  # PAI first (orig_order)
    assert r.dest_signaled == "+1-555-123-0002" and r.dest == "15551230002"  # R-URI, not To
    assert r.display_name == 'O\'Brien "Jr"'
    assert r.identity_present is True
    assert r.policy_decisions == (("velocity", "dry-run", "reject"),)
    assert (r.transport, r.source_port, r.egress, r.b_call_id) == ("tcp", 5070, None, None)
    assert r.invite_at == 110.0 and r.ended_at == 110.5 and r.duration == 0.0
    # From first when the operator says so; national numbers completed with the country code.
    r = record_from_call(_fake_call(), 0.0, TNPolicy(country_code="1", orig_order=("from", "pai")))
    assert (r.orig_signaled, r.orig) == ("5551230001", "15551230001")


def test_hook_builds_once_and_feeds_observers_and_writer() -> None:
    seen: list[CallRecord] = []
    queued: list[CallRecord] = []
    writer = SimpleNamespace(put=queued.append)
    hook = call_end_hook(cast(Any, writer), [seen.append])
    hook(_fake_call())
    assert len(seen) == 1 and queued == seen and seen[0].invite_at == 110.0  # engine.wall_offset used


def test_record_round_trips_as_dict() -> None:
    r = record_from_call(_fake_call(), 0.0)
    d = r.as_dict()
    assert d["identity_verified"] is False and d["policy_decisions"] == [["velocity", "dry-run", "reject"]]
