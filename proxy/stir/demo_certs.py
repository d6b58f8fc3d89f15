"""The demo certificate set of TOPOLOGY.md (`stirgate certs init DIR`), for demos and tests only.

A test STI-CA root, an intermediate, the SP certificate (TNAuthList with an SPC) followed by the
intermediate (what the x5u URL serves), the SP's P-256 key, and an https certificate for 127.0.0.1 so the
x5u server can be fetched over real TLS. Extensions follow ATIS-1000080 closely enough that the WebPKI CA
profile of `cryptography.x509.verification` accepts the issuers.

With `--delegate-range`/`--delegate-tn` it also writes an ATIS-1000092 delegate certificate: the SP's own CA
certificate (SPC, issued by the intermediate) and under it an end-entity certificate whose TNAuthList names
telephone numbers instead of an SPC (`delegate.pem` = delegate, SP CA, intermediate; `delegate.key`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tnauthlist import TNAUTHLIST_OID, encode_spc_tnauthlist, encode_tnauthlist

DEFAULT_SPC = "9999"


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stirgate demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _signing_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def issue(
    subject: str,
    issuer: Issued | None,
    *,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int | None = None,
    spc: str | None = None,
    tnauthlist_der: bytes | None = None,
    ip_san: str | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    crl_urls: tuple[str, ...] = (),
    crl_issuer: x509.Name | None = None,
) -> Issued:
    """One certificate; `issuer=None` makes it self-signed. Exposed so tests can build odd certificates.

    `crl_urls`: a CRL Distribution Point with these URLs (and `crl_issuer` as cRLIssuer, ATIS-1000080 v004)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = _name(subject)
    issuer_name = issuer.cert.subject if issuer else name
    signing_key = issuer.key if issuer else key
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(_ca_usage() if ca else _signing_usage(), critical=True)
        .add_extension(ski, critical=False)
    )
    aki_key = issuer.key.public_key() if issuer else key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False
    )
    der = tnauthlist_der if tnauthlist_der is not None else (encode_spc_tnauthlist(spc) if spc else None)
    if der is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(TNAUTHLIST_OID, der), critical=False)
    if crl_urls:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(u) for u in crl_urls],
            relative_name=None,
            reasons=None,
            crl_issuer=[x509.DirectoryName(crl_issuer)] if crl_issuer is not None else None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ip_san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip_san)), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """SEC1 'EC PRIVATE KEY' PEM: the form secsipidx, Kamailio and OpenSSL tools all read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class DemoSet:
    root: Issued
    intermediate: Issued
    sp: Issued
    x5u_server: Issued


def build_demo_set(
    now: datetime.datetime | None = None, spc: str = DEFAULT_SPC, host: str = "127.0.0.1"
) -> DemoSet:
    """The certificates in memory (valid from a day before `now`: clocks on test machines drift)."""
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=1)
    # Path lengths leave room for a delegating SP's CA certificate under the intermediate (ATIS-1000092).
    root = issue("stirgate demo STI-CA root", None, ca=True, path_length=2, not_before=start,
                 not_after=now + datetime.timedelta(days=3650))  # fmt: skip
    inter = issue("stirgate demo STI-CA intermediate", root, ca=True, path_length=1, not_before=start,
                  not_after=now + datetime.timedelta(days=1825))  # fmt: skip
    sp = issue(f"stirgate demo STI-SP {spc}", inter, ca=False, spc=spc, not_before=start,
               not_after=now + datetime.timedelta(days=365))  # fmt: skip
    server = issue(host, root, ca=False, ip_san=host, not_before=start,
                   not_after=now + datetime.timedelta(days=365))  # fmt: skip
    return DemoSet(root, inter, sp, server)


def write_demo_set(directory: str | Path, demo: DemoSet) -> list[Path]:
    """Write the TOPOLOGY.md file set; keys are created mode 0600."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.pem": pem(demo.root.cert),
        "intermediate.pem": pem(demo.intermediate.cert),
        "sp.pem": pem(demo.sp.cert) + pem(demo.intermediate.cert),
        "sp.key": key_pem(demo.sp.key),
        "x5u-server.pem": pem(demo.x5u_server.cert),
        "x5u-server.key": key_pem(demo.x5u_server.key),
    }
    written = []
    for name, data in files.items():
        path = d / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        written.append(path)
    return written


@dataclass(frozen=True, slots=True)
class DelegateSet:
    sp_ca: Issued
    delegate: Issued


def build_delegate(
    demo: DemoSet,
    ranges: tuple[tuple[str, int], ...] = (),
    tns: tuple[str, ...] = (),
    *,
    spc: str = DEFAULT_SPC,
    now: datetime.datetime | None = None,
) -> DelegateSet:
    """ATIS-1000092: the SP's CA certificate (its SPC) and a delegate certificate for `ranges`/`tns` under it."""
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=1)
    sp_ca = issue(f"stirgate demo SP {spc} delegating CA", demo.intermediate, ca=True, path_length=0, spc=spc,
                  not_before=start, not_after=now + datetime.timedelta(days=730))  # fmt: skip
    delegate = issue(f"stirgate demo delegate of SP {spc}", sp_ca, ca=False,
                     tnauthlist_der=encode_tnauthlist(ranges=ranges, tns=tns), not_before=start,
                     not_after=now + datetime.timedelta(days=365))  # fmt: skip
    return DelegateSet(sp_ca, delegate)


def write_delegate(directory: str | Path, demo: DemoSet, delegate: DelegateSet) -> list[Path]:
    d = Path(directory)
    files = {
        "delegate-ca.pem": pem(delegate.sp_ca.cert),
        "delegate.pem": pem(delegate.delegate.cert) + pem(delegate.sp_ca.cert) + pem(demo.intermediate.cert),
        "delegate.key": key_pem(delegate.delegate.key),
    }
    written = []
    for name, data in files.items():
        path = d / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        written.append(path)
    return written


def parse_range(text: str) -> tuple[str, int]:
    """`START-END` (inclusive, same length) or `START+COUNT` into (start, count)."""
    if "+" in text:
        first, _, count = text.partition("+")
        value = (first.strip(), int(count))
    else:
        first, _, last = text.partition("-")
        first, last = first.strip(), last.strip()
        if not (first.isdigit() and last.isdigit() and len(first) == len(last) and int(last) > int(first)):
            raise ValueError(f"range {text!r}: START-END with END > START, same length, or START+COUNT")
        value = (first, int(last) - int(first) + 1)
    if not value[0].isdigit() or value[1] < 2:
        raise ValueError(f"range {text!r}: digits and at least 2 numbers")
    return value


def init_demo_certs(
    directory: str | Path,
    *,
    spc: str = DEFAULT_SPC,
    now: datetime.datetime | None = None,
    delegate_ranges: tuple[tuple[str, int], ...] = (),
    delegate_tns: tuple[str, ...] = (),
) -> list[Path]:
    """`stirgate certs init DIR`: build and write the demo set (and a delegate certificate when numbers are
    given); returns the written paths."""
    demo = build_demo_set(now, spc)
    written = write_demo_set(directory, demo)
    if delegate_ranges or delegate_tns:
        written += write_delegate(directory, demo, build_delegate(demo, delegate_ranges, delegate_tns, spc=spc,
                                                                  now=now))  # fmt: skip
    return written
