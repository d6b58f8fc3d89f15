"""Cross-implementation checks with Debian's secsipidx (libsecsipid), both directions, attest A, B and C."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from proxy.stir.verifier import VERSTAT_PASSED, Verifier
from tests.unit.stir.helpers import DEST, ORIG, ORIGID, X5U, Pki, make_pki

SECSIPIDX = shutil.which("secsipidx")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SECSIPIDX is None, reason="secsipidx not installed (apt-get install secsipidx)"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # secsipidx checks iat against the real clock, so this PKI is built at the real time.
    pki = make_pki(Path(tmp_path_factory.mktemp("secsipidx")), now=time.time())
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(pki.directory / "sp.pem"), "-pubkey", "-noout"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    (pki.directory / "sp.pub").write_bytes(pub)
    return pki


def _secsipidx(*args: str) -> subprocess.CompletedProcess[str]:
    assert SECSIPIDX is not None
    return subprocess.run([SECSIPIDX, *args], capture_output=True, text=True, timeout=30)


def _iat(value: str) -> int:
    payload = value.split(";", 1)[0].split(".")[1]
    iat = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iat"]
    assert isinstance(iat, int)
    return iat


@pytest.mark.parametrize("attest", ["A", "B", "C"])
def test_secsipidx_signed_verifies_in_stirgate(pki: Pki, attest: str) -> None:
    proc = _secsipidx(
        "-sign-full", "-orig-tn", ORIG, "-dest-tn", DEST, "-attest", attest, "-x5u", X5U,
        "-k", str(pki.directory / "sp.key"), "-orig-id", ORIGID,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    value = proc.stdout.strip().splitlines()[-1]
    result = Verifier().verify([value], ORIG, [DEST], None, _iat(value), {X5U: pki.entry})
    assert (result.status, result.verstat, result.sip_code) == ("passed", VERSTAT_PASSED, None), result.failures
    assert (result.attest, result.origid) == (attest, ORIGID)
    # and a tampered copy fails in stirgate too
    tampered = Verifier().verify([value], ORIG, ["15550109999"], None, _iat(value), {X5U: pki.entry})
    assert (tampered.sip_code, tampered.failures[0].check) == (438, "dest-mismatch")


@pytest.mark.parametrize("attest", ["A", "B", "C"])
def test_stirgate_signed_verifies_in_secsipidx(pki: Pki, attest: str) -> None:
    value = pki.signer.sign(ORIG, [DEST], attest, ORIGID, time.time())
    proc = _secsipidx("-check", "-identity", value, "-p", str(pki.directory / "sp.pub"), "-expire", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_secsipidx_rejects_stirgate_header_with_wrong_key(pki: Pki) -> None:
    """Guards the positive test: secsipidx -check really fails on a signature it cannot verify."""
    other = make_pki(pki.directory / "other", now=time.time())
    value = other.signer.sign(ORIG, [DEST], "A", ORIGID, time.time())
    proc = _secsipidx("-check", "-identity", value, "-p", str(pki.directory / "sp.pub"), "-expire", "300")
    assert proc.returncode != 0
