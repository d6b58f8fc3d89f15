"""Revocation through CRL distribution points (ATIS-1000080 §6.4.1): pure decisions, no I/O.

STI intermediate and end-entity certificates name, in a CRL Distribution Points extension, the URL of the CRL
that covers them, and (ATIS-1000080 v004) in `cRLIssuer` the name of whoever signs that CRL (the STI-PA). The
fetcher (`crl_fetcher.py`) downloads and caches the CRLs; this module says which CRL covers which certificate,
whose signature a CRL must carry, and what the answer is:

- no distribution point: nothing to check (static `crl_dir` CRLs still apply, `certs.TrustStore`);
- a current CRL (nextUpdate in the future) signed by the right key: revoked -> 437 `cert-revoked`;
- no usable CRL (unreachable, bad signature, expired): `unavailable="pass"` lets the certificate through with a
  note, `"fail"` makes it 437 `crl-unavailable`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import Failure, Outcome

Unavailable = Literal["pass", "fail"]


@dataclass(frozen=True, slots=True)
class DistributionPoint:
    """One DistributionPoint: its URLs (tried in order) and, for an indirect CRL, the CRL issuer's name."""

    urls: tuple[str, ...]
    crl_issuer: x509.Name | None = None


@dataclass(frozen=True, slots=True)
class CrlCheck:
    """A chain member to check against the CRL of one of its distribution points."""

    cert: x509.Certificate
    issuer: x509.Certificate
    point: DistributionPoint


@dataclass(frozen=True, slots=True)
class CrlResult:
    """What the fetcher has for one URL: a parsed CRL, or why there is none."""

    url: str
    crl: x509.CertificateRevocationList | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CrlVerdict:
    """The revocation answer for one chain: failures (437), notes, and until when it holds (epoch seconds):
    the earliest nextUpdate of the CRLs used, or `retry_at` when a CRL was unavailable."""

    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = ()
    valid_until: float = math.inf
    unavailable: bool = False


def distribution_points(cert: x509.Certificate) -> tuple[DistributionPoint, ...]:
    """The certificate's CRL distribution points that name at least one http(s) URL."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return ()
    out: list[DistributionPoint] = []
    for dp in ext.value:
        urls = tuple(
            n.value
            for n in dp.full_name or ()
            if isinstance(n, x509.UniformResourceIdentifier) and n.value.lower().startswith(("http://", "https://"))
        )
        issuer = next((n.value for n in dp.crl_issuer or () if isinstance(n, x509.DirectoryName)), None)
        if urls:
            out.append(DistributionPoint(urls, issuer))
    return tuple(out)


def chain_checks(chain: Sequence[x509.Certificate]) -> list[CrlCheck]:
    """Every (certificate, issuer, distribution point) of a verified chain (leaf first, anchor last)."""
    return [
        CrlCheck(cert, issuer, point)
        for cert, issuer in itertools.pairwise(chain)
        for point in distribution_points(cert)
    ]


def parse_crl(body: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER; ValueError when it is neither."""
    if b"-----BEGIN" in body:
        return x509.load_pem_x509_crl(body)
    return x509.load_der_x509_crl(body)


def signer_candidates(check: CrlCheck, others: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Certificates whose key may sign the CRL of `check`: the certificate's issuer for a direct CRL; for an
    indirect one (cRLIssuer), the known certificates (anchors, chain, configured CRL signers) of that name."""
    name = check.point.crl_issuer
    if name is None or name == check.issuer.subject:
        return [check.issuer]
    return [c for c in others if c.subject == name]


def signature_ok(crl: x509.CertificateRevocationList, candidates: Sequence[x509.Certificate]) -> bool:
    """The CRL names one of the candidates as issuer and carries its valid signature."""
    for cert in candidates:
        if cert.subject != crl.issuer:
            continue
        key = cert.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) and crl.is_signature_valid(key):
            return True
    return False


def next_update(crl: x509.CertificateRevocationList) -> float | None:
    nu = crl.next_update_utc
    return nu.timestamp() if nu is not None else None


def is_current(crl: x509.CertificateRevocationList, now: float, skew: float = 300.0) -> bool:
    """thisUpdate not in the future (beyond a small skew) and nextUpdate present and not passed."""
    nu = next_update(crl)
    return nu is not None and now < nu and crl.last_update_utc.timestamp() <= now + skew


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """The certificate's serial is listed. An entry naming another certificateIssuer (indirect CRL) does not
    count; entries without one are taken to cover the certificate (the STI-PA CRL lists serials)."""
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return False
    try:
        names = entry.extensions.get_extension_for_class(x509.CertificateIssuer).value
    except x509.ExtensionNotFound:
        return True
    return any(isinstance(n, x509.DirectoryName) and n.value == cert.issuer for n in names)


def _cred(check: str, detail: str) -> Failure:
    return Failure(check, detail, Outcome.BAD_CREDENTIAL)


def evaluate(
    checks: Sequence[CrlCheck],
    results: Mapping[str, CrlResult],
    others: Sequence[x509.Certificate],
    now: float,
    unavailable: Unavailable = "pass",
    retry_at: float | None = None,
) -> CrlVerdict:
    """Revocation of a chain from the CRLs the fetcher returned (by URL). Pure: `now` is passed in."""
    failures: list[Failure] = []
    notes: list[str] = []
    valid_until = math.inf
    missing = False
    for check in checks:
        candidates = signer_candidates(check, others)
        subject = check.cert.subject.rfc4514_string()
        problems: list[str] = []
        used: x509.CertificateRevocationList | None = None
        for url in check.point.urls:
            result = results.get(url)
            if result is None or result.crl is None:
                problems.append(f"{url}: {result.error if result is not None else 'not fetched'}")
            elif not signature_ok(result.crl, candidates):
                problems.append(f"{url}: CRL signature does not verify with its issuer's key")
            elif not is_current(result.crl, now):
                problems.append(f"{url}: CRL is expired or not yet valid")
            else:
                used = result.crl
                break
        if used is None:
            missing = True
            detail = f"no usable CRL for {subject}: " + "; ".join(problems)
            if unavailable == "fail":
                failures.append(_cred("crl-unavailable", detail))
            else:
                notes.append("crl-unavailable")
            continue
        nu = next_update(used)
        if nu is not None:
            valid_until = min(valid_until, nu)
        if is_revoked(used, check.cert):
            failures.append(_cred("cert-revoked", f"{subject} is revoked (CRL {check.point.urls[0]})"))
        else:
            notes.append("crl-checked")
    if missing and retry_at is not None:
        valid_until = min(valid_until, retry_at)
    return CrlVerdict(tuple(failures), tuple(dict.fromkeys(notes)), valid_until, missing)
