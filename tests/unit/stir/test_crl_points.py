"""Revocation through CRL distribution points (proxy/stir/crl.py), decided in memory: which CRL covers which
certificate, whose signature it must carry, and the verdict (revoked 437, unavailable pass|fail)."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from proxy.stir import crl
from proxy.stir.crl import CrlResult
from proxy.stir.demo_certs import issue
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier

from .crl_helpers import make_crl, sp_with_cdp
from .helpers import DEST, NOW, ORIG, ORIGID, Pki
from .helpers import X5U as URL

CRL_URL = "https://crl.example.com/sti.crl"


def _chain(pki: Pki, body: bytes) -> list[x509.Certificate]:
    entry, chain = pki.trust.validate_body_chain(URL, body, NOW)
    assert entry.ok, entry.failures
    return chain


def _verdict(pki: Pki, body: bytes, crl_body: bytes | None, unavailable: crl.Unavailable = "pass",
             others: tuple[x509.Certificate, ...] = ()) -> crl.CrlVerdict:  # fmt: skip
    chain = _chain(pki, body)
    checks = crl.chain_checks(chain)
    result = CrlResult(CRL_URL, crl.parse_crl(crl_body)) if crl_body else CrlResult(CRL_URL, error="HTTP 503")
    return crl.evaluate(checks, {CRL_URL: result}, (*others, *pki.trust.anchors, *chain), NOW, unavailable,
                        retry_at=NOW + 10)  # fmt: skip


def test_distribution_points_read_from_the_certificate(pki: Pki) -> None:
    cdp = sp_with_cdp(pki.demo, [CRL_URL, "ldap://ignored"], NOW)
    assert crl.distribution_points(cdp.sp.cert) == (crl.DistributionPoint((CRL_URL,), None),)
    assert crl.distribution_points(pki.demo.sp.cert) == ()
    checks = crl.chain_checks(_chain(pki, cdp.body))
    assert [(c.cert.subject, c.issuer.subject) for c in checks] == [
        (cdp.sp.cert.subject, pki.demo.intermediate.cert.subject)
    ]


def test_not_revoked_passes_until_next_update(pki: Pki) -> None:
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW)
    v = _verdict(pki, cdp.body, make_crl(pki.demo.intermediate, NOW, revoked=[pki.demo.sp.cert], next_in=500))
    assert (v.failures, v.notes, v.valid_until) == ((), ("crl-checked",), NOW + 500)


def test_revoked_certificate_is_437(pki: Pki) -> None:
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW)
    v = _verdict(pki, cdp.body, make_crl(pki.demo.intermediate, NOW, revoked=[cdp.sp.cert]))
    assert [(f.check, f.sip_code) for f in v.failures] == [("cert-revoked", 437)]


@pytest.mark.parametrize("problem", ["wrong-signer", "expired", "unreachable"])
@pytest.mark.parametrize("unavailable", ["pass", "fail"])
def test_unusable_crl_follows_the_policy(pki: Pki, problem: str, unavailable: crl.Unavailable) -> None:
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW)
    body: bytes | None
    if problem == "wrong-signer":  # same issuer name, another key: a forged CRL
        start = datetime.datetime.fromtimestamp(NOW - 86400, datetime.UTC)
        forger = issue("stirgate demo STI-CA intermediate", None, ca=True, not_before=start,
                       not_after=start + datetime.timedelta(days=30))  # fmt: skip
        body = make_crl(forger, NOW, revoked=[])
    elif problem == "expired":
        body = make_crl(pki.demo.intermediate, NOW, next_in=-1, last_ago=86400)
    else:
        body = None
    v = _verdict(pki, cdp.body, body, unavailable)
    assert v.unavailable and v.valid_until == NOW + 10
    if unavailable == "fail":
        assert [(f.check, f.sip_code) for f in v.failures] == [("crl-unavailable", 437)]
    else:
        assert (v.failures, v.notes) == ((), ("crl-unavailable",))


def test_indirect_crl_signed_by_the_named_crl_issuer(pki: Pki) -> None:
    """ATIS-1000080 v004: cRLIssuer names the STI-PA; its CRL verifies with the configured signer's key only."""
    start = datetime.datetime.fromtimestamp(NOW - 86400, datetime.UTC)
    sti_pa = issue("STI-PA CRL signer", None, ca=True, not_before=start,
                   not_after=start + datetime.timedelta(days=30))  # fmt: skip
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW, crl_issuer=sti_pa.cert.subject)
    body = make_crl(sti_pa, NOW, revoked=[cdp.sp.cert])
    revoked = _verdict(pki, cdp.body, body, "fail", others=(sti_pa.cert,))
    assert [f.check for f in revoked.failures] == ["cert-revoked"]
    unknown_signer = _verdict(pki, cdp.body, body, "fail")
    assert [f.check for f in unknown_signer.failures] == ["crl-unavailable"]
    direct_signed = _verdict(pki, cdp.body, make_crl(pki.demo.intermediate, NOW), "fail", others=(sti_pa.cert,))
    assert [f.check for f in direct_signed.failures] == ["crl-unavailable"]  # not the named issuer


def test_revoked_entry_for_another_issuer_does_not_count(pki: Pki) -> None:
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW)
    other = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "someone else")])
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(cdp.sp.cert.serial_number)
        .revocation_date(datetime.datetime.fromtimestamp(NOW - 60, datetime.UTC))
        .add_extension(x509.CertificateIssuer([x509.DirectoryName(other)]), critical=True)
        .build()
    )
    parsed = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.demo.intermediate.cert.subject)
        .last_update(datetime.datetime.fromtimestamp(NOW - 60, datetime.UTC))
        .next_update(datetime.datetime.fromtimestamp(NOW + 600, datetime.UTC))
        .add_revoked_certificate(revoked)
        .sign(pki.demo.intermediate.key, hashes.SHA256())
    )
    assert not crl.is_revoked(parsed, cdp.sp.cert)


def test_verifier_reports_revocation_as_437_tn_validation_failed(pki: Pki) -> None:
    """The verdict a CertEntry carries reaches the call: 437 Unsupported Credential, verstat failed."""
    cdp = sp_with_cdp(pki.demo, [CRL_URL], NOW)
    entry, chain = pki.trust.validate_body_chain(URL, cdp.body, NOW)
    v = crl.evaluate(crl.chain_checks(chain),
                     {CRL_URL: CrlResult(CRL_URL, crl.parse_crl(make_crl(pki.demo.intermediate, NOW,
                                                                         revoked=[cdp.sp.cert])))},
                     chain, NOW)  # fmt: skip
    revoked_entry = replace(entry, failures=v.failures)
    signer = Signer(SigningProfile("t", "", URL), key=cdp.sp.key)
    value = signer.sign(ORIG, [DEST], "A", ORIGID, NOW)
    result = Verifier().verify([value], ORIG, [DEST], None, NOW, {URL: revoked_entry})
    assert (result.sip_code, result.verstat, result.failures[0].check) == (437, VERSTAT_FAILED, "cert-revoked")
    fine = Verifier().verify([value], ORIG, [DEST], None, NOW, {URL: entry})
    assert (fine.sip_code, fine.verstat) == (None, VERSTAT_PASSED)
