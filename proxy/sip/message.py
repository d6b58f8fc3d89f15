"""SIP messages: ordered raw header lines with lazily parsed views of the few fields a B2BUA needs.

Text is decoded as latin-1 so that every byte maps to one character and back: headers and bodies we do not
own leave stirgate exactly as they arrived. Only the fields the call logic needs are parsed, and only when
asked for (parsing every header into objects made a call several times dearer in measurements).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

from proxy.sip.grammar import (
    NameAddr,
    ParseError,
    Uri,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_commas,
)

__all__ = [
    "COMPACT_FORMS",
    "Header",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "canonical_name",
    "frame_stream",
    "parse",
]

#: RFC 3261 7.3.3 and later RFCs: one-letter forms, keyed by the compact letter.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

#: Names the code asks for by canonical key: looked up without normalising again.
_CANONICAL = frozenset(
    {"via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length", "record-route", "route",
     "identity", "p-asserted-identity", "date", "require", "supported", "rseq", "rack"}
)

#: Spelling used when stirgate writes a header itself.
_PRETTY: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "rack": "RAck",
    "rseq": "RSeq",
}

_SIP_VERSION = "SIP/2.0"
#: Methods whose token needs no regex check (any other token is checked).
_KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "PRACK", "INFO", "NOTIFY", "REFER",
                            "REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH"})
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
#: Header names as written -> canonical key. Names repeat from message to message, so this turns the per-line
#: validation and lower-casing into one dict lookup. Bounded: a hostile peer cannot grow it without limit.
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX = 4096


def _key_for(name: str) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        stripped = name.rstrip(" \t")
        if not stripped or not _TOKEN_RE.fullmatch(stripped):
            raise ParseError("bad header name")
        key = stripped.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[name] = key
    return key


def canonical_name(name: str) -> str:
    """Lower-case header name with compact forms expanded, so `y`, `IDENTITY` and `Identity` are one name."""
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


def pretty_name(key: str) -> str:
    pretty = _PRETTY.get(key)
    if pretty is None:
        pretty = "-".join(part.capitalize() for part in key.split("-"))
        if len(_PRETTY) < _KEY_CACHE_MAX:
            _PRETTY[key] = pretty
    return pretty


class Header:
    """One header line as it arrived (`raw`, folding included) with its canonical name and unfolded value."""

    __slots__ = ("key", "raw", "value")

    def __init__(self, key: str, raw: str, value: str) -> None:
        self.key = key
        self.raw = raw
        self.value = value

    @classmethod
    def make(cls, key: str, value: str) -> Header:
        return cls(key, f"{pretty_name(key)}: {value}", value)

    def __repr__(self) -> str:
        return f"Header({self.raw!r})"


class Message:
    """Common part of requests and responses: the header list and the body."""

    __slots__ = ("_contact", "_cseq", "_from", "_index", "_to", "_to_tag", "_via", "_via_key", "body", "headers")

    def __init__(self, headers: list[Header], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._via: Via | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._cseq: tuple[int, str] | None = None
        self._via_key: tuple[str, str] | None = None
        self._to_tag: str | bool | None = False  # False: not looked at yet
        #: First header per key, built on the first lookup: the B2BUA asks one message for many fields.
        self._index: dict[str, Header] | None = None
        self._contact: NameAddr | bool | None = False

    # --- generic access ---------------------------------------------------------------------------------------
    def header(self, name: str) -> str | None:
        """Value of the first header with this name (any spelling or compact form), or None."""
        index = self._index
        if index is None:
            index = {}
            for h in reversed(self.headers):
                index[h.key] = h
            self._index = index
        found = index.get(name if name in _CANONICAL else canonical_name(name))
        return None if found is None else found.value

    def headers_all(self, name: str) -> list[str]:
        """Values of every header line with this name, in order (comma lists not split)."""
        if self.header(name) is None:
            return []  # the common case, answered by the index
        key = canonical_name(name)
        return [h.value for h in self.headers if h.key == key]

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every header line with this name, in order."""
        out: list[str] = []
        for v in self.headers_all(name):
            out.extend(split_commas(v))
        return out

    def count(self, name: str) -> int:
        key = canonical_name(name)
        return sum(1 for h in self.headers if h.key == key)

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    def set_header(self, name: str, value: str) -> None:
        """Replace every line with this name by one line (at the first one's place, else at the end)."""
        key = canonical_name(name)
        new = Header.make(key, value)
        out: list[Header] = []
        placed = False
        for h in self.headers:
            if h.key == key:
                if not placed:
                    out.append(new)
                    placed = True
            else:
                out.append(h)
        if not placed:
            out.append(new)
        self.headers = out
        self._forget(key)

    def add_header(self, name: str, value: str, first: bool = False) -> None:
        key = canonical_name(name)
        h = Header.make(key, value)
        if self.headers is _NO_HEADERS:  # a skeleton's shared list is never added to: it gets its own
            self.headers = []
        if first:
            self.headers.insert(0, h)
        else:
            self.headers.append(h)
        self._forget(key)

    def remove_header(self, name: str) -> None:
        key = canonical_name(name)
        self.headers = [h for h in self.headers if h.key != key]
        self._forget(key)

    def _forget(self, key: str) -> None:
        self._index = None
        if key == "via":
            self._via = None
            self._via_key = None
        elif key == "from":
            self._from = None
        elif key == "to":
            self._to = None
            self._to_tag = False
        elif key == "contact":
            self._contact = False
        elif key == "cseq":
            self._cseq = None

    # --- lazily parsed views ----------------------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        v = self.header("call-id")
        if v is None:
            raise ParseError("missing Call-ID")
        return v

    @property
    def via(self) -> Via:
        """The top Via."""
        if self._via is None:
            for h in self.headers:
                if h.key == "via":
                    self._via = parse_via(_first_value(h.value, "Via"))
                    break
            else:
                raise ParseError("missing Via")
        return self._via

    @property
    def via_key(self) -> tuple[str, str]:
        """(branch, sent-by) of the top Via: what transaction matching needs, without a full Via parse."""
        key = self._via_key
        if key is None:
            for h in self.headers:
                if h.key == "via":
                    key = _fast_via_key(h.value)
                    break
            else:
                raise ParseError("missing Via")
            if key is None:
                via = self.via
                key = (via.branch or "", via.sent_by)
            self._via_key = key
        return key

    @property
    def to_tag(self) -> str | None:
        tag = self._to_tag
        if tag is False:
            v = self.header("to")
            if v is None:
                raise ParseError("missing To")
            tag = _fast_tag(v)
            if tag is False:
                tag = self.to.tag
            self._to_tag = tag
        return tag  # type: ignore[return-value]

    @property
    def from_tag(self) -> str | None:
        v = self.header("from")
        if v is None:
            raise ParseError("missing From")
        tag = _fast_tag(v)
        return self.from_.tag if tag is False else tag  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            v = self.header("from")
            if v is None:
                raise ParseError("missing From")
            self._from = parse_name_addr(v)
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            v = self.header("to")
            if v is None:
                raise ParseError("missing To")
            self._to = parse_name_addr(v)
        return self._to

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            v = self.header("cseq")
            if v is None:
                raise ParseError("missing CSeq")
            self._cseq = parse_cseq(v)
        return self._cseq

    @property
    def contact(self) -> NameAddr | None:
        contact = self._contact
        if contact is False:
            v = self.header("contact")
            if v is None:
                contact = None
            else:
                first = _first_value(v, "Contact")
                contact = None if first.strip() == "*" else parse_name_addr(first)
            self._contact = contact
        return contact  # type: ignore[return-value]

    @property
    def max_forwards(self) -> int | None:
        v = self.header("max-forwards")
        if v is None:
            return None
        v = v.strip()
        if not v.isdigit() or not v.isascii():
            raise ParseError("bad Max-Forwards")
        return int(v)

    # --- serialization ----------------------------------------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire; Content-Length always states the body's real length."""
        lines = [self._start_line()]
        body = self.body
        cl_done = False
        for h in self.headers:
            if h.key == "content-length":
                if cl_done:
                    continue
                cl_done = True
                if h.value.strip() == str(len(body)):
                    lines.append(h.raw)
                else:
                    lines.append(f"Content-Length: {len(body)}")
            else:
                lines.append(h.raw)
        if not cl_done:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("latin-1") + body

    def iter_raw(self) -> Iterator[str]:
        for h in self.headers:
            yield h.raw


