"""The checks a carrier edge makes before it spends anything on a request (REFERENCE.md robustness checklist).

Each failure names the problem in the reason phrase, so the peer's engineer can see what was wrong.
"""

from __future__ import annotations

import re

from proxy.sip.grammar import ParseError, parse_uri
from proxy.sip.message import Request

__all__ = ["MAGIC_COOKIE", "MAX_RURI_LENGTH", "check_request"]

MAGIC_COOKIE = "z9hG4bK"
MAX_RURI_LENGTH = 512
_ROUTABLE_SCHEMES = frozenset({"sip", "sips", "tel"})
#: A sip/sips/tel URI with nothing that could break a header: the common From/To, accepted without a full parse.
_PLAIN_URI = re.compile(
    r"(?i:sips?):(?:[A-Za-z0-9\-_.!~*'()%&=+$,;?/:]+@)?[A-Za-z0-9.\-]+(?::\d{1,5})?(?:;[A-Za-z0-9\-_.!~*'%=]+)*"
    r"|(?i:tel):\+?[0-9\-.()*#]+(?:;[A-Za-z0-9\-_.!~*'%=+]+)*"
)
#: A Via with nothing unusual: `SIP/2.0/<transport> host[:port]` and token parameters. It needs no full parse to
#: be known good; anything else gets one, which names the problem.
_PLAIN_VIA = re.compile(
    r"SIP/2\.0/[A-Za-z]+ [A-Za-z0-9.\-]+(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]?\d{1,4}))?"
    r"(?:;[A-Za-z0-9\-_.!~*'%]+(?:=[A-Za-z0-9\-_.!~*'%:\[\]]+)?)*"
)
_IN_DIALOG_PREFIXES = frozenset({"sip:", "sips"})
_REQUIRED = (("to", "To"), ("from", "From"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_AT_MOST_ONE = (("max-forwards", "Max-Forwards"), ("content-length", "Content-Length"))


def check_request(req: Request, max_ruri: int = MAX_RURI_LENGTH) -> tuple[int, str] | None:
    """None when the request is acceptable, else the (code, reason phrase) to answer with."""
    keys = [h.key for h in req.headers]
    for key, name in _REQUIRED:
        n = keys.count(key)
        if n != 1:
            return 400, f"Missing {name}" if n == 0 else f"Duplicate {name}"
    for key, name in _AT_MOST_ONE:
        if keys.count(key) > 1:
            return 400, f"Duplicate {name}"
    if "via" not in keys:
        return 400, "Missing Via"
    try:
        to_tag = req.to_tag
    except ParseError:
        return 400, "Bad To"
    try:
        branch, _ = req.via_key
        if to_tag is None and not _PLAIN_VIA.fullmatch(req.header("via") or ""):
            req.via  # noqa: B018 - an unusual out-of-dialog Via gets the full parse
    except ParseError:
        return 400, "Bad Via"
    if not branch or not branch.startswith(MAGIC_COOKIE):
        return 400, "Via branch without z9hG4bK"
    try:
        num, method = req.cseq
    except ParseError:
        return 400, "Bad CSeq"
    if method != req.method:
        return 400, "CSeq method mismatch"
    del num
    if len(req.uri) > max_ruri:
        return 414, "Request-URI Too Long"
    if to_tag is not None and req.uri[:4].lower() in _IN_DIALOG_PREFIXES and " " not in req.uri:
        pass  # in-dialog: the R-URI is a Contact we handed out; its scheme is all that matters
    else:
        try:
            uri = req.ruri
        except ParseError:
            return 400, "Bad Request-URI"
        if uri.scheme not in _ROUTABLE_SCHEMES:
            return 416, "Unsupported URI Scheme"
    for key, name in (("from", "From"), ("to", "To")):
        if to_tag is not None:
            break  # in-dialog: the dialog's INVITE was checked in full
        try:
            na = req.from_ if key == "from" else req.to
            if not _PLAIN_URI.fullmatch(na.uri):
                parse_uri(na.uri)  # the full parse names what is wrong with an unusual one
        except ParseError:
            return 400, f"Bad {name}"
    contact = req.header("contact")
    if contact is not None and to_tag is None:
        try:
            req.contact  # noqa: B018 - parses and validates
        except ParseError:
            return 400, "Bad Contact"
    try:
        mf = req.max_forwards
    except ParseError:
        return 400, "Bad Max-Forwards"
    if mf is not None and mf > 255:
        return 400, "Bad Max-Forwards"
    if mf == 0 and req.method not in ("ACK", "CANCEL"):
        return 483, "Too Many Hops"
    if "proxy-require" in keys:
        return 420, "Bad Extension"
    return None
