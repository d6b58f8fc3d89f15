"""Certificates with CRL distribution points and the CRLs for them (tests only)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.stir.demo_certs import DemoSet, Issued, issue, pem


@dataclass
class CdpSet:
    """An SP certificate whose CRL Distribution Point names `url`, chained through the demo intermediate."""

    sp: Issued
    body: bytes  # what the x5u URL serves: SP certificate + intermediate


def sp_with_cdp(demo: DemoSet, urls: Sequence[str], now: float, crl_issuer: x509.Name | None = None,
                spc: str = "7777") -> CdpSet:  # fmt: skip
    start = datetime.datetime.fromtimestamp(now - 86400, datetime.UTC)
    end = datetime.datetime.fromtimestamp(now + 365 * 86400, datetime.UTC)
    sp = issue(f"SP {spc} with CDP", demo.intermediate, ca=False, spc=spc, not_before=start, not_after=end,
               crl_urls=tuple(urls), crl_issuer=crl_issuer)  # fmt: skip
    return CdpSet(sp, pem(sp.cert) + pem(demo.intermediate.cert))


def make_crl(signer: Issued, now: float, *, revoked: Sequence[x509.Certificate] = (), next_in: float = 86400,
             last_ago: float = 3600, pem_form: bool = False) -> bytes:  # fmt: skip
    """A CRL signed by `signer`, listing `revoked`, valid from `now - last_ago` to `now + next_in`."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer.cert.subject)
        .last_update(datetime.datetime.fromtimestamp(now - last_ago, datetime.UTC))
        .next_update(datetime.datetime.fromtimestamp(now + next_in, datetime.UTC))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(datetime.datetime.fromtimestamp(now - 600, datetime.UTC))
            .build()
        )
    crl = builder.sign(signer.key, hashes.SHA256())
    return crl.public_bytes(Encoding.PEM if pem_form else Encoding.DER)