def _first_value(value: str, name: str) -> str:
    """The first of a comma list; a list of nothing (`Via: ,`) is a grammar error, not an IndexError."""
    values = split_commas(value)
    if not values:
        raise ParseError(f"empty {name}")
    return values[0]


def _fast_via_key(value: str) -> tuple[str, str] | None:
    """Branch and sent-by of a plain `SIP/2.0/UDP host:port;...;branch=x` value; None means: parse it fully."""
    if "," in value or '"' in value:
        return None
    b = value.find(";branch=")
    if b < 0:
        return None
    end = value.find(";", b + 8)
    branch = value[b + 8 :] if end < 0 else value[b + 8 : end]
    sp = value.find(" ")
    semi = value.find(";")
    if sp < 0 or semi < sp or not value.startswith("SIP/2.0/"):
        return None
    sent_by = value[sp + 1 : semi]
    if " " in sent_by or "\t" in sent_by or not sent_by or " " in branch:
        return None
    return branch, sent_by


def _fast_tag(value: str) -> str | bool | None:
    """The tag parameter of a plain name-addr; False means: parse it fully."""
    if '"' in value:
        return False
    gt = value.rfind(">")
    tail = value[gt + 1 :] if gt >= 0 else value
    i = tail.find(";tag=")
    if i < 0:
        return None if "tag" not in tail.lower() else False
    end = tail.find(";", i + 5)
    tag = tail[i + 5 :] if end < 0 else tail[i + 5 : end]
    if not tag or " " in tag:
        return False
    return tag


