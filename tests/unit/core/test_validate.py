"""validate.check_request: one test per rule of the robustness checklist."""

from __future__ import annotations

import pytest

from proxy.sip.message import Request, parse
from proxy.sip.validate import check_request

GOOD = (
    "INVITE sip:+15551234567@192.0.2.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKgood\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@192.0.2.10>;tag=f1\r\n"
    "To: <sip:+15551234567@192.0.2.1>\r\n"
    "Call-ID: cid@192.0.2.10\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.10>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def req(text: str = GOOD, **repl: str) -> Request:
    for old, new in repl.items():
        assert old in text, old
        text = text.replace(old, new)
    m = parse(text.encode("latin-1"))
    assert isinstance(m, Request)
    return m


def sub(old: str, new: str) -> Request:
    assert old in GOOD, old
    m = parse(GOOD.replace(old, new, 1).encode("latin-1"))
    assert isinstance(m, Request)
    return m


def test_good_request_passes() -> None:
    assert check_request(req()) is None


@pytest.mark.parametrize("line,name", [
    ("To: <sip:+15551234567@192.0.2.1>\r\n", "To"),
    ("From: <sip:alice@192.0.2.10>;tag=f1\r\n", "From"),
    ("Call-ID: cid@192.0.2.10\r\n", "Call-ID"),
    ("CSeq: 1 INVITE\r\n", "CSeq"),
])
def test_missing_required(line: str, name: str) -> None:
    assert check_request(sub(line, "")) == (400, f"Missing {name}")


def test_missing_via() -> None:
    assert check_request(sub("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKgood\r\n", "")) == (400, "Missing Via")


@pytest.mark.parametrize("line,dup,name", [
    ("To: <sip:+15551234567@192.0.2.1>\r\n", "t: <sip:other@192.0.2.1>\r\n", "To"),
    ("From: <sip:alice@192.0.2.10>;tag=f1\r\n", "f: <sip:mallory@192.0.2.10>;tag=f2\r\n", "From"),
    ("Call-ID: cid@192.0.2.10\r\n", "i: cid2\r\n", "Call-ID"),
    ("CSeq: 1 INVITE\r\n", "CSeq: 2 INVITE\r\n", "CSeq"),
    ("Max-Forwards: 70\r\n", "Max-Forwards: 69\r\n", "Max-Forwards"),
])
def test_duplicate_single_headers_any_spelling(line: str, dup: str, name: str) -> None:
    assert check_request(sub(line, line + dup)) == (400, f"Duplicate {name}")


def test_cseq_method_mismatch() -> None:
    assert check_request(sub("CSeq: 1 INVITE", "CSeq: 1 BYE")) == (400, "CSeq method mismatch")


@pytest.mark.parametrize("value", ["4294967296 INVITE", "99999999999999999999 INVITE", "-1 INVITE", "one INVITE",
                                   "1"])
def test_bad_cseq(value: str) -> None:
    assert check_request(sub("CSeq: 1 INVITE", f"CSeq: {value}")) == (400, "Bad CSeq")


def test_cseq_max_ok() -> None:
    assert check_request(sub("CSeq: 1 INVITE", "CSeq: 4294967295 INVITE")) is None


@pytest.mark.parametrize("via", ["SIP/2.0/UDP 192.0.2.10:5060;branch=abc", "SIP/2.0/UDP 192.0.2.10:5060",
                                 "SIP/2.0/UDP 192.0.2.10:5060;branch=", "SIP/2.0/UDP 192.0.2.10;branch=Z9HG4BKx"])
def test_via_without_magic_cookie(via: str) -> None:
    assert check_request(sub("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKgood", via)) == (
        400, "Via branch without z9hG4bK")


@pytest.mark.parametrize("via", ["garbage", "SIP/2.0/UDP ;branch=z9hG4bKx", "SIP/2.0/UDP h:99999;branch=z9hG4bKx"])
def test_bad_via(via: str) -> None:
    assert check_request(sub("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKgood", via)) == (400, "Bad Via")


@pytest.mark.parametrize("uri", ["sip:", "sip:user@", 'sip:a"b@h', "sip:<x>@h", "nocolon", "sip:h:port"])
def test_bad_request_uri(uri: str) -> None:
    assert check_request(sub("sip:+15551234567@192.0.2.1 SIP/2.0", f"{uri} SIP/2.0")) == (400, "Bad Request-URI")


@pytest.mark.parametrize("uri", ["mailto:bob@example.com", "http://example.com/", "im:bob@h", "urn:service:sos"])
def test_unknown_scheme_416(uri: str) -> None:
    assert check_request(sub("sip:+15551234567@192.0.2.1 SIP/2.0", f"{uri} SIP/2.0")) == (
        416, "Unsupported URI Scheme")


@pytest.mark.parametrize("uri", ["tel:+15551234567", "sips:bob@192.0.2.1", "SIP:bob@192.0.2.1"])
def test_routable_schemes(uri: str) -> None:
    assert check_request(sub("sip:+15551234567@192.0.2.1 SIP/2.0", f"{uri} SIP/2.0")) is None


def test_ruri_too_long_414() -> None:
    long_uri = "sip:" + "1" * 600 + "@192.0.2.1"
    r = sub("sip:+15551234567@192.0.2.1 SIP/2.0", f"{long_uri} SIP/2.0")
    assert check_request(r) == (414, "Request-URI Too Long")
    assert check_request(r, max_ruri=1000) is None
    assert check_request(req(), max_ruri=10) == (414, "Request-URI Too Long")


def test_max_forwards_zero_483_except_ack_and_cancel() -> None:
    assert check_request(sub("Max-Forwards: 70", "Max-Forwards: 0")) == (483, "Too Many Hops")
    opt = req(**{"INVITE sip": "OPTIONS sip", "1 INVITE": "1 OPTIONS", "Max-Forwards: 70": "Max-Forwards: 0"})
    assert check_request(opt) == (483, "Too Many Hops")
    for method in ("ACK", "CANCEL"):
        r = req(**{"INVITE sip": f"{method} sip", "1 INVITE": f"1 {method}", "Max-Forwards: 70": "Max-Forwards: 0"})
        assert check_request(r) is None


def test_max_forwards_one_ok_and_missing_ok() -> None:
    assert check_request(sub("Max-Forwards: 70", "Max-Forwards: 1")) is None
    assert check_request(sub("Max-Forwards: 70\r\n", "")) is None


@pytest.mark.parametrize("mf", ["-1", "abc", "256", "1e3"])
def test_bad_max_forwards(mf: str) -> None:
    assert check_request(sub("Max-Forwards: 70", f"Max-Forwards: {mf}")) == (400, "Bad Max-Forwards")


def test_proxy_require_420() -> None:
    assert check_request(sub("Contact:", "Proxy-Require: foo\r\nContact:")) == (420, "Bad Extension")


@pytest.mark.parametrize("line,new,name", [
    ("From: <sip:alice@192.0.2.10>;tag=f1", "From: <sip:alice@192.0.2.10;tag=f1", "From"),
    ("To: <sip:+15551234567@192.0.2.1>", "To: <sip:x@h", "To"),
    ("Contact: <sip:alice@192.0.2.10>", "Contact: <>", "Contact"),
])
def test_bad_name_addr(line: str, new: str, name: str) -> None:
    assert check_request(sub(line, new)) == (400, f"Bad {name}")


def test_bad_quoted_to_is_named_to_not_via() -> None:
    assert check_request(sub("To: <sip:+15551234567@192.0.2.1>", 'To: "unterminated <sip:x@h>')) == (400, "Bad To")
