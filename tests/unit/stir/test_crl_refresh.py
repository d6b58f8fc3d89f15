"""CRL refresh (ATIS-1000080): a CRL dropped into crl_dir takes effect at the next refresh, cached verdicts too."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.authentication import Authenticator
from proxy.config import load_config_text

from .helpers import NOW, X5U, Pki, utc


def _authenticator(pki: Pki, crl_dir: Path) -> Authenticator:
    text = f"""
stir:
  trust_anchors: ["{pki.directory / 'ca.pem'}"]
  crl_dir: "{crl_dir}"
"""
    return Authenticator(load_config_text(text, "crl.yaml"))


def _revoke_sp(pki: Pki, crl_dir: Path) -> None:
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
    (crl_dir / "intermediate.crl").write_bytes(crl.public_bytes(Encoding.PEM))


def test_refresh_applies_a_new_crl_and_forgets_cached_verdicts(pki: Pki, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    auth = _authenticator(pki, crl_dir)
    fetcher = auth.fetcher
    assert fetcher is not None
    body = (pki.directory / "sp.pem").read_bytes()
    before = fetcher.trust.validate_body(X5U, body, NOW)
    assert before.ok
    fetcher.put(before, 3600)

    _revoke_sp(pki, crl_dir)
    assert auth.refresh_crls() is True
    assert fetcher.cached(X5U) is None  # the verdict reached under the old CRLs is gone
    after = fetcher.trust.validate_body(X5U, body, NOW)
    assert not after.ok
    assert [f.check for f in after.failures] == ["cert-revoked"]


def test_unusable_crl_keeps_the_old_store(pki: Pki, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    auth = _authenticator(pki, crl_dir)
    assert auth.fetcher is not None
    old = auth.fetcher.trust
    (crl_dir / "broken.crl").write_bytes(b"-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    try:
        auth.refresh_crls()
    except ValueError:
        pass
    assert auth.fetcher.trust is old


def test_no_crl_dir_means_nothing_to_refresh(pki: Pki) -> None:
    auth = Authenticator(load_config_text(f'stir:\n  trust_anchors: ["{pki.directory / "ca.pem"}"]\n', "x.yaml"))
    assert auth.refresh_crls() is False
