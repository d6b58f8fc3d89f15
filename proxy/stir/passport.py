"""PASSporT (RFC 8225) for ppt shaken (RFC 8588), div (RFC 8946) and rcd (RFC 9795).

Canonical form (REFERENCE.md): header keys alg, ppt, typ, x5u; claims keys sorted at every level; no
whitespace; base64url without padding; ES256 signature as raw R||S (64 bytes). The ECDSA itself is
`cryptography`'s: this module only frames it. Decoding is strict and typed through msgspec, so `"iat":"1"`
or `"orig":"{...}"` raise a PassportError (438) instead of reaching comparison code as the wrong type.
"""

from __future__ import annotations

import binascii
import functools
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .claims import Claims as Claims  # re-exported: the structs are part of this module's API
from .claims import Dest as Dest
from .claims import JwsHeader as JwsHeader
from .claims import Rcd as Rcd
from .claims import TnOrUri as TnOrUri
from .errors import Failure, Outcome, PassportError

ALG = "ES256"
TYP = "passport"
PPT_SHAKEN = "shaken"
PPT_DIV = "div"
PPT_RCD = "rcd"
KNOWN_PPTS = frozenset({PPT_SHAKEN, PPT_DIV, PPT_RCD})
ATTESTATIONS = frozenset({"A", "B", "C"})

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ECDSA = ec.ECDSA(hashes.SHA256())


_header_decoder = msgspec.json.Decoder(JwsHeader)
_claims_decoder = msgspec.json.Decoder(Claims)
_encoder = msgspec.json.Encoder(order="sorted")


# binascii directly: base64.urlsafe_b64* are the same C calls behind two Python frames, per call and segment.
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_STD_TO_URL).decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Strict base64url: the stdlib silently skips foreign characters, which would hide tampering."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise PassportError(f"{what}-base64", f"{what} is not base64url")
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_URL_TO_STD) + _PADDING[len(text) % 4])
    except (binascii.Error, ValueError) as exc:
        raise PassportError(f"{what}-base64", f"{what} is not base64url: {exc}") from None


def shaken_claims(orig_tn: str, dest_tns: tuple[str, ...], attest: str, origid: str, iat: int) -> Claims:
    """ppt=shaken claims (RFC 8588)."""
    return Claims(attest=attest, dest=Dest(tn=dest_tns), iat=iat, orig=TnOrUri(tn=orig_tn), origid=origid)


def div_claims(orig_tn: str, dest_tns: tuple[str, ...], div_tn: str, iat: int) -> Claims:
    """ppt=div claims (RFC 8946): the diverted-to dest and the diverting TN in `div`."""
    return Claims(dest=Dest(tn=dest_tns), div=TnOrUri(tn=div_tn), iat=iat, orig=TnOrUri(tn=orig_tn))


def rcd_claims(
    orig_tn: str,
    dest_tns: tuple[str, ...],
    iat: int,
    rcd: Rcd,
    *,
    crn: str | None = None,
    rcdi: dict[str, str] | None = None,
    attest: str | None = None,
    origid: str | None = None,
) -> Claims:
    """ppt=rcd claims (RFC 9795); attest/origid when combined with SHAKEN."""
    return Claims(
        attest=attest,
        crn=crn,
        dest=Dest(tn=dest_tns),
        iat=iat,
        orig=TnOrUri(tn=orig_tn),
        origid=origid,
        rcd=rcd,
        rcdi=rcdi,
    )


def canonical_json(value: JwsHeader | Claims) -> bytes:
    """Compact JSON, keys sorted at every level (header fields are declared in the same order)."""
    return _encoder.encode(value)


