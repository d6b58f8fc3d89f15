"""Small, forgiving parsers for the SIP grammar pieces the B2BUA reads: Via, name-addr, URI, CSeq, params.

Each keeps enough of the original text to write the value back unchanged apart from what stirgate edits
(a tag, a verstat parameter), because carriers compare these bytes.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

__all__ = [
    "NameAddr",
    "ParseError",
    "Uri",
    "Via",
    "parse_cseq",
    "parse_name_addr",
    "parse_params",
    "parse_uri",
    "parse_via",
    "split_commas",
]


#: NamedTuple's generated __new__ is Python code; building the tuple directly is a C call (hot path).
_new = tuple.__new__


#: URIs and name-addrs repeat from call to call (a trunk's Contact, its Request-URIs, a To without tag): their
#: parses are remembered by text (the results are immutable tuples; a bounded LRU, so unique values such as a
#: From with its tag cannot grow it; errors are not remembered).
_CACHE_SIZE = 4096


class ParseError(ValueError):
    """The bytes are not a SIP message we can address a response to, or a value breaks the SIP grammar."""


GrammarError = ParseError


def split_commas(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and angle brackets."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse_params(text: str) -> list[tuple[str, str | None]]:
    """`;a=1;b;c="x;y"` -> [("a","1"), ("b",None), ("c",'"x;y"')]; names lower-cased, values as written."""
    out: list[tuple[str, str | None]] = []
    for part in _split_semis(text):
        part = part.strip()
        if not part:
            continue
        eq = part.find("=")
        if eq < 0:
            out.append((part.lower(), None))
        else:
            out.append((part[:eq].strip().lower(), part[eq + 1 :].strip()))
    return out


def _split_semis(text: str) -> list[str]:
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    quoted = False
    start = 0
    for i, c in enumerate(text):
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif c == ";" and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    for k, v in params:
        if k == name:
            return v if v is not None else ""
    return None


class Via(NamedTuple):
    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via(value: str) -> Via:
    """One Via value: `SIP/2.0/UDP host[:port];params`."""
    value = value.strip()
    slash2 = value.find("/", value.find("/") + 1)
    if slash2 <= 0:
        raise GrammarError("Via without protocol")
    proto = value[:slash2].replace(" ", "").replace("\t", "").upper()
    if not proto.startswith("SIP/"):
        raise GrammarError("Via protocol is not SIP")
    rest = value[slash2 + 1 :].lstrip()
    i = 0
    while i < len(rest) and rest[i] not in " \t":
        i += 1
    transport = rest[:i].upper()
    if not transport:
        raise GrammarError("Via without transport")
    rest = rest[i:].strip()
    semi = rest.find(";")
    sent_by = (rest if semi < 0 else rest[:semi]).strip().replace(" ", "")
    params = parse_params(rest[semi + 1 :]) if semi >= 0 else []
    host, port = _split_host_port(sent_by)
    if not host:
        raise GrammarError("Via without sent-by host")
    return _new(Via, (transport, host, port, tuple(params)))


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise GrammarError("unterminated IPv6 reference")
        host = hostport[: end + 1]
        rest = hostport[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise GrammarError("junk after IPv6 reference")
        return host, _port(rest[1:])
    colon = hostport.rfind(":")
    if colon < 0:
        return hostport, None
    return hostport[:colon], _port(hostport[colon + 1 :])


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise GrammarError("bad port")
    port = int(text)
    if port > 65535:
        raise GrammarError("port out of range")
    return port


class Uri(NamedTuple):
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    raw: str

    def param(self, name: str) -> str | None:
        return _param(self.params, name)


_DISPLAY_TOKENS = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]+")
_COMMON_SCHEMES = frozenset({"sip", "sips", "tel"})
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*")
_BAD_URI_CHARS = re.compile(r'[ \t<>"]')


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_uri(text: str) -> Uri:
    """A SIP/SIPS/tel URI (or any absoluteURI, kept opaque); strict enough to refuse what cannot be routed."""
    text = text.strip()
    colon = text.find(":")
    if colon <= 0:
        raise GrammarError("URI without scheme")
    scheme = text[:colon].lower()
    if scheme not in _COMMON_SCHEMES and not _SCHEME_RE.fullmatch(scheme):
        raise GrammarError("bad URI scheme")
    rest = text[colon + 1 :]
    if scheme not in ("sip", "sips"):
        if scheme == "tel":
            semi = rest.find(";")
            number = rest if semi < 0 else rest[:semi]
            params = parse_params(rest[semi + 1 :]) if semi >= 0 else []
            if not number:
                raise GrammarError("empty tel URI")
            return _new(Uri, (scheme, number, "", None, tuple(params), text))
        return _new(Uri, (scheme, None, rest, None, (), text))
    if _BAD_URI_CHARS.search(rest):
        raise GrammarError("illegal character in SIP URI")
    q = rest.find("?")
    if q >= 0:
        rest = rest[:q]
    at = rest.rfind("@")
    user: str | None = None
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        pw = userinfo.find(":")
        user = userinfo if pw < 0 else userinfo[:pw]
    semi = rest.find(";")
    hostport = rest if semi < 0 else rest[:semi]
    params = parse_params(rest[semi + 1 :]) if semi >= 0 else []
    host, port = _split_host_port(hostport)
    if not host:
        raise GrammarError("SIP URI without host")
    return _new(Uri, (scheme, user, host.lower(), port, tuple(params), text))


class NameAddr(NamedTuple):
    """From/To/Contact/Route value. `prefix` is the text up to the end of the URI (display name and angle
    brackets as written); `params` are the header parameters after it."""

    prefix: str
    uri: str
    display: str | None
    params: tuple[tuple[str, str | None], ...]

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def format(self, tag: str | None = None, drop_tag: bool = False) -> str:
        """The value written back: same prefix, same params, with the tag replaced, added or dropped."""
        parts = [self.prefix]
        for k, v in self.params:
            if k == "tag":
                continue
            parts.append(k if v is None else f"{k}={v}")
        if not drop_tag:
            t = tag if tag is not None else self.tag
            if t is not None:
                parts.append(f"tag={t}")
        return ";".join(parts)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_name_addr(value: str) -> NameAddr:
    """From/To/Contact/Route: `"display" <uri>;params` or `uri;params`."""
    value = value.strip()
    lt = _find_unquoted(value, "<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise GrammarError("unterminated <")
        display = value[:lt].strip() or None
        if display is not None:
            if display.startswith('"'):
                if not (display.endswith('"') and len(display) > 1):
                    raise GrammarError("unterminated display name")
            elif not _DISPLAY_TOKENS.fullmatch(display):
                # RFC 3261 25.1: an unquoted display name is tokens only (no comma, no quote, no angle).
                raise GrammarError("display name must be quoted")
        uri = value[lt + 1 : gt].strip()
        prefix = value[: gt + 1]
        tail = value[gt + 1 :].strip()
        if tail and not tail.startswith(";"):
            raise GrammarError("junk after name-addr")
        params = parse_params(tail[1:]) if tail else []
        if not uri:
            raise GrammarError("empty URI")
        return _new(NameAddr, (prefix, uri, display, tuple(params)))
    if '"' in value:
        raise GrammarError("display name without <URI>")
    # addr-spec form: header params start at the first ';' (RFC 3261 20.10).
    semi = value.find(";")
    uri = value if semi < 0 else value[:semi]
    uri = uri.strip()
    if not uri or " " in uri or "?" in uri or "," in uri:
        # RFC 3261 20: a URI with headers or commas must be in <...>.
        raise GrammarError("bad addr-spec")
    params = parse_params(value[semi + 1 :]) if semi >= 0 else []
    return _new(NameAddr, (uri, uri, None, tuple(params)))


def _find_unquoted(value: str, ch: str) -> int:
    if '"' not in value:
        return value.find(ch)
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ch:
            return i
        i += 1
    return -1


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
        raise GrammarError("bad CSeq")
    num = int(parts[0])
    if num > 0xFFFFFFFF:
        raise GrammarError("CSeq number out of range")
    return num, parts[1]
