"""Delegate certificates (ATIS-1000092): TNAuthList ranges/TNs parsed and enforced; SPC from the delegating SP."""

from __future__ import annotations

import datetime

import pytest

from proxy.stir.demo_certs import build_delegate, issue, parse_range, pem
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.tnauthlist import TNAuthList, TNAuthListError, encode_tnauthlist, parse_tnauthlist
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier

from .helpers import NOW, ORIGID, X5U, Pki, utc

RANGE = ("15551230000", 1000)
SINGLE = "15559990001"


def test_tnauthlist_ranges_and_tns_round_trip_and_cover() -> None:
    parsed = parse_tnauthlist(encode_tnauthlist(spcs=("1234",), ranges=(RANGE,), tns=(SINGLE,)))
    assert parsed == TNAuthList(spcs=("1234",), ranges=(RANGE,), tns=(SINGLE,))
    assert parsed.limited
    assert [parsed.covers(t) for t in ("15551230000", "15551230999", "15551231000", "15551229999", SINGLE,
                                       "1555123000", "")] == [True, True, False, False, True, False, False]  # fmt: skip
    assert not parse_tnauthlist(encode_tnauthlist(spcs=("1234",))).limited


def test_implicitly_tagged_range_is_read_too() -> None:
    """[1] IMPLICIT: the range's elements straight inside the context tag (some CAs emit that)."""
    body = b"\x16\x0b15551230000\x02\x02\x03\xe8"
    der = b"\x30" + bytes([len(body) + 2]) + b"\xa1" + bytes([len(body)]) + body
    assert parse_tnauthlist(der).ranges == (RANGE,)


@pytest.mark.parametrize("der", [
    b"\x30\x13\xa1\x11\x30\x0f\x16\x0b15551230000\x02\x00",  # empty count
    b"\x30\x12\xa1\x10\x30\x0e\x16\x0b15551230000\x02\x01",  # truncated
    b"\x30\x13\xa1\x11\x30\x0f\x16\x0b15551230000\x02\x01\x01",  # count 1: not a range
])  # fmt: skip
def test_bad_ranges_do_not_decode(der: bytes) -> None:
    with pytest.raises(TNAuthListError):
        parse_tnauthlist(der)


def test_within_parent_scope() -> None:
    parent = TNAuthList(ranges=(("15551200000", 100_000),))
    assert TNAuthList(ranges=(RANGE,)).within(parent)
    assert not TNAuthList(ranges=(("15551299990", 20),)).within(parent)
    assert TNAuthList(tns=("15551234567",)).within(parent)
    assert TNAuthList(ranges=(RANGE,)).within(TNAuthList(spcs=("1234",)))  # SPC only: everything


def test_parse_range_forms() -> None:
    assert parse_range("15551230000-15551230999") == RANGE
    assert parse_range("15551230000+1000") == RANGE
    for bad in ("15551230999-15551230000", "1555-15551230000", "x+5", "15551230000+1"):
        with pytest.raises(ValueError):
            parse_range(bad)


@pytest.fixture(scope="module")
def delegate_body(pki: Pki) -> tuple[bytes, Signer]:
    d = build_delegate(pki.demo, ranges=(RANGE,), tns=(SINGLE,), now=utc(NOW))
    body = pem(d.delegate.cert) + pem(d.sp_ca.cert) + pem(pki.demo.intermediate.cert)
    return body, Signer(SigningProfile("delegate", "", X5U), key=d.delegate.key)


def test_delegate_certificate_validates_with_spc_of_the_delegating_sp(
    pki: Pki, delegate_body: tuple[bytes, Signer]
) -> None:
    entry = pki.trust.validate_body(X5U, delegate_body[0], NOW)
    assert entry.ok, entry.failures
    assert entry.spc == "9999" and entry.scope == TNAuthList(ranges=(RANGE,), tns=(SINGLE,))
    assert "delegate-certificate" in entry.notes
    assert pki.entry.scope is None  # an SPC certificate has no per-call TN check


