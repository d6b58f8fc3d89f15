"""STI-AS: decide attestation and origid from configuration and produce the Identity header value.

Pure: the caller passes `now`; the private key is loaded once per profile (loading PEM per call halves the
throughput), and the JWS header segment is precomputed per profile and ppt.
"""

from __future__ import annotations

import email.utils
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import SigningError, TNError
from .identity import format_identity
from .passport import (
    ALG,
    ATTESTATIONS,
    PPT_DIV,
    PPT_RCD,
    PPT_SHAKEN,
    TYP,
    Claims,
    JwsHeader,
    Rcd,
    div_claims,
    encode_jws,
    header_b64,
    rcd_claims,
    shaken_claims,
)
from .tn import DEFAULT_TN_POLICY, TNPolicy, canonical_tn

Attestation = Literal["A", "B", "C"]

# Namespace for origids derived from a trunk name when none is configured (stable across restarts).
ORIGID_NAMESPACE = uuid.UUID("8f0c6a59-9d55-4d7c-9c44-3f1d2a7b5e10")


@dataclass(frozen=True, slots=True)
class SigningProfile:
    """An SP identity: the private key (PEM path) and the x5u URL where its certificate is published."""

    name: str
    key_path: str
    x5u: str


@dataclass(frozen=True, slots=True)
class AttestationRules:
    """What a customer trunk may claim (ATIS-1000074 §5.2.3).

    A: the orig TN is in `numbers` or starts with one of `prefixes` (canonical TNs).
    B: a `known_customer` calling from a TN it does not own. C: anything else (gateway traffic).
    """

    numbers: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    known_customer: bool = True

    def owns(self, tn: str) -> bool:
        return tn in self.numbers or tn.startswith(self.prefixes)

    @classmethod
    def from_lists(
        cls,
        numbers: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        *,
        known_customer: bool = True,
        tn_policy: TNPolicy = DEFAULT_TN_POLICY,
    ) -> AttestationRules:
        """Canonicalise the configured numbers (national forms completed with the country code)."""
        return cls(
            frozenset(canonical_tn(n, tn_policy) for n in numbers),
            tuple(canonical_tn(p, TNPolicy(max_length=tn_policy.max_length)) for p in prefixes),
            known_customer,
        )

    @classmethod
    def from_files(
        cls,
        numbers_file: str | None = None,
        prefixes_file: str | None = None,
        *,
        known_customer: bool = True,
        tn_policy: TNPolicy = DEFAULT_TN_POLICY,
    ) -> AttestationRules:
        """Number/prefix lists, one per line; blank lines and `#` comments ignored."""
        return cls.from_lists(
            _read_list(numbers_file),
            _read_list(prefixes_file),
            known_customer=known_customer,
            tn_policy=tn_policy,
        )


def _read_list(path: str | None) -> list[str]:
    if not path:
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            out.append(item)
    return out


GATEWAY_RULES = AttestationRules(known_customer=False)


def decide_attestation(rules: AttestationRules | None, orig_tn: str) -> Attestation:
    """A for an owned TN, B for a known customer's other TNs, C for gateway/unknown traffic."""
    if rules is None:
        return "C"
    if rules.owns(orig_tn):
        return "A"
    return "B" if rules.known_customer else "C"


@functools.lru_cache(maxsize=1024)
def trunk_origid(trunk: str, configured: str | None = None) -> str:
    """The configured origid (validated as a UUID) or one derived from the trunk name."""
    if configured:
        try:
            return str(uuid.UUID(configured))
        except ValueError:
            raise SigningError(f"origid {configured!r} of trunk {trunk!r} is not a UUID") from None
    return str(uuid.uuid5(ORIGID_NAMESPACE, trunk))


@dataclass(frozen=True, slots=True)
class RcdRule:
    """Rich Call Data (RFC 9795) a customer signs for its numbers: `numbers`/`prefixes` (canonical) select the
    calling TNs (both empty: every TN of the trunk); `rcdi` holds the integrity digests of referenced content."""

    rcd: Rcd
    numbers: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    crn: str | None = None
    rcdi: dict[str, str] | None = None

    def matches(self, tn: str) -> bool:
        if not self.numbers and not self.prefixes:
            return True
        return tn in self.numbers or tn.startswith(self.prefixes)


DivMode = Literal["off", "owned", "always"]


@dataclass(frozen=True, slots=True)
class TrunkSigning:
    """Signing settings of one customer trunk; `attestation=None` means gateway traffic (C).

    `rcd`: rules tried in order, the first matching the calling TN adds an rcd PASSporT (or, with
    `rcd_in_shaken`, rcd claims in the shaken one). `div` (RFC 8946): when a signed call is forwarded, add a div
    PASSporT: `owned` when the diverting number is one the customer owns, `always` for a trunk that forwards.
    """

    trunk: str
    profile: str
    attestation: AttestationRules | None = None
    origid: str | None = None
    add_date: bool = False
    existing_identity: Literal["keep", "replace"] = "keep"
    rcd: tuple[RcdRule, ...] = ()
    rcd_in_shaken: bool = False
    div: DivMode = "owned"

    def rcd_for(self, tn: str) -> RcdRule | None:
        for rule in self.rcd:
            if rule.matches(tn):
                return rule
        return None


@dataclass(frozen=True, slots=True)
class SignedCall:
    """What the B2BUA adds to the B-leg INVITE: `identity` (shaken), then `extra` (e.g. an rcd PASSporT);
    `div` is added after the caller's own Identity when that one is kept (a forwarded call, RFC 8946)."""

    identity: str
    date: str | None
    attest: Attestation
    origid: str
    iat: int
    extra: tuple[str, ...] = ()
    div: str | None = None

    def spent(self) -> SignedCall:
        """What an answered call keeps (no B-leg INVITE will carry the headers again): the attestation and origid
        its record and log line need (and iat, a number), not the header values (~600 bytes per held dialog)."""
        return SignedCall("", None, self.attest, self.origid, self.iat)


