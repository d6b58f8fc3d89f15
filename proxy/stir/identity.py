"""The SIP Identity header (RFC 8224 §4): `<jws>;info=<url>;alg=ES256;ppt=shaken`.

Parsing never raises anything but IdentityHeaderError (438): the value arrives from the network.
The JWS itself is decoded later, by passport.decode_jws.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import IdentityHeaderError

# Canonical header names: full and compact (RFC 8224 §4: "y").
IDENTITY_HEADER_NAMES = frozenset({"identity", "y"})

_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")


def is_identity_header(name: str) -> bool:
    """Match `Identity` and its compact form `y` case-insensitively, so neither can smuggle a duplicate."""
    return name.strip().lower() in IDENTITY_HEADER_NAMES


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    """One parsed Identity header value; absent parameters are None."""

    token: str
    info: str | None
    alg: str | None
    ppt: str | None
    params: tuple[tuple[str, str], ...]

    @property
    def compact(self) -> bool:
        """JWS compact form (`header..signature`, payload rebuilt from SIP)."""
        return ".." in self.token


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _params(text: str) -> list[tuple[str, str]]:
    """`;name=value` pairs; values may be <bracketed> or "quoted" and then contain `;`."""
    fast = _plain_params(text)
    return fast if fast is not None else _scan_params(text)


def _plain_params(text: str) -> list[tuple[str, str]] | None:
    """The usual `info=<url>;alg=ES256;ppt=shaken` by splitting at `;`; None for anything unusual (quotes,
    a `;` inside <...>, text after a `>`, an empty name, whitespace other than space and tab, which `strip`
    would drop here but the scanner keeps), which the scanner then reads."""
    if '"' in text or not text.replace("\t", " ").isprintable():
        return None
    lt = text.find("<")
    if lt >= 0 and (text.find("<", lt + 1) >= 0 or ";" in text[lt : text.find(">", lt) + 1 or len(text)]):
        return None
    out: list[tuple[str, str]] = []
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            if sep or part.strip(" \t"):
                return None
            continue
        stripped = value.strip() if sep else ""
        # Text after a `>` (even a control character str.strip() would drop) is the scanner's to judge.
        if stripped.startswith("<") and (stripped.find(">") != len(stripped) - 1
                                         or value.rstrip(" \t") != value.rstrip()):
            return None
        value = stripped
        out.append((name, value))
    return out


def _scan_params(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        value = ""
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] in '<"':
                close = ">" if text[i] == "<" else '"'
                j = i + 1
                while j < n and text[j] != close:
                    j += 2 if close == '"' and text[j] == "\\" else 1
                if j >= n:
                    raise IdentityHeaderError(
                        "identity-params", f"unterminated {text[i]} in parameter {name!r}"
                    )
                value = text[i : j + 1]
                i = j + 1
            else:
                start = i
                while i < n and text[i] != ";":
                    i += 1
                value = text[start:i].strip()
        if not name:
            raise IdentityHeaderError("identity-params", "empty parameter name")
        out.append((name, value))
    return out


@functools.lru_cache(maxsize=64)  # one call's Identity is read several times (x5u to fetch? cached? verify)
def parse_identity(value: str) -> IdentityHeader:
    """Parse one Identity header value; malformed input is an IdentityHeaderError (438)."""
    text = value.strip()
    semi = text.find(";")
    if semi < 0:
        raise IdentityHeaderError("identity-no-params", "Identity header has no ';' parameters")
    token = text[:semi].strip()
    if not _TOKEN.fullmatch(token):
        raise IdentityHeaderError("identity-token", "Identity header does not start with a base64url JWS")
    params = _params(text[semi + 1 :])
    info = alg = ppt = None
    for name, raw in params:
        if name == "info":
            info = raw[1:-1].strip() if raw.startswith("<") and raw.endswith(">") else _unquote(raw).strip()
        elif name == "alg":
            alg = _unquote(raw)
        elif name == "ppt":
            ppt = _unquote(raw)
    if not info:
        raise IdentityHeaderError("identity-info-missing", "Identity header has no info parameter")
    return IdentityHeader(token, info, alg, ppt, tuple(params))


def format_identity(token: str, info: str, alg: str = "ES256", ppt: str = "shaken") -> str:
    """The value stirgate sends: unquoted ppt, info in angle brackets (ATIS-1000074 form)."""
    return f"{token};info=<{info}>;alg={alg};ppt={ppt}"


def split_identity_values(header_value: str) -> list[str]:
    """Split a comma-joined header line into values, ignoring commas inside <...> and quotes."""
    out: list[str] = []
    depth_angle = False
    quoted = False
    start = 0
    for i, ch in enumerate(header_value):
        if quoted:
            if ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth_angle = True
        elif ch == ">":
            depth_angle = False
        elif ch == "," and not depth_angle:
            out.append(header_value[start:i].strip())
            start = i + 1
    out.append(header_value[start:].strip())
    return [v for v in out if v]
