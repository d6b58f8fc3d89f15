from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from proxy.stir.errors import PassportError
from proxy.stir.passport import (
    JwsHeader,
    Rcd,
    b64url_decode,
    canonical_json,
    decode_jws,
    div_claims,
    encode_jws,
    rcd_claims,
    shaken_claims,
    verify_signature,
)

from .helpers import b64

KEY = ec.generate_private_key(ec.SECP256R1())
HEAD = JwsHeader(alg="ES256", ppt="shaken", typ="passport", x5u="https://cert.example.com/sp.pem")


def test_canonical_header_and_claims() -> None:
    assert canonical_json(HEAD) == (
        b'{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"https://cert.example.com/sp.pem"}'
    )
    claims = shaken_claims("15550100000", ("15550100001",), "A", "u-1", 1700000000)
    assert canonical_json(claims) == (
        b'{"attest":"A","dest":{"tn":["15550100001"]},"iat":1700000000,"orig":{"tn":"15550100000"},"origid":"u-1"}'
    )


def test_div_and_rcd_claims_are_sorted_at_every_level() -> None:
    div = div_claims("1", ("2",), "3", 5)
    assert canonical_json(div) == b'{"dest":{"tn":["2"]},"div":{"tn":"3"},"iat":5,"orig":{"tn":"1"}}'
    rcd = rcd_claims("1", ("2",), 5, Rcd(nam="Bob", jcl="https://x/j.json", icn="https://x/i.png"), crn="Hi",
                     rcdi={"/nam": "sha256-x", "/icn": "sha256-y"})  # fmt: skip
    assert canonical_json(rcd) == (
        b'{"crn":"Hi","dest":{"tn":["2"]},"iat":5,"orig":{"tn":"1"},'
        b'"rcd":{"icn":"https://x/i.png","jcl":"https://x/j.json","nam":"Bob"},'
        b'"rcdi":{"/icn":"sha256-y","/nam":"sha256-x"}}'
    )


def test_full_form_roundtrip_raw_signature() -> None:
    claims = shaken_claims("15550100000", ("15550100001",), "B", "u", 1700000000)
    token = encode_jws(HEAD, claims, KEY)
    assert token.count(".") == 2 and "=" not in token
    decoded = decode_jws(token)
    assert decoded.header == HEAD and decoded.claims == claims and not decoded.compact
    assert len(decoded.signature) == 64  # raw R||S, not DER
    assert verify_signature(decoded, KEY.public_key())
    assert not verify_signature(decoded, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_compact_form_needs_rebuilt_claims() -> None:
    claims = shaken_claims("1", ("2",), "C", "u", 5)
    head, _payload, sig = encode_jws(HEAD, claims, KEY).split(".")
    with pytest.raises(PassportError) as err:
        decode_jws(f"{head}..{sig}")
    assert err.value.check == "jws-compact"
    decoded = decode_jws(f"{head}..{sig}", rebuilt_claims=claims)
    assert decoded.compact and verify_signature(decoded, KEY.public_key())
    other = shaken_claims("1", ("3",), "C", "u", 5)
    assert not verify_signature(decode_jws(f"{head}..{sig}", rebuilt_claims=other), KEY.public_key())


@pytest.mark.parametrize(
    ("payload", "check"),
    [
        (b'{"iat":"1700000000"}', "payload-type"),
        (b'{"orig":"{\\"tn\\":\\"1\\"}"}', "payload-type"),
        (b'{"dest":{"tn":"1"}}', "payload-type"),
        (b'{"attest":1}', "payload-type"),
        (b'{"iat":true}', "payload-type"),
        (b'{"rcd":{"icn":"x"}}', "payload-type"),
        (b"{", "payload-json"),
        (b"\xff\xfe", "payload-json"),
    ],
)
def test_strict_decoding(payload: bytes, check: str) -> None:
    token = f"{b64(canonical_json(HEAD))}.{b64(payload)}.{b64(b'sig')}"
    with pytest.raises(PassportError) as err:
        decode_jws(token)
    assert err.value.check == check
    assert err.value.sip_code == 438


@pytest.mark.parametrize("text", ["a+b", "a/b", "ab=", "a b", "a"])
def test_base64url_is_strict(text: str) -> None:
    with pytest.raises(PassportError):
        b64url_decode(text, "x")


@given(st.text(max_size=200))
def test_decode_never_crashes(text: str) -> None:
    try:
        decode_jws(text)
    except PassportError:
        pass


@given(
    st.dictionaries(
        st.sampled_from(["attest", "dest", "iat", "orig", "origid", "div", "rcd", "crn", "rcdi"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3)),
    )
)  # fmt: skip
def test_any_json_payload_is_decoded_or_a_typed_error(payload: dict[str, object]) -> None:
    token = f"{b64(canonical_json(HEAD))}.{b64(json.dumps(payload).encode())}.{b64(b'sig')}"
    try:
        decode_jws(token)
    except PassportError as exc:
        assert exc.sip_code == 438