@pytest.mark.parametrize(("orig", "expected"), [
    ("15551230000", (None, VERSTAT_PASSED, None)),
    ("+1 555 123 0999", (None, VERSTAT_PASSED, None)),
    (SINGLE, (None, VERSTAT_PASSED, None)),
    ("15551231000", (437, VERSTAT_FAILED, "tn-not-in-certificate")),
    ("15559990002", (437, VERSTAT_FAILED, "tn-not-in-certificate")),
])  # fmt: skip
def test_orig_must_be_inside_the_delegated_numbers(pki: Pki, delegate_body: tuple[bytes, Signer], orig: str,
                                                   expected: tuple[int | None, str, str | None]) -> None:  # fmt: skip
    body, signer = delegate_body
    entry = pki.trust.validate_body(X5U, body, NOW)
    value = signer.sign(orig, ["15550100001"], "A", ORIGID, NOW)
    result = Verifier().verify([value], orig, ["15550100001"], None, NOW, {X5U: entry})
    check = result.failures[0].check if result.failures else None
    assert (result.sip_code, result.verstat, check) == expected, result.failures
    if expected[0] is None:
        assert result.spc == "9999"


def test_delegate_without_an_spc_in_its_chain_is_437(pki: Pki) -> None:
    """A TN-only certificate issued straight by the STI-CA intermediate: no delegating SP, no SPC."""
    start, end = utc(NOW - 86400), utc(NOW + 86400 * 30)
    leaf = issue("orphan delegate", pki.demo.intermediate, ca=False, tnauthlist_der=encode_tnauthlist(ranges=(RANGE,)),
                 not_before=start, not_after=end)  # fmt: skip
    entry = pki.trust.validate_body(X5U, pem(leaf.cert) + pem(pki.demo.intermediate.cert), NOW)
    assert [(f.check, f.sip_code) for f in entry.failures] == [("delegate-no-spc", 437)]
    value = Signer(SigningProfile("d", "", X5U), key=leaf.key).sign("15551230001", ["15550100001"], "A", ORIGID, NOW)
    result = Verifier().verify([value], "15551230001", ["15550100001"], None, NOW, {X5U: entry})
    assert (result.sip_code, result.verstat) == (437, VERSTAT_FAILED)


@pytest.mark.parametrize(("issuer_tnauthlist", "check"), [
    (encode_tnauthlist(spcs=("9999",), ranges=(("15551230000", 100),)), "delegate-scope"),  # leaf wider than issuer
    (b"\x30\x00", "delegate-issuer-tnauthlist"),  # the SP CA's TNAuthList does not decode
])  # fmt: skip
def test_delegate_outside_its_issuer_is_437(pki: Pki, issuer_tnauthlist: bytes, check: str) -> None:
    start, end = utc(NOW - 86400), utc(NOW + 86400 * 30)
    sp_ca = issue("SP CA with numbers", pki.demo.intermediate, ca=True, path_length=0, not_before=start, not_after=end,
                  tnauthlist_der=issuer_tnauthlist)  # fmt: skip
    leaf = issue("too wide", sp_ca, ca=False, tnauthlist_der=encode_tnauthlist(ranges=(RANGE,)), not_before=start,
                 not_after=end)  # fmt: skip
    body = pem(leaf.cert) + pem(sp_ca.cert) + pem(pki.demo.intermediate.cert)
    entry = pki.trust.validate_body(X5U, body, NOW)
    assert [(f.check, f.sip_code) for f in entry.failures] == [(check, 437)]
    value = Signer(SigningProfile("d", "", X5U), key=leaf.key).sign("15551230001", ["15550100001"], "A", ORIGID, NOW)
    result = Verifier().verify([value], "15551230001", ["15550100001"], None, NOW, {X5U: entry})
    assert (result.sip_code, result.verstat, result.failures[0].check) == (437, VERSTAT_FAILED, check)


def test_delegate_ca_needs_room_in_the_path_length(pki: Pki) -> None:
    """The demo intermediate now allows one CA below it (pathLen 1); a pathLen-0 issuer would refuse the SP CA."""
    start = utc(NOW - 86400)
    end = start + datetime.timedelta(days=30)
    tight = issue("tight intermediate", pki.demo.root, ca=True, path_length=0, not_before=start, not_after=end)
    sp_ca = issue("SP CA", tight, ca=True, path_length=0, spc="9999", not_before=start, not_after=end)
    leaf = issue("delegate", sp_ca, ca=False, tnauthlist_der=encode_tnauthlist(ranges=(RANGE,)), not_before=start,
                 not_after=end)  # fmt: skip
    entry = pki.trust.validate_body(X5U, pem(leaf.cert) + pem(sp_ca.cert) + pem(tight.cert), NOW)
    assert [(f.check, f.sip_code) for f in entry.failures] == [("cert-untrusted", 437)]
