"""ATIS-1000082 bodies: the sample requests decode; every malformed one is refused naming its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.stir.atis import (
    RequestError,
    ResponseDecision,
    SigningResponse,
    VerificationResponse,
    decode_signing,
    decode_verification,
    encode_signing,
    encode_verification,
)

ORIGID = "de305d54-75b4-431b-adb2-eb6b9e546014"


def signing(**over: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"attest": "A", "dest": {"tn": ["12155551213"]}, "iat": 1443208345,
                           "orig": {"tn": "12155551212"}, "origid": ORIGID}
    req.update(over)
    return {"signingRequest": {k: v for k, v in req.items() if v is not None}}


def verification(**over: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"from": {"tn": "12155551212"}, "to": {"tn": ["12155551213"]}, "time": 1443208345,
                           "identity": "eyJ.eyJ.sig;info=<https://cert.example.org/passport.cer>;alg=ES256;ppt=shaken"}
    req.update(over)
    return {"verificationRequest": {k: v for k, v in req.items() if v is not None}}


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_sample_requests_decode() -> None:
    s = decode_signing(body(signing()))
    assert (s.attest, s.dest.tn, s.iat, s.orig.tn, s.origid) == ("A", ["12155551213"], 1443208345, "12155551212",
                                                                  ORIGID)
    v = decode_verification(body(verification(to={"tn": ["+1 215 555 1213", "12155551214"]})))
    assert (v.from_.tn, v.to.tn, v.time) == ("12155551212", ["+1 215 555 1213", "12155551214"], 1443208345)


@pytest.mark.parametrize(("raw", "field", "text"), [
    (b"{", "", "malformed JSON"),
    (b"\xff\xfe", "", "malformed JSON"),
    (b"[]", "", "Expected object, got array"),
    (body({}), "signingRequest", "signingRequest: missing"),
    (body({"signingRequest": {}, "extra": 1}), "signingRequest.attest", "missing"),
    (body(signing(attest=None)), "signingRequest.attest", "signingRequest.attest: missing"),
    (body(signing(attest="D")), "signingRequest.attest", "Invalid enum value 'D' (A, B or C)"),
    (body(signing(attest="a")), "signingRequest.attest", "Invalid enum value 'a'"),
    (body(signing(attest=1)), "signingRequest.attest", "Expected str, got int"),
    (body(signing(iat="1443208345")), "signingRequest.iat", "Expected int, got str"),
    (body(signing(iat=1443208345.5)), "signingRequest.iat", "Expected int, got float"),
    (body(signing(iat=True)), "signingRequest.iat", "Expected int, got bool"),
    (body(signing(iat=0)), "signingRequest.iat", "positive integer"),
    (body(signing(orig="12155551212")), "signingRequest.orig", "Expected object, got str"),
    (body(signing(orig={"tn": 12155551212})), "signingRequest.orig.tn", "Expected str, got int"),
    (body(signing(orig={"tn": "alice"})), "signingRequest.orig.tn", "not a telephone number"),
    (body(signing(orig={"uri": "sip:a@b"})), "signingRequest.orig.uri", "unknown field"),
    (body(signing(dest={"tn": "12155551213"})), "signingRequest.dest.tn", "Expected array, got str"),
    (body(signing(dest={"tn": []})), "signingRequest.dest.tn", "at least one"),
    (body(signing(dest={"tn": [""]})), "signingRequest.dest.tn[0]", "not a telephone number"),
    (body(signing(origid="not-a-uuid")), "signingRequest.origid", "not a UUID"),
    (body({"signingRequest": {**signing()["signingRequest"], "ppt": "shaken"}}), "signingRequest.ppt",
     "unknown field"),
])
def test_bad_signing_requests(raw: bytes, field: str, text: str) -> None:
    with pytest.raises(RequestError) as ei:
        decode_signing(raw)
    assert ei.value.status == 400
    assert ei.value.field == field
    assert text in ei.value.text, ei.value.text


@pytest.mark.parametrize(("raw", "field", "text"), [
    (body(verification(identity=None)), "verificationRequest.identity", "missing"),
    (body(verification(identity="  ")), "verificationRequest.identity", "empty"),
    (body(verification(identity=["a"])), "verificationRequest.identity", "Expected str, got array"),
    (body(verification(time="now")), "verificationRequest.time", "Expected int, got str"),
    (body(verification(time=-5)), "verificationRequest.time", "positive integer"),
    (body(verification(**{"from": {"tn": ["1215"]}})), "verificationRequest.from.tn", "Expected str, got array"),
    (body(verification(to={"tn": []})), "verificationRequest.to.tn", "at least one"),
    (body({"verificationRequest": None}), "verificationRequest", "Expected object, got null"),
    (body(signing()), "signingRequest", "unknown field"),
])
def test_bad_verification_requests(raw: bytes, field: str, text: str) -> None:
    with pytest.raises(RequestError) as ei:
        decode_verification(raw)
    assert (ei.value.status, ei.value.field) == (400, field)
    assert text in ei.value.text, ei.value.text


def test_responses_encode_as_atis_shapes() -> None:
    assert json.loads(encode_signing(SigningResponse(identity="x;info=<u>"))) == {
        "signingResponse": {"identity": "x;info=<u>"}}
    assert json.loads(encode_signing(SigningResponse(reasonCode=400, reasonText="t", field="f"))) == {
        "signingResponse": {"reasonCode": 400, "reasonText": "t", "field": "f"}}
    got = json.loads(encode_verification(VerificationResponse(
        verstat="TN-Validation-Failed", reasonCode=438, reasonText="Invalid Identity Header",
        decision=ResponseDecision(action="reject", code=438, reason="Invalid Identity Header"))))
    assert got == {"verificationResponse": {
        "verstat": "TN-Validation-Failed", "reasonCode": 438, "reasonText": "Invalid Identity Header",
        "decision": {"action": "reject", "code": 438, "reason": "Invalid Identity Header"}}}