def load_signing_key(path: str | Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (ES256 needs exactly that curve)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"cannot load signing key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningError(f"signing key {path} is not an EC P-256 key")
    return key


def date_header(now: float) -> str:
    """RFC 3261 Date header value (RFC 1123, GMT) for `now`."""
    return email.utils.formatdate(now, usegmt=True)


class Signer:
    """Signs PASSporTs for one SigningProfile."""

    def __init__(
        self,
        profile: SigningProfile,
        key: ec.EllipticCurvePrivateKey | None = None,
        tn_policy: TNPolicy = DEFAULT_TN_POLICY,
    ) -> None:
        self.profile = profile
        self.tn_policy = tn_policy
        self._key = key if key is not None else load_signing_key(profile.key_path)
        self._heads = {
            ppt: header_b64(JwsHeader(alg=ALG, ppt=ppt, typ=TYP, x5u=profile.x5u))
            for ppt in (PPT_SHAKEN, PPT_DIV, PPT_RCD)
        }

    def _tns(self, orig: str, dests: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        try:
            orig_tn = canonical_tn(orig, self.tn_policy)
            dest_tns = tuple(dict.fromkeys(canonical_tn(d, self.tn_policy) for d in dests))
        except TNError as exc:
            raise SigningError(str(exc)) from None
        if not dest_tns:
            raise SigningError("no destination TN to sign")
        return orig_tn, dest_tns

    def sign_claims(self, claims: Claims, ppt: str = PPT_SHAKEN) -> str:
        """Identity header value for already-built claims."""
        token = encode_jws(self._heads[ppt], claims, self._key)
        return format_identity(token, self.profile.x5u, ALG, ppt)

    def sign(self, orig: str, dests: Sequence[str], attest: str, origid: str, now: float) -> str:
        """Identity header value of a ppt=shaken PASSporT with iat = int(now)."""
        if attest not in ATTESTATIONS:
            raise SigningError(f"attest {attest!r} is not A, B or C")
        orig_tn, dest_tns = self._tns(orig, dests)
        return self.sign_claims(shaken_claims(orig_tn, dest_tns, attest, origid, int(now)))

    def sign_div(self, orig: str, dests: Sequence[str], div: str, now: float) -> str:
        """ppt=div (RFC 8946): `dests` is the new target, `div` the diverting TN."""
        orig_tn, dest_tns = self._tns(orig, dests)
        try:
            div_tn = canonical_tn(div, self.tn_policy)
        except TNError as exc:
            raise SigningError(str(exc)) from None
        return self.sign_claims(div_claims(orig_tn, dest_tns, div_tn, int(now)), PPT_DIV)

    def sign_rcd(
        self,
        orig: str,
        dests: Sequence[str],
        rcd: Rcd,
        now: float,
        *,
        crn: str | None = None,
        rcdi: dict[str, str] | None = None,
    ) -> str:
        """ppt=rcd (RFC 9795) with the caller's display name (and icon, jCard, call reason)."""
        orig_tn, dest_tns = self._tns(orig, dests)
        return self.sign_claims(rcd_claims(orig_tn, dest_tns, int(now), rcd, crn=crn, rcdi=rcdi), PPT_RCD)

    def sign_call(
        self, trunk: TrunkSigning, orig: str, dests: Sequence[str], now: float, diverted_from: str | None = None
    ) -> SignedCall:
        """Attestation and origid from the trunk's config, then the shaken Identity (and Date if asked), the
        trunk's RCD for this caller, and a div PASSporT when `diverted_from` (the diverting TN) is given."""
        orig_tn, dest_tns = self._tns(orig, dests)
        attest = decide_attestation(trunk.attestation, orig_tn)
        origid = trunk_origid(trunk.trunk, trunk.origid)
        iat = int(now)
        rule = trunk.rcd_for(orig_tn) if trunk.rcd else None
        extra: tuple[str, ...] = ()
        if rule is None:
            identity = self.sign_claims(shaken_claims(orig_tn, dest_tns, attest, origid, iat))
        elif trunk.rcd_in_shaken:
            claims = rcd_claims(orig_tn, dest_tns, iat, rule.rcd, crn=rule.crn, rcdi=rule.rcdi, attest=attest,
                                origid=origid)  # fmt: skip
            identity = self.sign_claims(claims)
        else:
            identity = self.sign_claims(shaken_claims(orig_tn, dest_tns, attest, origid, iat))
            extra = (self.sign_claims(rcd_claims(orig_tn, dest_tns, iat, rule.rcd, crn=rule.crn, rcdi=rule.rcdi),
                                      PPT_RCD),)  # fmt: skip
        div = None
        if diverted_from is not None:
            div = self.sign_div(orig_tn, dest_tns, diverted_from, now)
        return SignedCall(identity, date_header(now) if trunk.add_date else None, attest, origid, iat, extra, div)


class Signers:
    """Signers by profile name, built once at start-up (keys loaded once)."""

    def __init__(self, profiles: Iterable[SigningProfile], tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> None:
        self._by_name = {p.name: Signer(p, tn_policy=tn_policy) for p in profiles}

    def __getitem__(self, name: str) -> Signer:
        try:
            return self._by_name[name]
        except KeyError:
            raise SigningError(f"no signing profile {name!r}") from None

    def sign_call(
        self, trunk: TrunkSigning, orig: str, dests: Sequence[str], now: float, diverted_from: str | None = None
    ) -> SignedCall:
        return self[trunk.profile].sign_call(trunk, orig, dests, now, diverted_from)
