"""Telephone-number canonicalisation (REFERENCE.md "Telephone numbers").

PASSporT `orig`/`dest` TNs and the SIP headers they are compared with come in many spellings
(`+1 (555) 010-0000`, `tel:+15550100000;phone-context=...`, `sip:+15550100000;tgrp=x@gw;user=phone`).
Both sides go through `canonical_tn` so that comparison is plain string equality.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import TNError

_SEPARATORS = frozenset(" -.()\t")
_ALLOWED = frozenset("0123456789*#")
_ANONYMOUS = frozenset({"anonymous", "restricted", "unavailable", "unknown"})


@dataclass(frozen=True, slots=True)
class TNPolicy:
    """How national numbers are completed and how long a TN may be.

    `country_code` (e.g. "1") is prefixed to a number written without `+` whose length equals
    `national_length` (10 for NANP); empty disables the completion.
    `orig_order` is the order of the headers whose user part is compared with `orig.tn`.
    """

    country_code: str = ""
    national_length: int = 10
    max_length: int = 15
    orig_order: tuple[str, ...] = ("pai", "from")


DEFAULT_TN_POLICY = TNPolicy()


def user_part(value: str) -> tuple[str, bool]:
    """The user part of a tel:/sip: URI, name-addr or bare number, and whether it was a URI at all."""
    text = value.strip()
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt + 1)
        text = text[lt + 1 : gt if gt > 0 else len(text)]
    lower = text[:5].lower()
    if lower.startswith("tel:"):
        return text[4:], True
    if lower.startswith("sips:") or lower.startswith("sip:"):
        rest = text[5:] if lower.startswith("sips:") else text[4:]
        at = rest.rfind("@")
        if at < 0:
            return "", True
        return rest[:at], True
    return text, False


def canonical_tn(value: str, policy: TNPolicy = DEFAULT_TN_POLICY) -> str:
    """Digits (and `*`, `#`) of a TN; no `+`, separators, URI decoration or user parameters.

    Raises TNError when nothing number-like remains, so a caller cannot compare garbage by accident.
    """
    # Fast paths: already canonical (what PASSporT claims carry), or `+` and digits (what a URI user part
    # usually holds): the per-call common cases.
    if value.isdigit() and value.isascii():  # str.isdigit alone also takes "²" and Arabic-Indic digits
        if len(value) <= policy.max_length and (not policy.country_code or len(value) != policy.national_length):
            return value
    elif value[:1] == "+" and value[1:].isdigit() and value.isascii() and len(value) <= policy.max_length + 1:
        return value[1:]
    user, _ = user_part(value)
    # User parameters (RFC 4904 ;tgrp= ;trunk-context=, tel ;phone-context= ;ext=) and URI headers.
    for stop in (";", "?"):
        cut = user.find(stop)
        if cut >= 0:
            user = user[:cut]
    if "%" in user:
        user = unquote(user)
    user = user.strip()
    plus = user.startswith("+")
    if plus:
        user = user[1:]
    out = []
    for ch in user:
        if ch in _ALLOWED:
            out.append(ch)
        elif ch not in _SEPARATORS:
            raise TNError("tn-invalid", f"not a telephone number: {value!r}")
    tn = "".join(out)
    if not tn:
        raise TNError("tn-invalid", f"empty telephone number: {value!r}")
    if not plus and policy.country_code and len(tn) == policy.national_length and tn.isdigit():
        tn = policy.country_code + tn
    if len(tn) > policy.max_length:
        raise TNError("tn-too-long", f"telephone number longer than {policy.max_length}: {value!r}")
    return tn


def try_canonical_tn(value: str | None, policy: TNPolicy = DEFAULT_TN_POLICY) -> str | None:
    """canonical_tn, or None when the value is absent or not a number (e.g. a SIP URI with a name)."""
    if not value:
        return None
    try:
        return canonical_tn(value, policy)
    except TNError:
        return None


def is_anonymous(value: str) -> bool:
    """True for the anonymous/withheld caller forms (`sip:anonymous@anonymous.invalid` and friends)."""
    user, _ = user_part(value)
    return user.split(";", 1)[0].strip().lower() in _ANONYMOUS


def first_tn(candidates: Iterable[str | None], policy: TNPolicy = DEFAULT_TN_POLICY) -> str | None:
    """The first candidate that canonicalises: used for "PAI, then From" and "R-URI, then To"."""
    for candidate in candidates:
        tn = try_canonical_tn(candidate, policy)
        if tn is not None:
            return tn
    return None


def orig_tn(pai: str | None, from_: str | None, policy: TNPolicy = DEFAULT_TN_POLICY) -> str | None:
    """The caller's TN from P-Asserted-Identity and From, in the policy's configured order."""
    for name in policy.orig_order:
        tn = try_canonical_tn(pai if name == "pai" else from_ if name == "from" else None, policy)
        if tn is not None:
            return tn
    return None
