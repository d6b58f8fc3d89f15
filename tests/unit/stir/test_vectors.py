"""libstirshaken public vectors (../shared/vectors/libstirshaken), clock frozen at their iat."""

from __future__ import annotations

import pytest

from proxy.stir.certs import TrustStore
from proxy.stir.errors import PassportError
from proxy.stir.identity import parse_identity
from proxy.stir.passport import decode_jws
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier

from .helpers import VECTORS

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"libstirshaken vectors not found at {VECTORS}")

IAT = 1616442523
URL = "https://shaken.signalwire.cloud/sp.pem"
ORIG, DEST = "01256500600", "01256700800"


def _headers() -> list[str]:
    lines = (VECTORS / "identity-headers.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _entry(lenient: bool):  # type: ignore[no-untyped-def]
    trust = TrustStore.from_paths([VECTORS / "ca.pem"], lenient_tnauthlist=lenient)
    return trust.validate_body(URL, (VECTORS / "sp.pem").read_bytes(), IAT)


def test_file_holds_two_headers() -> None:
    assert len(_headers()) == 2


@pytest.mark.parametrize("index", [0, 1])
def test_each_header_verifies_lenient(index: int) -> None:
    entry = _entry(lenient=True)
    assert entry.ok and "tnauthlist-bare-ia5-accepted" in entry.notes
    result = Verifier().verify([_headers()[index]], ORIG, [DEST], None, IAT, {URL: entry})
    assert (result.status, result.verstat, result.sip_code) == ("passed", VERSTAT_PASSED, None)
    assert result.attest == "B"
    assert result.origid == "e32f4189-cb86-460f-bb92-bd3acb89f29c"
    assert result.cert_subject == "CN=SignalWire STI-SP Test,C=US"
    assert result.spc is None


def test_both_headers_together() -> None:
    result = Verifier().verify(_headers(), ORIG, [DEST], None, IAT, {URL: _entry(lenient=True)})
    assert result.passed and [h.passed for h in result.headers] == [True, True]


def test_stale_without_frozen_clock() -> None:
    result = Verifier().verify(_headers()[:1], ORIG, [DEST], None, IAT + 61, {URL: _entry(lenient=True)})
    assert (result.sip_code, result.verstat, result.failures[0].check) == (403, VERSTAT_FAILED, "iat-stale")


def test_bare_ia5_tnauthlist_is_437_in_strict_mode() -> None:
    entry = _entry(lenient=False)
    assert not entry.ok
    result = Verifier().verify(_headers()[:1], ORIG, [DEST], None, IAT, {URL: entry})
    assert (result.sip_code, result.verstat) == (437, VERSTAT_FAILED)
    assert result.failures[0].check == "tnauthlist-bare"


def test_wrong_sp_is_untrusted() -> None:
    trust = TrustStore.from_paths([VECTORS / "ca.pem"], lenient_tnauthlist=True)
    entry = trust.validate_body(URL, (VECTORS / "wrongsp.pem").read_bytes(), IAT)
    result = Verifier().verify(_headers()[:1], ORIG, [DEST], None, IAT, {URL: entry})
    assert (result.sip_code, result.failures[0].check) == (437, "cert-untrusted")


def _passport_txt_identity() -> str:
    lines = (VECTORS / "passport.txt").read_text().splitlines()
    at = lines.index("SIP Identity Header with PASSporT is:")
    return lines[at + 1].strip()


def test_passport_txt_json_string_claims_rejected() -> None:
    value = _passport_txt_identity()
    with pytest.raises(PassportError) as err:
        decode_jws(parse_identity(value).token)
    assert err.value.check == "payload-type"
    assert "$.dest" in err.value.detail
    result = Verifier().verify([value], "01256789999", ["01256500600"], None, 1603458131, {URL: _entry(True)})
    assert (result.sip_code, result.verstat, result.failures[0].check) == (438, VERSTAT_FAILED, "payload-type")
