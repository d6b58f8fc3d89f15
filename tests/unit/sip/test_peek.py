"""proxy.sip.peek: the lines a stateless answer copies, found without a parse; anything unusual left to the parser."""

from __future__ import annotations

import pytest

from proxy.sip.message import Request, Response, parse
from proxy.sip.peek import peek_request, stateless_response

INVITE = (
    b"INVITE sip:15551230002@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.12:5060;branch=z9hG4bK-1\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n"
    b'From: "Flood" <sip:+15551239999@127.0.0.12:5060>;tag=abc\r\n'
    b"To: <sip:15551230002@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-2@127.0.0.12\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:+15551239999@127.0.0.12:5060>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)


def test_finds_every_copied_line_in_order() -> None:
    p = peek_request(INVITE)
    assert p is not None
    assert p.method == b"INVITE"
    assert p.vias == [b"Via: SIP/2.0/UDP 127.0.0.12:5060;branch=z9hG4bK-1",
                      b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0"]
    assert p.from_.startswith(b"From: ") and p.to == b"To: <sip:15551230002@127.0.0.1:5060>"
    assert p.call_id == b"1-2@127.0.0.12" and p.cseq == b"CSeq: 1 INVITE"
    assert not p.to_tagged


def test_answer_is_what_the_full_parser_reads_back() -> None:
    p = peek_request(INVITE)
    assert p is not None
    data = stateless_response(p, b"SIP/2.0 503 Service Unavailable\r\n", b"sg1s42", b"Retry-After: 7\r\n")
    resp = parse(data)
    req = parse(INVITE)
    assert isinstance(resp, Response) and isinstance(req, Request)
    assert resp.status == 503 and resp.reason == "Service Unavailable"
    assert resp.headers_all("via") == req.headers_all("via")
    assert resp.header("from") == req.header("from") and resp.call_id == req.call_id
    assert resp.cseq == (1, "INVITE") and resp.to_tag == "sg1s42"
    assert resp.header("retry-after") == "7" and resp.header("content-length") == "0" and resp.body == b""


def test_compact_forms() -> None:
    data = (b"INVITE sip:x@h SIP/2.0\r\nv: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n"
            b"t: <sip:x@h>\r\ni: abc\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
    p = peek_request(data)
    assert p is not None and p.call_id == b"abc" and len(p.vias) == 1 and not p.to_tagged
    assert parse(stateless_response(p, b"SIP/2.0 403 Forbidden\r\n", b"t1")).to_tag == "t1"  # type: ignore[union-attr]


@pytest.mark.parametrize("to", [b"To: <sip:x@h>;tag=9", b"To: <sip:x@h>;TAG=9", b"To: sip:x@h;tag=9",
                                b"t: <sip:x@h> ;tag=9"])
def test_a_to_tag_marks_an_in_dialog_request(to: bytes) -> None:
    p = peek_request(INVITE.replace(b"To: <sip:15551230002@127.0.0.1:5060>", to))
    assert p is not None and p.to_tagged
    # An answer to it keeps the To as it came (no second tag).
    answer = stateless_response(p, b"SIP/2.0 481 x\r\n", b"mine")
    assert answer.lower().count(b"tag=") == 2  # the From tag and the request's own To tag


@pytest.mark.parametrize("change", [
    (b"Call-ID: 1-2@127.0.0.12\r\n", b""),                                   # no Call-ID
    (b"CSeq: 1 INVITE\r\n", b""),                                            # no CSeq
    (b"Via: SIP/2.0/UDP 10.0.0.1", b"VIA: SIP/2.0/UDP 10.0.0.1"),           # a Via spelled otherwise
    (b"CSeq: 1 INVITE\r\n", b"CSeq: 1\r\n INVITE\r\n"),                      # folded
    (b"To: <sip:15551230002@127.0.0.1:5060>\r\n", b"To: <sip:a@b>\r\nt: <sip:c@d>\r\n"),  # two To
    (b"\r\n\r\n", b"\n\n"),                                                  # bare LF
    (b"INVITE sip:", b"SIP/2.0 200 OK\r\nX: sip:"),                          # a response
    (b"Call-ID: 1-2@127.0.0.12\r\n", b"CALL-ID: 1-2@127.0.0.12\r\n"),       # unusual spelling: not found
])
def test_anything_unusual_is_left_to_the_parser(change: tuple[bytes, bytes]) -> None:
    old, new = change
    assert old in INVITE
    assert peek_request(INVITE.replace(old, new, 1)) is None


def test_long_and_compact_vias_are_copied_in_order() -> None:
    mixed = INVITE.replace(b"Via: SIP/2.0/UDP 10.0.0.1", b"v: SIP/2.0/UDP 10.0.0.1")
    p = peek_request(mixed)
    assert p is not None
    assert p.vias == [b"Via: SIP/2.0/UDP 127.0.0.12:5060;branch=z9hG4bK-1",
                      b"v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0"]


def test_garbage() -> None:
    for data in (b"", b"\r\n\r\n", b"INVITE\r\n\r\n", b"\x00" * 100, INVITE[:60]):
        assert peek_request(data) is None
