"""STI certificates: trust anchors, chain validation, TNAuthList/SPC and CRL, turned into one CertEntry.

A CertEntry is computed once per x5u body (on fetch) and cached; the per-call verifier only re-checks the
validity window against its `now`, so verifying a call with a cached certificate does no X.509 work at all.

Chain building and signature/validity/basic-constraints checks use `cryptography.x509.verification` with the
WebPKI CA profile for issuers and `permit_all` for the leaf: STI SP certificates are not TLS certificates
(no SAN, often no EKU), so the WebPKI end-entity profile would reject every one of them. What SHAKEN asks of
the leaf (EC P-256 key, digitalSignature when keyUsage is present, not a CA, a TNAuthList) is checked here
by hand.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from .errors import Failure, Outcome
from .tnauthlist import TNAuthList, TNAuthListError, certificate_tnauthlist

_CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")
_CRL_SUFFIXES = (".pem", ".crl", ".der")


def _bad_info(check: str, detail: str) -> Failure:
    return Failure(check, detail, Outcome.BAD_INFO)


def _bad_cred(check: str, detail: str) -> Failure:
    return Failure(check, detail, Outcome.BAD_CREDENTIAL)


@dataclass(frozen=True, slots=True)
class CertEntry:
    """What the verifier needs from one x5u URL, or why that URL cannot be used.

    `failures` non-empty means the certificate must not be used; 436-class failures come from the fetch,
    437-class ones from validation. `not_before`/`not_after` span the whole validated chain (epoch seconds).
    """

    url: str
    failures: tuple[Failure, ...] = ()
    public_key: ec.EllipticCurvePublicKey | None = None
    subject: str | None = None
    spc: str | None = None
    tnauthlist: TNAuthList | None = None
    not_before: float = 0.0
    not_after: float = 0.0
    notes: tuple[str, ...] = field(default=())
    #: The leaf's TNAuthList when it names telephone numbers (a delegate certificate, ATIS-1000092): the
    #: PASSporT's orig must be covered. None for SPC-only certificates (no per-call check).
    scope: TNAuthList | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.public_key is not None

    @staticmethod
    def fetch_failure(url: str, check: str, detail: str) -> CertEntry:
        return CertEntry(url, failures=(_bad_info(check, detail),))


def parse_cert_body(body: bytes) -> list[x509.Certificate]:
    """Certificates of an x5u response: PEM (leaf first, then intermediates) or a single DER certificate."""
    if b"-----BEGIN" in body:
        return list(x509.load_pem_x509_certificates(body))
    return [x509.load_der_x509_certificate(body)]


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    return parse_cert_body(data)


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _files(folder: str | Path, suffixes: Iterable[str]) -> list[Path]:
    base = Path(folder)
    return sorted(p for p in base.iterdir() if p.is_file() and p.suffix.lower() in tuple(suffixes))


def load_anchors(paths: Sequence[str | Path]) -> list[x509.Certificate]:
    """Trust anchors from files and/or folders of PEM/DER certificates."""
    out: list[x509.Certificate] = []
    for p in map(Path, paths):
        for f in _files(p, _CERT_SUFFIXES) if p.is_dir() else [p]:
            out.extend(_load_certs(f))
    return out


def _epoch(dt: datetime.datetime) -> float:
    return dt.timestamp()


class TrustStore:
    """STI-CA anchors (+ optional CRLs) and the validation of an x5u body against them."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        crls: Sequence[x509.CertificateRevocationList] = (),
        *,
        lenient_tnauthlist: bool = False,
        max_chain_depth: int = 4,
    ) -> None:
        # No anchors is a store that trusts nothing (a trust list not downloaded yet): every chain is 437.
        self.anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        self._store = verification.Store(list(anchors)) if anchors else None
        self._crls = {crl.issuer.public_bytes(): crl for crl in crls}
        self.lenient_tnauthlist = lenient_tnauthlist
        self._depth = max_chain_depth

    @classmethod
    def from_paths(
        cls,
        anchors: Sequence[str | Path],
        crl_dir: str | Path | None = None,
        *,
        lenient_tnauthlist: bool = False,
        extra_anchors: Sequence[x509.Certificate] = (),
    ) -> TrustStore:
        """Anchors from files/folders (plus `extra_anchors`, e.g. the STI-PA trust list), CRLs from a folder."""
        crls = [_load_crl(p) for p in _files(crl_dir, _CRL_SUFFIXES)] if crl_dir else []
        return cls([*load_anchors(anchors), *extra_anchors], crls, lenient_tnauthlist=lenient_tnauthlist)

    def validate_body(self, url: str, body: bytes, now: float) -> CertEntry:
        """Parse and validate an x5u body; an unparsable body is 436 (unusable), a bad cert 437."""
        return self.validate_body_chain(url, body, now)[0]

    def validate_body_chain(self, url: str, body: bytes, now: float) -> tuple[CertEntry, list[x509.Certificate]]:
        """validate_body, and the verified chain (leaf first, anchor last; empty when none was built), which
        the CRL distribution-point check walks."""
        if not body.strip():
            return CertEntry.fetch_failure(url, "x5u-empty", "x5u returned an empty body"), []
        try:
            certs = parse_cert_body(body)
        except ValueError as exc:
            return CertEntry.fetch_failure(url, "x5u-not-certificate", f"x5u body is not a certificate: {exc}"), []
        if not certs:
            return CertEntry.fetch_failure(url, "x5u-not-certificate", "x5u body holds no certificate"), []
        return self.validate_chain_full(url, certs, now)

    def validate_chain(self, url: str, certs: Sequence[x509.Certificate], now: float) -> CertEntry:
        """Leaf rules, chain to an anchor at `now`, CRL, TNAuthList; every problem recorded."""
        return self.validate_chain_full(url, certs, now)[0]

    def validate_chain_full(
        self, url: str, certs: Sequence[x509.Certificate], now: float
    ) -> tuple[CertEntry, list[x509.Certificate]]:
        """validate_chain, and the verified chain."""
        leaf, intermediates = certs[0], list(certs[1:])
        failures: list[Failure] = []
        notes: list[str] = []
        key = leaf.public_key()
        public_key: ec.EllipticCurvePublicKey | None = None
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            public_key = key
        else:
            failures.append(_bad_cred("cert-key", "leaf key is not EC P-256 (ES256)"))
        not_before = _epoch(leaf.not_valid_before_utc)
        not_after = _epoch(leaf.not_valid_after_utc)
        if now < not_before:
            failures.append(_bad_cred("cert-not-yet-valid", f"leaf valid from {leaf.not_valid_before_utc}"))
        elif now > not_after:
            failures.append(_bad_cred("cert-expired", f"leaf expired {leaf.not_valid_after_utc}"))
        failures.extend(_leaf_usage_failures(leaf))
        chain: list[x509.Certificate] = []
        if not failures:
            chain, chain_failure = self._build_chain(leaf, intermediates, now)
            if chain_failure is not None:
                failures.append(chain_failure)
            for cert in chain:
                not_before = max(not_before, _epoch(cert.not_valid_before_utc))
                not_after = min(not_after, _epoch(cert.not_valid_after_utc))
            failures.extend(self._crl_failures(chain))
        tnauth: TNAuthList | None = None
        spc: str | None = None
        scope: TNAuthList | None = None
        try:
            tnauth = certificate_tnauthlist(leaf)
        except TNAuthListError as exc:
            failures.append(_bad_cred("tnauthlist-invalid", f"TNAuthList does not decode: {exc}"))
        if tnauth is None and not any(f.check == "tnauthlist-invalid" for f in failures):
            failures.append(_bad_cred("tnauthlist-missing", "certificate has no TNAuthList"))
        elif tnauth is not None and tnauth.limited and tnauth.spc is None:
            # ATIS-1000092 delegate certificate: numbers instead of an SPC, issued by the SP's own CA certificate
            # (which carries the SPC); the orig of every PASSporT must be inside (checked per call).
            scope = tnauth
            spc, failure = _delegate_spc(tnauth, chain)
            if failure is not None:
                failures.append(failure)
            else:
                notes.append("delegate-certificate")
        elif tnauth is not None:
            spc = tnauth.spc
            if tnauth.limited:
                scope = tnauth
            if tnauth.bare is not None:
                if self.lenient_tnauthlist:
                    notes.append("tnauthlist-bare-ia5-accepted")
                else:
                    failures.append(
                        _bad_cred(
                            "tnauthlist-bare", "TNAuthList is a bare IA5String, not a SEQUENCE with an SPC"
                        )
                    )
            elif spc is None:
                if self.lenient_tnauthlist:
                    notes.append("tnauthlist-no-spc-accepted")
                else:
                    failures.append(_bad_cred("tnauthlist-no-spc", "TNAuthList carries no SPC"))
        entry = CertEntry(
            url,
            failures=tuple(failures),
            public_key=public_key,
            subject=leaf.subject.rfc4514_string(),
            spc=spc,
            tnauthlist=tnauth,
            not_before=not_before,
            not_after=not_after,
            notes=tuple(notes),
            scope=scope,
        )
        return entry, chain

    def _build_chain(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: float
    ) -> tuple[list[x509.Certificate], Failure | None]:
        if self._store is None:
            return [], _bad_cred("cert-untrusted", "no trust anchors loaded (trust list not available yet)")
        when = datetime.datetime.fromtimestamp(now, datetime.UTC)
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(when)
            .max_chain_depth(self._depth)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, intermediates)
        except verification.VerificationError as exc:
            return [], _bad_cred("cert-untrusted", f"no chain to a trust anchor: {exc}")
        return list(verified.chain), None

    def _crl_failures(self, chain: Sequence[x509.Certificate]) -> list[Failure]:
        """ATIS-1000080 revocation: each chain member against its issuer's CRL, when one is configured."""
        if not self._crls:
            return []
        out: list[Failure] = []
        for cert, issuer in itertools.pairwise(chain):
            crl = self._crls.get(cert.issuer.public_bytes())
            if crl is None:
                continue
            issuer_key = issuer.public_key()
            if not isinstance(issuer_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
                issuer_key
            ):
                out.append(
                    _bad_cred("crl-invalid", f"CRL of {cert.issuer.rfc4514_string()} has a bad signature")
                )
                continue
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                out.append(_bad_cred("cert-revoked", f"{cert.subject.rfc4514_string()} is revoked"))
        return out


