"""The ATIS-1000082 JSON bodies (STI-AS/VS over HTTP for SBCs that call out), typed with msgspec.

Decoding is strict and typed, so a bad request gets one precise reason naming its field: malformed JSON,
a missing or unknown field, a wrong type (`iat` is an integer, never a string; `orig`/`dest` are objects),
an attestation other than A, B or C, an origid that is not a UUID. Nothing here signs or verifies; the
service (`proxy.sti_api`) does, with the same signer, verifier and policies as a SIP call.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

import msgspec

__all__ = [
    "RequestError",
    "ResponseDecision",
    "SigningRequest",
    "SigningResponse",
    "VerificationRequest",
    "VerificationResponse",
    "decode_signing",
    "decode_verification",
    "encode_signing",
    "encode_verification",
]


class RequestError(Exception):
    """A request the API refuses: HTTP `status`, the offending `field` (dotted path, "" for the whole body)."""

    def __init__(self, status: int, text: str, field: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.field = field


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class OneTn(_In, frozen=True):
    tn: str


class TnList(_In, frozen=True):
    tn: list[str]


class SigningRequest(_In, frozen=True):
    """`signingRequest`: who calls whom, the attestation the SBC claims, when, and its origination id."""

    attest: Literal["A", "B", "C"]
    dest: TnList
    iat: int
    orig: OneTn
    origid: str


class _SigningEnvelope(_In, frozen=True):
    signingRequest: SigningRequest


class VerificationRequest(_In, frozen=True, rename={"from_": "from"}):
    """`verificationRequest`: the call's numbers, its time (epoch seconds, as a Date header) and its Identity."""

    from_: OneTn
    to: TnList
    time: int
    identity: str


class _VerificationEnvelope(_In, frozen=True):
    verificationRequest: VerificationRequest


class _Out(msgspec.Struct, omit_defaults=True, frozen=True):
    pass


class SigningResponse(_Out, frozen=True):
    identity: str | None = None
    reasonCode: int | None = None
    reasonText: str | None = None
    field: str | None = None


class _SigningResponseEnvelope(_Out, frozen=True):
    signingResponse: SigningResponse


class ResponseDecision(_Out, frozen=True):
    """What the trunk's verification settings and policy chain decided: the SIP answer a call would get."""

    action: str
    code: int | None = None
    reason: str | None = None
    reasonHeader: str | None = None
    callInfo: str | None = None
    retryAfter: int | None = None
    displayPrefix: str | None = None
    trunks: list[str] | None = None
    headers: list[list[str]] | None = None
    policies: list[list[str]] | None = None


class VerificationResponse(_Out, frozen=True):
    verstat: str | None = None
    reasonCode: int | None = None
    reasonText: str | None = None
    field: str | None = None
    attest: str | None = None
    origid: str | None = None
    spc: str | None = None
    decision: ResponseDecision | None = None


class _VerificationResponseEnvelope(_Out, frozen=True):
    verificationResponse: VerificationResponse


_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")
_TN_CHARS = frozenset("0123456789+*#-.() ")


def _decode_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> RequestError:
    if not isinstance(exc, msgspec.ValidationError):  # (a ValidationError is a DecodeError too)
        return RequestError(400, f"malformed JSON: {exc}".replace("JSON is malformed: ", ""))
    message = str(exc)
    path = ""
    m = _PATH.search(message)
    if m:
        path, message = m.group(1), message[: m.start()]
    for pattern, what in ((_MISSING, "missing"), (_UNKNOWN, "unknown field")):
        f = pattern.match(message)
        if f:
            path = f"{path}.{f.group(1)}" if path else f.group(1)
            message = what
    if message.startswith("Invalid enum value") and path.endswith("attest"):
        message += " (A, B or C)"
    message = message.replace("`", "")
    return RequestError(400, f"{path}: {message}" if path else message, path)


def _tns(values: list[str], field: str) -> list[str]:
    if not values:
        raise RequestError(400, f"{field}: at least one telephone number", field)
    for i, tn in enumerate(values):
        _tn(tn, f"{field}[{i}]")
    return values


def _tn(value: str, field: str) -> str:
    if not value.strip() or not set(value) <= _TN_CHARS or not any(c.isdigit() for c in value):
        raise RequestError(400, f"{field}: {value[:40]!r} is not a telephone number", field)
    return value


def decode_signing(body: bytes) -> SigningRequest:
    """The signingRequest of a body, checked; a RequestError (400) says what is wrong and where."""
    try:
        req = msgspec.json.decode(body, type=_SigningEnvelope).signingRequest
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _decode_error(exc) from None
    _tn(req.orig.tn, "signingRequest.orig.tn")
    _tns(req.dest.tn, "signingRequest.dest.tn")
    if req.iat <= 0:
        raise RequestError(400, "signingRequest.iat: must be a positive integer (epoch seconds)", "signingRequest.iat")
    try:
        uuid.UUID(req.origid)
    except ValueError:
        raise RequestError(400, f"signingRequest.origid: {req.origid[:60]!r} is not a UUID",
                           "signingRequest.origid") from None
    return req


def decode_verification(body: bytes) -> VerificationRequest:
    """The verificationRequest of a body, checked; a RequestError (400) says what is wrong and where."""
    try:
        req = msgspec.json.decode(body, type=_VerificationEnvelope).verificationRequest
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _decode_error(exc) from None
    _tn(req.from_.tn, "verificationRequest.from.tn")
    _tns(req.to.tn, "verificationRequest.to.tn")
    if req.time <= 0:
        raise RequestError(400, "verificationRequest.time: must be a positive integer (epoch seconds)",
                           "verificationRequest.time")
    if not req.identity.strip():
        raise RequestError(400, "verificationRequest.identity: empty", "verificationRequest.identity")
    return req


def encode_signing(resp: SigningResponse) -> bytes:
    return msgspec.json.encode(_SigningResponseEnvelope(resp))


def encode_verification(resp: VerificationResponse) -> bytes:
    return msgspec.json.encode(_VerificationResponseEnvelope(resp))
