"""Shared test material: a demo PKI at a frozen clock, and a forger for hand-made PASSporTs."""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proxy.stir.certs import CertEntry, TrustStore
from proxy.stir.demo_certs import DemoSet, build_demo_set, write_demo_set
from proxy.stir.signer import Signer, SigningProfile

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
X5U = "https://cert.example.com/sp.pem"
ORIGID = "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"
ORIG = "15550100000"
DEST = "15550100001"

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO.parent / "shared" / "vectors" / "libstirshaken"


def utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


@dataclass
class Pki:
    demo: DemoSet
    trust: TrustStore
    entry: CertEntry
    signer: Signer
    directory: Path

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.demo.sp.key


def make_pki(directory: Path, x5u: str = X5U, now: float = NOW) -> Pki:
    demo = build_demo_set(utc(now))
    write_demo_set(directory, demo)
    trust = TrustStore.from_paths([directory / "ca.pem"])
    entry = trust.validate_body(x5u, (directory / "sp.pem").read_bytes(), now)
    assert entry.ok, entry.failures
    signer = Signer(SigningProfile("test", str(directory / "sp.key"), x5u))
    return Pki(demo, trust, entry, signer, directory)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U}
    h.update(over)
    return {k: v for k, v in h.items() if v is not None}


def claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "attest": "A",
        "dest": {"tn": [DEST]},
        "iat": NOW,
        "orig": {"tn": ORIG},
        "origid": ORIGID,
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def forge(key: ec.EllipticCurvePrivateKey, head: dict[str, Any] | bytes, body: dict[str, Any] | bytes) -> str:
    """A JWS over arbitrary header/payload bytes, correctly signed: to test claim checks, not signatures."""
    hb = head if isinstance(head, bytes) else json.dumps(head, separators=(",", ":")).encode()
    pb = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    signing_input = f"{b64(hb)}.{b64(pb)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def ident(token: str, info: str | None = X5U, alg: str | None = "ES256", ppt: str | None = "shaken") -> str:
    value = token
    if info is not None:
        value += f";info=<{info}>"
    if alg is not None:
        value += f";alg={alg}"
    if ppt is not None:
        value += f";ppt={ppt}"
    return value
