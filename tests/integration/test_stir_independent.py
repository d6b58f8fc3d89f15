"""Delegate certificates and div PASSporTs against implementations stirgate did not write (issue 17).

- secsipidx (libsecsipid 1.2) signs with any P-256 key and signs arbitrary header/payload JSON, so it signs
  with the delegate key and signs div PASSporTs; stirgate verifies both. It cannot *verify* a div PASSporT (it
  refuses every ppt but shaken) nor check a TNAuthList, so in that direction:
- PyJWT verifies the ES256 signature of stirgate's PASSporTs (delegate-signed shaken, div), and
- `openssl verify` checks the delegate certificate's chain (delegate -> SP CA -> intermediate -> root).
The delegate set comes from `stirgate certs init --delegate-range ... --delegate-tn ...`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proxy.stir.certs import CertEntry, TrustStore
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier
from tests.integration import harness

SECSIPIDX = shutil.which("secsipidx")
OPENSSL = shutil.which("openssl")
X5U = "https://cert.example.com/delegate.pem"
SP_X5U = "https://cert.example.com/sp.pem"
ORIGID = "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"
DEST = "15550100001"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("delegate")
    proc = subprocess.run([*harness.stirgate_command(), "certs", "init", str(d), "--delegate-range",
                           "15551230000-15551230999", "--delegate-tn", "15559990001"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    leaf = x509.load_pem_x509_certificates((d / "delegate.pem").read_bytes())[0]
    (d / "delegate-leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    (d / "delegate.pub").write_bytes(_pub(leaf))
    sp = x509.load_pem_x509_certificates((d / "sp.pem").read_bytes())[0]
    (d / "sp.pub").write_bytes(_pub(sp))
    return d


def _pub(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _entry(demo: Path, name: str, url: str, now: float) -> CertEntry:
    trust = TrustStore.from_paths([demo / "ca.pem"])
    entry = trust.validate_body(url, (demo / name).read_bytes(), now)
    assert entry.ok, entry.failures
    return entry


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
def test_openssl_verifies_the_delegate_chain(demo: Path, tmp_path: Path) -> None:
    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_bytes((demo / "intermediate.pem").read_bytes() + (demo / "delegate-ca.pem").read_bytes())
    ok = subprocess.run([str(OPENSSL), "verify", "-CAfile", str(demo / "ca.pem"), "-untrusted", str(untrusted),
                         str(demo / "delegate-leaf.pem")], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK"), ok.stdout + ok.stderr
    # guard: without the SP's CA certificate there is no chain, openssl says so
    bad = subprocess.run([str(OPENSSL), "verify", "-CAfile", str(demo / "ca.pem"), "-untrusted",
                          str(demo / "intermediate.pem"), str(demo / "delegate-leaf.pem")],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode != 0


@pytest.mark.parametrize(("orig", "passes"), [("15551230042", True), ("15559990001", True), ("15551240042", False)])
def test_stirgate_delegate_passport_checked_by_pyjwt(demo: Path, orig: str, passes: bool) -> None:
    now = time.time()
    signer = Signer(SigningProfile("delegate", str(demo / "delegate.key"), X5U))
    value = signer.sign(orig, [DEST], "A", ORIGID, now)
    token = value.split(";")[0]
    claims = jwt.decode(token, (demo / "delegate.pub").read_bytes(), algorithms=["ES256"])
    assert claims["orig"] == {"tn": orig}
    with pytest.raises(jwt.InvalidSignatureError):  # guard: PyJWT does refuse another key
        jwt.decode(token, (demo / "sp.pub").read_bytes(), algorithms=["ES256"])
    result = Verifier().verify([value], orig, [DEST], None, now, {X5U: _entry(demo, "delegate.pem", X5U, now)})
    if passes:
        assert (result.verstat, result.spc) == (VERSTAT_PASSED, "9999"), result.failures
    else:
        assert (result.sip_code, result.verstat, result.failures[0].check) == (
            437, VERSTAT_FAILED, "tn-not-in-certificate")


def _secsipidx(*args: str) -> subprocess.CompletedProcess[str]:
    assert SECSIPIDX is not None
    return subprocess.run([SECSIPIDX, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(SECSIPIDX is None, reason="secsipidx not installed (apt-get install secsipidx)")
@pytest.mark.parametrize(("orig", "expected"), [
    ("15551230999", (None, VERSTAT_PASSED)),
    ("15551231000", (437, VERSTAT_FAILED)),
])  # fmt: skip
def test_secsipidx_signed_with_the_delegate_key(demo: Path, orig: str, expected: tuple[int | None, str]) -> None:
    proc = _secsipidx("-sign-full", "-orig-tn", orig, "-dest-tn", DEST, "-attest", "A", "-x5u", X5U,
                      "-k", str(demo / "delegate.key"), "-orig-id", ORIGID)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    value = proc.stdout.strip().splitlines()[-1]
    payload = value.split(";")[0].split(".")[1]
    iat = json.loads(jwt.utils.base64url_decode(payload))["iat"]
    result = Verifier().verify([value], orig, [DEST], None, iat, {X5U: _entry(demo, "delegate.pem", X5U, iat)})
    assert (result.sip_code, result.verstat) == expected, result.failures


@pytest.mark.skipif(SECSIPIDX is None, reason="secsipidx not installed (apt-get install secsipidx)")
@pytest.mark.parametrize("tamper", [False, True])
def test_secsipidx_signed_div_completes_the_chain(demo: Path, tamper: bool) -> None:
    """RFC 8946 claims signed by secsipidx as a div PASSporT (its -sign takes header and payload JSON)."""
    now = int(time.time())
    caller, forwarder, target = "12155551212", "12155551213", "12155551214"
    header = {"alg": "ES256", "ppt": "div", "typ": "passport", "x5u": SP_X5U}
    payload = {"dest": {"tn": [target]}, "div": {"tn": forwarder}, "iat": now, "orig": {"tn": caller}}
    proc = _secsipidx("-sign", "-header", json.dumps(header, separators=(",", ":")),
                      "-payload", json.dumps(payload, separators=(",", ":")), "-k", str(demo / "sp.key"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip().splitlines()[-1]
    if tamper:  # the payload re-encoded with another diverting number, signature kept
        head, _, sig = token.split(".")
        forged = jwt.utils.base64url_encode(json.dumps({**payload, "div": {"tn": "12155550000"}},
                                                       separators=(",", ":")).encode()).decode()  # fmt: skip
        token = f"{head}.{forged}.{sig}"
    div = f"{token};info=<{SP_X5U}>;alg=ES256;ppt=div"
    shaken = Signer(SigningProfile("sp", str(demo / "sp.key"), SP_X5U)).sign(caller, [forwarder], "A", ORIGID, now)
    result = Verifier().verify([shaken, div], caller, [target], None, now, {SP_X5U: _entry(demo, "sp.pem", SP_X5U,
                                                                                           now)})  # fmt: skip
    if tamper:
        assert (result.sip_code, result.verstat) == (438, VERSTAT_FAILED)
        assert [f.check for f in result.headers[1].failures] == ["signature-invalid"]
    else:
        assert (result.verstat, result.chain) == (VERSTAT_PASSED, ("shaken", "div")), result.failures
