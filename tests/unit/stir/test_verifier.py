"""STI-VS outcomes: each case asserts the exact SIP code, verstat and failing check."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.stir.certs import CertEntry, TrustStore
from proxy.stir.demo_certs import build_demo_set, issue, pem
from proxy.stir.verifier import (
    VERSTAT_FAILED,
    VERSTAT_NONE,
    VERSTAT_PASSED,
    VerificationResult,
    Verifier,
    VerifierSettings,
)
from proxy.stir.x5u import X5uPolicy

from .helpers import DEST, NOW, ORIG, X5U, Pki, b64, claims, forge, header, ident, utc

Build = Callable[[Pki], str]


def run(
    pki: Pki,
    values: list[str],
    *,
    orig: str | None = ORIG,
    dest: tuple[str, ...] = (DEST,),
    date: str | None = None,
    now: float = NOW,
    certs: dict[str, CertEntry] | None = None,
    settings: VerifierSettings | None = None,
) -> VerificationResult:
    verifier = Verifier(settings or VerifierSettings())
    return verifier.verify(values, orig, list(dest), date, now, certs if certs is not None else {X5U: pki.entry})


def good(pki: Pki) -> str:
    return pki.signer.sign(ORIG, [DEST], "A", "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b", NOW)


def assert_failed(result: VerificationResult, code: int, check: str) -> None:
    assert result.status == "failed"
    assert result.verstat == VERSTAT_FAILED
    assert result.sip_code == code, result.failures
    assert result.failures[0].check == check, result.failures
    assert result.headers[0].sip_code == code


def test_good_header_passes(pki: Pki) -> None:
    result = run(pki, [good(pki)])
    assert result.status == "passed"
    assert result.verstat == VERSTAT_PASSED
    assert result.sip_code is None
    assert result.attest == "A"
    assert result.origid == "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"
    assert result.spc == "9999"
    assert result.cert_subject is not None and "STI-SP" in result.cert_subject
    assert result.failures == ()


def test_call_tns_are_canonicalised(pki: Pki) -> None:
    result = run(pki, [good(pki)], orig="<sip:+1-555-010-0000@a.example;user=phone>", dest=("tel:+15550100001",))
    assert result.passed


def test_no_identity_is_428(pki: Pki) -> None:
    result = run(pki, [])
    assert (result.status, result.verstat, result.sip_code) == ("missing", VERSTAT_NONE, 428)
    assert result.reason == "Use Identity Header"


def _tok(pki: Pki, h: dict[str, object] | None = None, c: dict[str, object] | bytes | None = None) -> str:
    return forge(pki.key, h if h is not None else header(), c if c is not None else claims())


CASES: list[tuple[str, Build, int, str]] = [
    ("garbage", lambda p: "garbage", 438, "identity-no-params"),
    ("garbage-with-info", lambda p: "%%%;info=<https://cert.example.com/sp.pem>", 438, "identity-token"),
    ("jwt-two-parts", lambda p: ident("abc.def"), 438, "identity-token"),
    ("jwt-header-not-json", lambda p: ident(b64(b"nope") + "." + b64(b"{}") + "." + b64(b"s")), 438, "header-json"),
    ("jwt-not-base64", lambda p: ident("ab=c.def.ghi"), 438, "identity-token"),
    ("payload-not-json", lambda p: ident(_tok(p, c=b"not json")), 438, "payload-json"),
    ("payload-json-array", lambda p: ident(_tok(p, c=b"[1,2]")), 438, "payload-type"),
    ("info-missing", lambda p: ident(_tok(p), info=None), 438, "identity-info-missing"),
    ("alg-missing", lambda p: ident(_tok(p), alg=None), 438, "identity-alg-missing"),
    ("ppt-missing", lambda p: ident(_tok(p), ppt=None), 438, "identity-ppt-missing"),
    ("alg-param-wrong", lambda p: ident(_tok(p), alg="RS256"), 438, "identity-alg"),
    ("alg-jws-wrong", lambda p: ident(_tok(p, header(alg="RS256"))), 438, "jws-alg"),
    ("alg-jws-missing", lambda p: ident(_tok(p, header(alg=None))), 438, "header-type"),
    ("typ-wrong", lambda p: ident(_tok(p, header(typ="JWT"))), 438, "jws-typ"),
    ("ppt-jws-wrong", lambda p: ident(_tok(p, header(ppt="foo")), ppt="foo"), 438, "jws-ppt"),
    ("ppt-param-mismatch", lambda p: ident(_tok(p), ppt="div"), 438, "identity-ppt-mismatch"),
    ("iat-zero", lambda p: ident(_tok(p, c=claims(iat=0))), 403, "iat-stale"),
    ("iat-negative", lambda p: ident(_tok(p, c=claims(iat=-5))), 403, "iat-stale"),
    ("iat-old", lambda p: ident(_tok(p, c=claims(iat=NOW - 61))), 403, "iat-stale"),
    ("iat-future", lambda p: ident(_tok(p, c=claims(iat=NOW + 6))), 403, "iat-future"),
    ("iat-far-future", lambda p: ident(_tok(p, c=claims(iat=NOW + 10**8))), 403, "iat-future"),
    ("iat-null", lambda p: ident(_tok(p, c={**claims(), "iat": None})), 438, "iat-missing"),
    ("iat-absent", lambda p: ident(_tok(p, c={k: v for k, v in claims().items() if k != "iat"})), 438, "iat-missing"),
    ("iat-string", lambda p: ident(_tok(p, c=claims(iat=str(NOW)))), 438, "payload-type"),
    ("iat-garbage", lambda p: ident(_tok(p, c=claims(iat="yesterday"))), 438, "payload-type"),
    ("iat-float", lambda p: ident(_tok(p, c=claims(iat=NOW + 0.5))), 438, "payload-type"),
    ("orig-mismatch", lambda p: ident(_tok(p, c=claims(orig={"tn": "15550109999"}))), 438, "orig-mismatch"),
    ("dest-mismatch", lambda p: ident(_tok(p, c=claims(dest={"tn": ["15550109999"]}))), 438, "dest-mismatch"),
    ("orig-empty", lambda p: ident(_tok(p, c=claims(orig={}))), 438, "orig-missing"),
    (
        "orig-missing",
        lambda p: ident(_tok(p, c={k: v for k, v in claims().items() if k != "orig"})),
        438,
        "orig-missing",
    ),
    ("orig-json-string", lambda p: ident(_tok(p, c=claims(orig='{"tn":"15550100000"}'))), 438, "payload-type"),
    ("orig-tn-number", lambda p: ident(_tok(p, c=claims(orig={"tn": 15550100000}))), 438, "payload-type"),
    ("dest-empty", lambda p: ident(_tok(p, c=claims(dest={"tn": []}))), 438, "dest-missing"),
    ("dest-tn-string", lambda p: ident(_tok(p, c=claims(dest={"tn": DEST}))), 438, "payload-type"),
    (
        "attest-missing",
        lambda p: ident(_tok(p, c={k: v for k, v in claims().items() if k != "attest"})),
        438,
        "attest-missing",
    ),
    ("attest-empty", lambda p: ident(_tok(p, c=claims(attest=""))), 438, "attest-invalid"),
    ("attest-invalid", lambda p: ident(_tok(p, c=claims(attest="D"))), 438, "attest-invalid"),
    (
        "origid-missing",
        lambda p: ident(_tok(p, c={k: v for k, v in claims().items() if k != "origid"})),
        438,
        "origid-missing",
    ),
    ("info-differs", lambda p: ident(_tok(p), info="https://other.example.com/sp.pem"), 438, "info-x5u-mismatch"),
    (
        "x5u-http",
        lambda p: ident(_tok(p, header(x5u="http://cert.example.com/sp.pem")), info="http://cert.example.com/sp.pem"),
        436,
        "x5u-scheme",
    ),
    (
        "x5u-port",
        lambda p: ident(
            _tok(p, header(x5u="https://cert.example.com:8080/sp.pem")), info="https://cert.example.com:8080/sp.pem"
        ),
        436,
        "x5u-port",
    ),
    (
        "x5u-userinfo",
        lambda p: ident(
            _tok(p, header(x5u="https://u:p@cert.example.com/sp.pem")), info="https://u:p@cert.example.com/sp.pem"
        ),
        436,
        "x5u-userinfo",
    ),
    (
        "x5u-query",
        lambda p: ident(
            _tok(p, header(x5u="https://cert.example.com/sp.pem?a=1")), info="https://cert.example.com/sp.pem?a=1"
        ),
        436,
        "x5u-query",
    ),
    (
        "x5u-loopback",
        lambda p: ident(_tok(p, header(x5u="https://127.0.0.1/sp.pem")), info="https://127.0.0.1/sp.pem"),
        436,
        "x5u-ssrf",
    ),
    (
        "x5u-private",
        lambda p: ident(_tok(p, header(x5u="https://10.1.2.3/sp.pem")), info="https://10.1.2.3/sp.pem"),
        436,
        "x5u-ssrf",
    ),
    ("x5u-empty", lambda p: ident(_tok(p, header(x5u="")), info="https://cert.example.com/sp.pem"), 436, "x5u-missing"),
    ("x5u-garbage", lambda p: ident(_tok(p, header(x5u="not a url")), info="not a url"), 436, "x5u-scheme"),
    (
        "x5u-not-fetched",
        lambda p: ident(_tok(p, header(x5u="https://cert.example.net/sp.pem")), info="https://cert.example.net/sp.pem"),
        436,
        "x5u-not-fetched",
    ),
    ("compact-form", lambda p: ident(_tok(p).split(".")[0] + ".." + _tok(p).split(".")[2]), 438, "jws-compact"),
]


@pytest.mark.parametrize(("name", "build", "code", "check"), CASES, ids=[c[0] for c in CASES])
def test_negative(pki: Pki, name: str, build: Build, code: int, check: str) -> None:
    assert_failed(run(pki, [build(pki)]), code, check)


def test_bad_signature_is_438(pki: Pki) -> None:
    value = good(pki)
    token, rest = value.split(";", 1)
    head, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert_failed(run(pki, [f"{head}.{payload}.{flipped};{rest}"]), 438, "signature-invalid")
    other = ec.generate_private_key(ec.SECP256R1())
    assert_failed(run(pki, [ident(forge(other, header(), claims()))]), 438, "signature-invalid")


def test_signature_wrong_length_is_438(pki: Pki) -> None:
    head, payload, _sig = good(pki).split(";", 1)[0].split(".")
    assert_failed(run(pki, [ident(f"{head}.{payload}.{b64(b'x' * 70)}")]), 438, "signature-invalid")


def test_tampered_claims_fail_signature(pki: Pki) -> None:
    value = good(pki)
    head, _payload, sig = value.split(";", 1)[0].split(".")
    forged_payload = b64(b'{"attest":"A","dest":{"tn":["15550100001"]},"iat":1700000000,'
                         b'"orig":{"tn":"15550100000"},"origid":"x"}')  # fmt: skip
    assert_failed(run(pki, [ident(f"{head}.{forged_payload}.{sig}")]), 438, "signature-invalid")


def test_quoted_ppt_and_compact_header_value_pass(pki: Pki) -> None:
    assert run(pki, [ident(_tok(pki), ppt='"shaken"')]).passed


def test_call_without_tns(pki: Pki) -> None:
    assert_failed(run(pki, [good(pki)], orig=None), 438, "orig-call-missing")
    assert_failed(run(pki, [good(pki)], dest=()), 438, "dest-call-missing")


def test_every_failure_is_reported(pki: Pki) -> None:
    value = ident(_tok(pki, c=claims(iat=NOW - 600, orig={"tn": "1"}, attest="Z")))
    result = run(pki, [value])
    checks = [f.check for f in result.failures]
    assert checks == ["attest-invalid", "iat-stale", "orig-mismatch"]
    assert result.sip_code == 438


def test_freshness_window_is_configurable(pki: Pki) -> None:
    value = ident(_tok(pki, c=claims(iat=NOW - 200)))
    assert_failed(run(pki, [value]), 403, "iat-stale")
    assert run(pki, [value], settings=VerifierSettings(iat_max_age=300)).passed


# ---- Date header ----------------------------------------------------------------------------------------------
def _date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def test_date_header_consistent_passes(pki: Pki) -> None:
    assert run(pki, [good(pki)], date=_date(NOW)).passed


@pytest.mark.parametrize(
    ("date", "check"),
    [
        (_date(NOW - 120), "date-stale"),
        (_date(NOW + 60), "date-future"),
        ("not a date", "date-invalid"),
    ],
)
def test_bad_date_header_is_403(pki: Pki, date: str, check: str) -> None:
    assert_failed(run(pki, [good(pki)], date=date), 403, check)


def test_date_far_from_iat_is_403(pki: Pki) -> None:
    value = ident(_tok(pki, c=claims(iat=NOW - 50)))
    settings = VerifierSettings(date_iat_tolerance=10)
    assert_failed(run(pki, [value], date=_date(NOW), settings=settings), 403, "date-iat-mismatch")


def test_date_required(pki: Pki) -> None:
    assert_failed(run(pki, [good(pki)], settings=VerifierSettings(require_date=True)), 403, "date-missing")


# ---- certificates ---------------------------------------------------------------------------------------------
def test_untrusted_chain_is_437(pki: Pki) -> None:
    stranger = build_demo_set(utc(NOW))
    body = pem(stranger.sp.cert) + pem(stranger.intermediate.cert)
    entry = pki.trust.validate_body(X5U, body, NOW)
    value = ident(forge(stranger.sp.key, header(), claims()))
    assert_failed(run(pki, [value], certs={X5U: entry}), 437, "cert-untrusted")


def test_leaf_without_intermediate_is_437(pki: Pki) -> None:
    entry = pki.trust.validate_body(X5U, pem(pki.demo.sp.cert), NOW)
    assert_failed(run(pki, [good(pki)], certs={X5U: entry}), 437, "cert-untrusted")


def test_expired_cert_is_437(pki: Pki) -> None:
    start, end = utc(NOW - 400 * 86400), utc(NOW - 35 * 86400)
    leaf = issue("expired SP", pki.demo.intermediate, ca=False, spc="9999", not_before=start, not_after=end)
    entry = pki.trust.validate_body(X5U, pem(leaf.cert) + pem(pki.demo.intermediate.cert), NOW)
    assert_failed(run(pki, [ident(forge(leaf.key, header(), claims()))], certs={X5U: entry}), 437, "cert-expired")


def test_cached_cert_expiring_later_is_437(pki: Pki) -> None:
    """A cached entry checked at a `now` past its notAfter fails even though it was valid when fetched."""
    assert_failed(run(pki, [good(pki)], now=pki.entry.not_after + 1), 437, "cert-expired")


def test_not_yet_valid_cert_is_437(pki: Pki) -> None:
    start, end = utc(NOW + 86400), utc(NOW + 400 * 86400)
    leaf = issue("future SP", pki.demo.intermediate, ca=False, spc="9999", not_before=start, not_after=end)
    entry = pki.trust.validate_body(X5U, pem(leaf.cert) + pem(pki.demo.intermediate.cert), NOW)
    value = ident(forge(leaf.key, header(), claims()))
    assert_failed(run(pki, [value], certs={X5U: entry}), 437, "cert-not-yet-valid")


def test_no_tnauthlist_is_437(pki: Pki) -> None:
    start, end = utc(NOW - 86400), utc(NOW + 86400)
    leaf = issue("no TNAuthList", pki.demo.intermediate, ca=False, not_before=start, not_after=end)
    entry = pki.trust.validate_body(X5U, pem(leaf.cert) + pem(pki.demo.intermediate.cert), NOW)
    assert_failed(run(pki, [ident(forge(leaf.key, header(), claims()))], certs={X5U: entry}), 437, "tnauthlist-missing")


def test_revoked_cert_is_437(pki: Pki, tmp_path: object) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(pki.demo.sp.cert.serial_number)
        .revocation_date(utc(NOW - 3600))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.demo.intermediate.cert.subject)
        .last_update(utc(NOW - 3600))
        .next_update(utc(NOW + 86400))
        .add_revoked_certificate(revoked)
        .sign(pki.demo.intermediate.key, hashes.SHA256())
    )
    trust = TrustStore([pki.demo.root.cert], [crl])
    entry = trust.validate_body(X5U, (pki.directory / "sp.pem").read_bytes(), NOW)
    assert_failed(run(pki, [good(pki)], certs={X5U: entry}), 437, "cert-revoked")


@pytest.mark.parametrize(
    ("body", "check"),
    [
        (b"", "x5u-empty"),
        (b"garbage", "x5u-not-certificate"),
        (b"-----BEGIN CERTIFICATE-----\nxx\n", "x5u-not-certificate"),
    ],
)
def test_garbage_cert_body_is_436(pki: Pki, body: bytes, check: str) -> None:
    entry = pki.trust.validate_body(X5U, body, NOW)
    assert_failed(run(pki, [good(pki)], certs={X5U: entry}), 436, check)


def test_fetch_failure_entry_is_436(pki: Pki) -> None:
    entry = CertEntry.fetch_failure(X5U, "x5u-http-status", "x5u answered HTTP 404")
    assert_failed(run(pki, [good(pki)], certs={X5U: entry}), 436, "x5u-http-status")


def test_loopback_x5u_allowed_only_by_explicit_override(pki: Pki) -> None:
    url = "https://127.0.0.1:8443/sp.pem"
    value = ident(forge(pki.key, header(x5u=url), claims()), info=url)
    entry = replace(pki.entry, url=url)
    assert_failed(run(pki, [value], certs={url: entry}), 436, "x5u-ssrf")
    settings = VerifierSettings(x5u_policy=X5uPolicy(allow_private=True))
    assert run(pki, [value], certs={url: entry}, settings=settings).passed


# ---- several Identity headers ----------------------------------------------------------------------------------
def test_two_headers_one_bad(pki: Pki) -> None:
    bad = ident(_tok(pki, c=claims(iat=NOW - 600)))
    result = run(pki, [bad, good(pki)])
    assert result.status == "passed"
    assert result.verstat == VERSTAT_PASSED
    assert [h.passed for h in result.headers] == [False, True]
    assert result.headers[0].sip_code == 403
    assert [f.check for f in result.failures] == ["iat-stale"]
    strict = run(pki, [bad, good(pki)], settings=VerifierSettings(multi_header="all"))
    assert (strict.status, strict.verstat, strict.sip_code) == ("failed", VERSTAT_FAILED, 403)


def test_two_bad_headers_report_the_first(pki: Pki) -> None:
    result = run(pki, ["garbage", ident(_tok(pki, c=claims(iat=NOW - 600)))])
    assert (result.sip_code, result.verstat) == (438, VERSTAT_FAILED)
    assert [h.sip_code for h in result.headers] == [438, 403]


def test_div_and_rcd_passports_verify(pki: Pki) -> None:
    from proxy.stir.passport import Rcd

    div = pki.signer.sign_div(ORIG, [DEST], "15550100009", NOW)
    rcd = pki.signer.sign_rcd(ORIG, [DEST], Rcd(nam="Alice"), NOW, crn="Lunch")
    result = run(pki, [good(pki), div, rcd])
    assert result.passed and [h.passed for h in result.headers] == [True, True, True]
    assert [h.ppt for h in result.headers] == ["shaken", "div", "rcd"]
    no_div = ident(forge(pki.key, header(ppt="div"), claims()), ppt="div")
    assert_failed(run(pki, [no_div]), 438, "div-missing")


def test_result_serialises(pki: Pki) -> None:
    result = run(pki, ["garbage"])
    d = result.as_dict()
    assert d["sip_code"] == 438 and d["verstat"] == VERSTAT_FAILED
    assert d["failures"][0]["check"] == "identity-no-params"
    assert result.reason_header() == 'STIR;cause=438;text="Invalid Identity Header"'
    assert run(pki, [good(pki)]).reason_header() is None
    assert datetime.datetime.fromtimestamp(NOW, datetime.UTC).year == 2023