#: A skeleton's headers: one list for them all (a lingering transaction only reads its request's start line and
#: CSeq; `add_header` gives a skeleton a list of its own first), so a dialog's two skeletons hold no list of
#: their own for the GC to walk.
_NO_HEADERS: Final[list[Header]] = []


class Request(Message):
    __slots__ = ("_ruri", "method", "uri")

    def __init__(self, method: str, uri: str, headers: list[Header], body: bytes = b"",
                 via_key: tuple[str, str] | None = None, cseq: tuple[int, str] | None = None) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self._ruri: Uri | None = None
        # A request stirgate wrote: what it put in the top Via and CSeq is known without parsing them back.
        if via_key is not None:
            self._via_key = via_key
        if cseq is not None:
            self._cseq = cseq

    def skeleton(self) -> Request:
        """A copy with only the start line and CSeq: what a lingering transaction still needs.

        A finished transaction lives on for up to 64*T1 to absorb retransmissions; holding every header
        object that long made the cyclic GC walk millions of them under load.
        """
        copy = Request(self.method, self.uri, _NO_HEADERS)
        copy._cseq = self.cseq
        return copy

    @property
    def ruri(self) -> Uri:
        """The Request-URI, parsed once."""
        ruri = self._ruri
        if ruri is None:
            ruri = self._ruri = parse_uri(self.uri)
        return ruri

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {_SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str, headers: list[Header], body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def _start_line(self) -> str:
        return f"{_SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class VersionError(ParseError):
    """A request whose SIP version is not 2.0: answered 505, not 400."""

    def __init__(self, request: Request) -> None:
        super().__init__("SIP version not supported")
        self.request = request


def _split_head(data: bytes) -> tuple[str, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end].decode("latin-1"), data[end + 4 :]
    # Tolerate bare LF line ends (RFC 3261 7: implementations should accept them).
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end].decode("latin-1").replace("\r\n", "\n").replace("\n", "\r\n"), data[end + 2 :]
    raise ParseError("no end of headers")


def _parse_headers(lines: list[str]) -> list[Header]:
    """Header lines to Headers. The common line (a name seen before, a colon, no folding) takes one dict lookup;
    the first line that is anything else sends the whole message through the careful loop."""
    headers: list[Header] = []
    append = headers.append
    known = _KEY_CACHE.get
    for line in lines:
        colon = line.find(":")
        # A cached name is a validated token: no leading blank (so not a folded line), not empty.
        key = known(line[:colon]) if colon > 0 else None
        if key is None:
            return _parse_lines(lines)
        append(Header(key, line, line[colon + 1 :].strip(" \t")))
    return headers