def _delegate_spc(scope: TNAuthList, chain: Sequence[x509.Certificate]) -> tuple[str | None, Failure | None]:
    """The SPC of a delegate certificate's chain (its issuer, the SP's CA certificate), and whether the
    delegated numbers lie within what that issuer holds. A chain that was not built is reported elsewhere."""
    for issuer in chain[1:]:
        try:
            parent = certificate_tnauthlist(issuer)
        except TNAuthListError as exc:
            return None, _bad_cred("delegate-issuer-tnauthlist", f"issuer TNAuthList does not decode: {exc}")
        if parent is None:
            continue
        if not scope.within(parent):
            return None, _bad_cred(
                "delegate-scope", f"delegated numbers exceed those of {issuer.subject.rfc4514_string()}"
            )
        if parent.spc is not None:
            return parent.spc, None
    if not chain:
        return None, None
    return None, _bad_cred("delegate-no-spc", "delegate certificate: no issuer in the chain carries an SPC")


def _leaf_usage_failures(leaf: x509.Certificate) -> list[Failure]:
    out: list[Failure] = []
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            out.append(_bad_cred("cert-key-usage", "leaf keyUsage lacks digitalSignature"))
    except x509.ExtensionNotFound:
        pass
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            out.append(_bad_cred("cert-is-ca", "leaf is a CA certificate"))
    except x509.ExtensionNotFound:
        pass
    return out