def _raw_signature(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def header_b64(header: JwsHeader) -> str:
    """The base64url header segment; constant per signing profile, so signers compute it once."""
    return b64url_encode(canonical_json(header))


def encode_jws(header: JwsHeader | str, claims: Claims, key: ec.EllipticCurvePrivateKey) -> str:
    """Full-form JWS `header.payload.signature` signed with ES256 (raw R||S).

    `header` may be the precomputed base64url segment from header_b64.
    """
    head = header if isinstance(header, str) else header_b64(header)
    signing_input = (head + "." + b64url_encode(canonical_json(claims))).encode("ascii")
    signature = _raw_signature(key.sign(signing_input, _ECDSA))
    return signing_input.decode("ascii") + "." + b64url_encode(signature)


@dataclass(frozen=True, slots=True)
class DecodedJws:
    """A parsed (not yet verified) PASSporT."""

    header: JwsHeader
    claims: Claims
    signing_input: bytes
    signature: bytes
    compact: bool


def _decode_json(decoder: msgspec.json.Decoder[Any], raw: bytes, what: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise PassportError(f"{what}-type", f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PassportError(f"{what}-json", f"{what} is not JSON: {exc}") from None


def decode_jws(token: str, rebuilt_claims: Claims | None = None) -> DecodedJws:
    """Split, base64url-decode and type-check a JWS.

    The compact form (`header..signature`, RFC 8224 §5.2) is accepted only when the caller passes the claims
    rebuilt from the SIP request: they are then encoded canonically and signed-over as the payload.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise PassportError("jws-parts", f"JWS has {len(parts)} parts, expected 3")
    head_b64, payload_b64, sig_b64 = parts
    if not head_b64 or not sig_b64:
        raise PassportError("jws-parts", "JWS header or signature is empty")
    header = decode_header(head_b64)
    signature = b64url_decode(sig_b64, "signature")
    if payload_b64:
        claims = _decode_json(_claims_decoder, b64url_decode(payload_b64, "payload"), "payload")
        compact = False
    elif rebuilt_claims is not None:
        claims = rebuilt_claims
        payload_b64 = b64url_encode(canonical_json(claims))
        compact = True
    else:
        raise PassportError("jws-compact", "compact form (empty payload) without claims rebuilt from SIP")
    return DecodedJws(header, claims, (head_b64 + "." + payload_b64).encode("ascii"), signature, compact)


@functools.lru_cache(maxsize=64)  # one call's PASSporT is read more than once (content to fetch? then verify)
def decode_token(token: str) -> DecodedJws:
    """decode_jws of a full-form token, memoised for the few reads of one call."""
    return decode_jws(token)


@functools.lru_cache(maxsize=1024)
def decode_header(head_b64: str) -> JwsHeader:
    """The JOSE header segment, decoded and type-checked. Memoised: a signer's header (alg, ppt, typ, x5u) is
    the same on every PASSporT it signs, so across calls there are about as many as there are signers."""
    return _decode_json(_header_decoder, b64url_decode(head_b64, "header"), "header")  # type: ignore[no-any-return]


def peek_x5u(token: str) -> str | None:
    """The x5u of a JWS header without decoding the rest (to start the certificate fetch early)."""
    try:
        x5u = decode_header(token.split(".", 1)[0]).x5u
    except PassportError:
        return None
    return x5u or None


def verify_signature(decoded: DecodedJws, key: ec.EllipticCurvePublicKey) -> bool:
    """ES256 check of the raw R||S signature over the signing input."""
    sig = decoded.signature
    if len(sig) != 64 or not isinstance(key.curve, ec.SECP256R1):
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, decoded.signing_input, _ECDSA)
    except InvalidSignature:
        return False
    return True


def _bad(check: str, detail: str) -> Failure:
    return Failure(check, detail, Outcome.INVALID)


def header_failures(header: JwsHeader) -> list[Failure]:
    """JOSE header rules: ES256, typ passport, a known ppt (x5u is the verifier's 436 check)."""
    out = []
    if header.alg != ALG:
        out.append(_bad("jws-alg", f"alg {header.alg!r} is not ES256"))
    if header.typ != TYP:
        out.append(_bad("jws-typ", f"typ {header.typ!r} is not 'passport'"))
    if header.ppt not in KNOWN_PPTS:
        out.append(_bad("jws-ppt", f"ppt {header.ppt!r} is not one of shaken, div, rcd"))
    return out


def claim_failures(header: JwsHeader, claims: Claims) -> list[Failure]:
    """What each ppt requires of its claims (every problem, not just the first)."""
    out = []
    if claims.iat is None:
        out.append(_bad("iat-missing", "iat claim missing"))
    if claims.orig is None or (not claims.orig.tn and not claims.orig.uri):
        out.append(_bad("orig-missing", "orig claim missing or empty"))
    if claims.dest is None or (not claims.dest.tn and not claims.dest.uri):
        out.append(_bad("dest-missing", "dest claim missing or empty"))
    ppt = header.ppt
    if ppt == PPT_SHAKEN or claims.attest is not None:
        if claims.attest is None:
            out.append(_bad("attest-missing", "attest claim missing"))
        elif claims.attest not in ATTESTATIONS:
            out.append(_bad("attest-invalid", f"attest {claims.attest!r} is not A, B or C"))
    if ppt == PPT_SHAKEN and not claims.origid:
        out.append(_bad("origid-missing", "origid claim missing or empty"))
    if ppt == PPT_DIV and (claims.div is None or (not claims.div.tn and not claims.div.uri)):
        out.append(_bad("div-missing", "div claim missing or empty"))
    if ppt == PPT_RCD and claims.rcd is None:
        out.append(_bad("rcd-missing", "rcd claim missing"))
    return out