def _parse_lines(lines: Iterable[str]) -> list[Header]:
    headers: list[Header] = []
    append = headers.append
    keys = _KEY_CACHE
    for line in lines:
        colon = line.find(":")
        if colon > 0 and line[0] not in " \t":
            name = line[:colon]
            append(Header(keys.get(name) or _key_for(name), line, line[colon + 1 :].strip(" \t")))
            continue
        if not line:
            continue
        first = line[0]
        if first == " " or first == "\t":
            # Folded continuation (RFC 3261 7.3.1): belongs to the previous header line.
            if not headers:
                raise ParseError("continuation line before any header")
            prev = headers[-1]
            prev.raw = prev.raw + "\r\n" + line
            prev.value = (prev.value + " " + line.strip()).strip()
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError("header line without a name")
        headers.append(Header(_key_for(line[:colon]), line, line[colon + 1 :].strip(" \t")))
    return headers


def parse(data: bytes) -> Request | Response:
    """One SIP message from one UDP datagram (or one framed TCP message).

    Raises ParseError when no SIP message can be read. A body longer than Content-Length is cut to it
    (RFC 3261 18.3); a body shorter than Content-Length is an error.
    """
    if not data:
        raise ParseError("empty message")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        lines = data[:end].decode("latin-1").split("\r\n")
        body = data[end + 4 :]
    else:
        head, body = _split_head(data)
        lines = head.split("\r\n")
    start = lines[0]
    if start.startswith("SIP/2.0 ") or start[:8].upper() == "SIP/2.0 ":
        parts = start.split(" ", 2)
        if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit() or not parts[1].isascii():
            raise ParseError("bad status line")
        status = int(parts[1])
        if status < 100 or status > 699:
            raise ParseError("bad status code")
        msg: Request | Response = Response(status, parts[2] if len(parts) > 2 else "", _parse_headers(lines[1:]))
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise ParseError("bad request line")
        method, uri, version = parts
        if method not in _KNOWN_METHODS and not _TOKEN_RE.fullmatch(method):
            raise ParseError("bad method")
        if not uri:
            raise ParseError("empty Request-URI")
        msg = Request(method, uri, _parse_headers(lines[1:]))
        if version != _SIP_VERSION and version.upper() != _SIP_VERSION:
            msg.body = body
            raise VersionError(msg)
    cl = msg.header("content-length")
    if cl is not None:
        if not cl.isdigit() or not cl.isascii():
            cl = cl.strip()
            if not cl.isdigit() or not cl.isascii():
                raise ParseError("bad Content-Length")
        n = int(cl)
        if n != len(body):
            if n > len(body):
                raise ParseError("Content-Length larger than the body")
            body = body[:n]
    msg.body = body
    return msg


def frame_stream(buffer: bytearray, max_size: int) -> list[bytes]:
    """Take every complete message off the front of a TCP stream buffer (RFC 3261 18.3: framed by Content-Length).

    Leading CRLFs (keep-alives, RFC 5626) are skipped. Raises ParseError when the stream cannot be framed: the
    caller closes the connection, since nothing after a framing error can be trusted.
    """
    out: list[bytes] = []
    while True:
        i = 0
        while i + 1 < len(buffer) and buffer[i] == 13 and buffer[i + 1] == 10:
            i += 2
        if i:
            del buffer[:i]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > max_size:
                raise ParseError("headers too large")
            return out
        head = bytes(buffer[:end])
        length = _content_length(head)
        if length is None:
            raise ParseError("missing Content-Length on a stream transport")
        total = end + 4 + length
        if total > max_size:
            raise ParseError("message too large")
        if len(buffer) < total:
            return out
        out.append(bytes(buffer[:total]))
        del buffer[:total]


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().lower()
        if name == b"content-length" or name == b"l":
            value = line[colon + 1 :].strip()
            if not value.isdigit():
                raise ParseError("bad Content-Length")
            return int(value)
    return None
