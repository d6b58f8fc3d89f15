from __future__ import annotations

import email.utils
import uuid
from pathlib import Path

import pytest

from proxy.stir.errors import SigningError
from proxy.stir.identity import parse_identity
from proxy.stir.passport import decode_jws, verify_signature
from proxy.stir.signer import (
    AttestationRules,
    Signer,
    Signers,
    SigningProfile,
    TrunkSigning,
    decide_attestation,
    load_signing_key,
    trunk_origid,
)
from proxy.stir.tn import TNPolicy

from .helpers import NOW, X5U, Pki

NANP = TNPolicy(country_code="1")
RULES = AttestationRules.from_lists(["+1 555 010 0000"], ["1555020"], tn_policy=NANP)


@pytest.mark.parametrize(
    ("rules", "tn", "attest"),
    [
        (RULES, "15550100000", "A"),
        (RULES, "15550200042", "A"),
        (RULES, "15550300000", "B"),
        (AttestationRules(known_customer=False), "15550300000", "C"),
        (None, "15550100000", "C"),
    ],
)
def test_attestation(rules: AttestationRules | None, tn: str, attest: str) -> None:
    assert decide_attestation(rules, tn) == attest


def test_rules_from_files(tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("# owned\n5550100000\n\n+15550100001  # main line\n")
    prefixes = tmp_path / "prefixes.txt"
    prefixes.write_text("1555099\n")
    rules = AttestationRules.from_files(str(numbers), str(prefixes), tn_policy=NANP)
    assert rules.numbers == frozenset({"15550100000", "15550100001"})
    assert rules.owns("15550990000") and not rules.owns("15550980000")


def test_origid() -> None:
    assert trunk_origid("customer") == trunk_origid("customer")
    assert trunk_origid("customer") != trunk_origid("other")
    uuid.UUID(trunk_origid("customer"))
    assert trunk_origid("c", "3A1B3D94-0DCA-4A4F-8F64-8A0F0C0F1F7B") == "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"
    with pytest.raises(SigningError):
        trunk_origid("c", "not-a-uuid")


def test_sign_call(pki: Pki) -> None:
    trunk = TrunkSigning("customer", "test", RULES, add_date=True)
    signers = Signers([SigningProfile("test", str(pki.directory / "sp.key"), X5U)], tn_policy=NANP)
    signed = signers.sign_call(trunk, "sip:5550100000@pbx;user=phone", ["tel:+1-555-010-0001", "15550100001"], NOW)
    assert (signed.attest, signed.iat, signed.origid) == ("A", NOW, trunk_origid("customer"))
    assert signed.date == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert email.utils.parsedate_to_datetime(signed.date).timestamp() == NOW
    ih = parse_identity(signed.identity)
    assert (ih.info, ih.alg, ih.ppt) == (X5U, "ES256", "shaken")
    jws = decode_jws(ih.token)
    assert jws.claims.orig is not None and jws.claims.orig.tn == "15550100000"
    assert jws.claims.dest is not None and jws.claims.dest.tn == ("15550100001",)
    assert verify_signature(jws, pki.demo.sp.key.public_key())
    assert signers.sign_call(TrunkSigning("gw", "test"), "15559990000", ["15550100001"], NOW).attest == "C"


def test_sign_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SigningError):
        pki.signer.sign("not a number", ["15550100001"], "A", "u", NOW)
    with pytest.raises(SigningError):
        pki.signer.sign("15550100000", [], "A", "u", NOW)
    with pytest.raises(SigningError):
        pki.signer.sign("15550100000", ["15550100001"], "D", "u", NOW)
    with pytest.raises(SigningError):
        Signers([])["missing"]
    bad = tmp_path / "bad.key"
    bad.write_text("nope")
    with pytest.raises(SigningError):
        load_signing_key(bad)
    with pytest.raises(SigningError):
        Signer(SigningProfile("p", str(tmp_path / "absent.key"), X5U))
