"""Parser, lazy views, serialization and TCP framing (proxy.sip.message / grammar)."""

from __future__ import annotations

import pytest

from proxy.sip.grammar import parse_cseq, parse_name_addr, parse_uri, parse_via, split_commas
from proxy.sip.message import (
    COMPACT_FORMS,
    Header,
    ParseError,
    Request,
    Response,
    VersionError,
    canonical_name,
    frame_stream,
    parse,
)

BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def invite(*extra: str, body: bytes = BODY, cl: str | None = None, eol: str = "\r\n") -> bytes:
    lines = [
        "INVITE sip:+15551234567@192.0.2.1;user=phone SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@192.0.2.10>;tag=1928301774',
        "To: <sip:+15551234567@192.0.2.1>",
        "Call-ID: a84b4c76e66710@192.0.2.10",
        "CSeq: 314159 INVITE",
        "Contact: <sip:alice@192.0.2.10:5060>",
        *extra,
        "Content-Type: application/sdp",
        f"Content-Length: {len(body) if cl is None else cl}",
    ]
    return (eol.join(lines) + eol + eol).encode("latin-1") + body


# --- start line and basic fields ----------------------------------------------------------------------------------


def test_request_fields() -> None:
    m = parse(invite())
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert m.uri == "sip:+15551234567@192.0.2.1;user=phone"
    assert m.call_id == "a84b4c76e66710@192.0.2.10"
    assert m.cseq == (314159, "INVITE")
    assert m.from_tag == "1928301774"
    assert m.to_tag is None
    assert m.via_key == ("z9hG4bKabc", "192.0.2.10:5060")
    assert m.via.transport == "UDP" and m.via.host == "192.0.2.10" and m.via.port == 5060
    assert m.via.param("rport") == ""
    assert m.max_forwards == 70
    assert m.contact is not None and m.contact.uri == "sip:alice@192.0.2.10:5060"
    assert m.from_.display == '"Alice"'
    assert m.body == BODY


def test_response_fields() -> None:
    data = (b"SIP/2.0 180 Ringing Now\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=x\r\n"
            b"To: <sip:b@h>;tag=y\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    m = parse(data)
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (180, "Ringing Now")
    assert m.to_tag == "y"
    assert m.to_bytes() == data


@pytest.mark.parametrize("line", ["SIP/2.0 99 Low", "SIP/2.0 700 High", "SIP/2.0 2000 OK", "SIP/2.0 abc OK"])
def test_bad_status_line(line: str) -> None:
    with pytest.raises(ParseError):
        parse(f"{line}\r\nCall-ID: x\r\n\r\n".encode())


@pytest.mark.parametrize("line", ["INVITE sip:x@h", "INVITE  sip:x@h SIP/2.0", "INV@ITE sip:x@h SIP/2.0",
                                  "INVITE sip:x@h SIP/2.0 extra"])
def test_bad_request_line(line: str) -> None:
    with pytest.raises(ParseError):
        parse(f"{line}\r\nCall-ID: x\r\n\r\n".encode())


def test_wrong_version_is_version_error_carrying_the_request() -> None:
    with pytest.raises(VersionError) as ei:
        parse(invite().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1))
    assert ei.value.request.method == "INVITE"
    assert isinstance(ei.value, ParseError)


@pytest.mark.parametrize("data", [b"", b"INVITE sip:x@h SIP/2.0\r\nVia: x\r\n", b"\r\n\r\n",
                                  b"INVITE sip:x@h SIP/2.0\r\nno colon here\r\n\r\n",
                                  b"INVITE sip:x@h SIP/2.0\r\n folded first\r\n\r\n",
                                  b"INVITE sip:x@h SIP/2.0\r\nBad Name: v\r\n\r\n"])
def test_unparseable(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse(data)


# --- header names -------------------------------------------------------------------------------------------------


def test_compact_forms_are_the_long_names() -> None:
    data = (b"INVITE sip:x@h SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKc\r\nf: <sip:a@h>;tag=ft\r\n"
            b"t: <sip:x@h>\r\ni: compact@h\r\nm: <sip:a@192.0.2.10>\r\nc: application/sdp\r\n"
            b"k: 100rel\r\ny: abc;info=<https://x/c.pem>\r\nCSeq: 1 INVITE\r\ns: hello\r\nl: 4\r\n\r\nbody")
    m = parse(data)
    assert m.call_id == "compact@h"
    assert m.from_tag == "ft"
    assert m.to.uri == "sip:x@h"
    assert m.via_key == ("z9hG4bKc", "192.0.2.10")
    assert m.contact is not None and m.contact.uri == "sip:a@192.0.2.10"
    assert m.header("Content-Type") == "application/sdp"
    assert m.header("Supported") == "100rel"
    assert m.header("Identity") == "abc;info=<https://x/c.pem>"
    assert m.header("subject") == "hello"
    assert m.header("content-length") == "4"
    assert m.body == b"body"
    # The compact spelling is what goes back on the wire.
    assert m.to_bytes() == data


def test_compact_table_covers_rfc3261_letters() -> None:
    for letter, name in {"i": "call-id", "m": "contact", "f": "from", "t": "to", "v": "via", "l": "content-length",
                         "c": "content-type", "e": "content-encoding", "s": "subject", "k": "supported",
                         "y": "identity", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events",
                         "x": "session-expires"}.items():
        assert COMPACT_FORMS[letter] == name
        assert canonical_name(letter.upper()) == name


def test_header_names_case_insensitive() -> None:
    data = invite("X-CUSTOM: one", "x-custom: two", "IDENTITY: id1", "y: id2", "identity: id3")
    m = parse(data)
    assert m.headers_all("X-Custom") == ["one", "two"]
    assert m.header("x-CUSTOM") == "one"
    assert m.count("Identity") == 3
    assert m.headers_all("y") == ["id1", "id2", "id3"]
    assert m.has("CALL-id") and m.has("i")
    assert not m.has("P-Asserted-Identity")
    assert parse(data.replace(b"Call-ID:", b"cAlL-iD:")).call_id == "a84b4c76e66710@192.0.2.10"


def test_header_name_with_space_before_colon() -> None:
    m = parse(invite("Subject   : spaced"))
    assert m.header("subject") == "spaced"


# --- folding, comma lists ---------------------------------------------------------------------------------------


def test_folded_header_unfolded_value_raw_kept() -> None:
    data = invite("Subject: I know you're there,\r\n   pick up the phone\r\n\tand talk to me!", "X-After: 1")
    m = parse(data)
    assert m.header("subject") == "I know you're there, pick up the phone and talk to me!"
    assert m.header("x-after") == "1"
    assert m.to_bytes() == data


def test_folded_via_still_gives_branch() -> None:
    data = invite().replace(b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport",
                            b"Via: SIP/2.0/UDP\r\n  192.0.2.10:5060;branch=z9hG4bKabc;rport")
    m = parse(data)
    assert m.via_key == ("z9hG4bKabc", "192.0.2.10:5060")


def test_values_splits_comma_lists_across_lines() -> None:
    m = parse(invite('Route: <sip:p1;lr>, "A, B" <sip:p2;lr>', "Route: <sip:p3;lr;x=a,b>",
                     "Allow: INVITE,ACK , BYE"))
    assert m.values("route") == ["<sip:p1;lr>", '"A, B" <sip:p2;lr>', "<sip:p3;lr;x=a,b>"]
    assert m.values("allow") == ["INVITE", "ACK", "BYE"]
    assert m.headers_all("route") == ['<sip:p1;lr>, "A, B" <sip:p2;lr>', "<sip:p3;lr;x=a,b>"]


def test_multiple_vias_in_one_line_top_is_first() -> None:
    data = invite().replace(b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport",
                            b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKtop, SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK2")
    m = parse(data)
    assert m.via_key == ("z9hG4bKtop", "192.0.2.10:5060")
    assert m.values("via")[1] == "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK2"


# --- order and bytes preserved --------------------------------------------------------------------------------


def test_unknown_headers_order_and_bytes_preserved() -> None:
    extra = ("X-Custom:   spaced   value  ", "P-Asserted-Identity: <sip:+12125550100@h;user=phone>",
             "Diversion: <sip:+1555@h>;reason=unconditional", 'History-Info: <sip:x@h>;index=1, <sip:y@h>;index=1.1',
             "Privacy: id", "identity: eyJh.eyJi.sig;info=<https://c/x.pem>;alg=ES256;ppt=shaken",
             "x-lower:\tTabbed")
    data = invite(*extra)
    m = parse(data)
    assert m.to_bytes() == data
    raws = list(m.iter_raw())
    assert raws[7:14] == list(extra)


def test_body_bytes_opaque_latin1_roundtrip() -> None:
    body = bytes(range(256)) + b"\r\n\r\nSIP/2.0 200 OK\r\n\r\n"
    data = invite("X-Bin: \xe9\xff", body=body)
    m = parse(data)
    assert m.body == body
    assert m.to_bytes() == data


def test_set_add_remove_header() -> None:
    m = parse(invite("X-A: 1", "X-B: 2", "x-a: 3"))
    m.set_header("x-a", "new")
    assert m.headers_all("X-A") == ["new"]
    assert [h.key for h in m.headers].index("x-a") < [h.key for h in m.headers].index("x-b")
    m.add_header("record-route", "<sip:rr;lr>", first=True)
    assert m.headers[0].raw == "Record-Route: <sip:rr;lr>"
    m.remove_header("x-b")
    assert not m.has("X-B")
    m.set_header("call-id", "other")
    assert m.call_id == "other"
    assert b"\r\nCall-ID: other\r\n" in m.to_bytes()


def test_views_follow_edits() -> None:
    m = parse(invite())
    assert m.via_key[0] == "z9hG4bKabc" and m.to_tag is None and m.cseq[0] == 314159
    m.set_header("via", "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKnew")
    m.set_header("to", "<sip:x@h>;tag=t2")
    m.set_header("cseq", "7 INVITE")
    assert m.via_key == ("z9hG4bKnew", "10.0.0.1:5070")
    assert m.via.port == 5070
    assert m.to_tag == "t2"
    assert m.cseq == (7, "INVITE")


# --- Content-Length ---------------------------------------------------------------------------------------------


def test_content_length_shorter_than_body_truncates() -> None:
    m = parse(invite(cl="5"))
    assert m.body == BODY[:5]
    assert m.to_bytes().endswith(b"Content-Length: 5\r\n\r\n" + BODY[:5])


def test_content_length_longer_than_body_is_error() -> None:
    with pytest.raises(ParseError):
        parse(invite(cl=str(len(BODY) + 1)))


@pytest.mark.parametrize("cl", ["abc", "-1", "1.5", "", "\xb2\xb3", "12 3", "0x10"])
def test_content_length_garbage(cl: str) -> None:
    with pytest.raises(ParseError):
        parse(invite(cl=cl, body=b""))


def test_missing_content_length_takes_rest_as_body() -> None:
    data = invite(body=b"").replace(b"Content-Length: 0\r\n", b"") + b"abc"
    m = parse(data)
    assert m.body == b"abc"
    assert m.to_bytes().endswith(b"Content-Length: 3\r\n\r\nabc")


def test_to_bytes_fixes_wrong_length_after_body_edit_and_drops_duplicate_cl() -> None:
    m = parse(invite("Content-Length: 0", body=b""))
    assert m.count("content-length") == 2
    m.body = b"xyz"
    out = m.to_bytes()
    assert out.count(b"Content-Length") == 1
    assert b"\r\nContent-Length: 3\r\n" in out  # at the first Content-Length's place
    assert out.endswith(b"\r\n\r\nxyz")
    assert parse(out).body == b"xyz"


# --- bare LF ------------------------------------------------------------------------------------------------------


def test_bare_lf_message() -> None:
    data = invite("Subject: lf\n  folded", eol="\n", body=b"v=0\n")
    m = parse(data)
    assert isinstance(m, Request)
    assert m.call_id == "a84b4c76e66710@192.0.2.10"
    assert m.header("subject") == "lf folded"
    assert m.body == b"v=0\n"
    out = m.to_bytes()
    assert b"\r\nCall-ID: a84b4c76e66710@192.0.2.10\r\n" in out
    assert out.endswith(b"\r\n\r\nv=0\n")


# --- grammar pieces ---------------------------------------------------------------------------------------------


def test_grammar_pieces() -> None:
    assert split_commas('a, "b,c" <sip:x>, <sip:y;p=1,2>') == ["a", '"b,c" <sip:x>', "<sip:y;p=1,2>"]
    v = parse_via("SIP / 2.0 / TCP [2001:db8::1]:5061;branch=z9hG4bKx;received=1.2.3.4")
    assert (v.transport, v.host, v.port, v.branch) == ("TCP", "[2001:db8::1]", 5061, "z9hG4bKx")
    with pytest.raises(ParseError):
        parse_via("SIP/2.0/UDP host:99999;branch=z9hG4bK")
    na = parse_name_addr('"Bob \\"B\\" <x>" <sip:bob@h;transport=tcp>;tag=99;foo')
    assert na.uri == "sip:bob@h;transport=tcp" and na.tag == "99" and na.param("foo") == ""
    assert na.format(tag="new") == '"Bob \\"B\\" <x>" <sip:bob@h;transport=tcp>;foo;tag=new'
    assert parse_name_addr("sip:bob@h;tag=1").uri == "sip:bob@h"
    u = parse_uri("sip:+1555@Example.COM:5070;user=phone?X=y")
    assert (u.user, u.host, u.port, u.param("user")) == ("+1555", "example.com", 5070, "phone")
    assert parse_uri("tel:+15551234567;phone-context=x").user == "+15551234567"
    assert parse_cseq(" 4294967295   BYE ") == (4294967295, "BYE")
    for bad in ("4294967296 BYE", "1", "x BYE", "1 2 3"):
        with pytest.raises(ParseError):
            parse_cseq(bad)


def test_header_make_pretty_names() -> None:
    assert Header.make("call-id", "x").raw == "Call-ID: x"
    assert Header.make("cseq", "1 INVITE").raw == "CSeq: 1 INVITE"
    assert Header.make("p-asserted-identity", "<sip:a@b>").raw == "P-Asserted-Identity: <sip:a@b>"


# --- TCP framing --------------------------------------------------------------------------------------------------

MSG1 = invite()
MSG2 = invite("X-Second: yes", body=b"")


def test_frame_two_messages_in_one_buffer() -> None:
    buf = bytearray(MSG1 + MSG2)
    assert frame_stream(buf, 65536) == [MSG1, MSG2]
    assert buf == bytearray()


def test_frame_message_split_across_reads() -> None:
    buf = bytearray()
    got: list[bytes] = []
    data = MSG1 + MSG2
    for cut in range(0, len(data), 7):
        buf += data[cut : cut + 7]
        got += frame_stream(buf, 65536)
    assert got == [MSG1, MSG2]
    assert not buf


def test_frame_split_inside_body_waits() -> None:
    buf = bytearray(MSG1[:-10])
    assert frame_stream(buf, 65536) == []
    assert bytes(buf) == MSG1[:-10]
    buf += MSG1[-10:]
    assert frame_stream(buf, 65536) == [MSG1]


def test_frame_keepalive_crlfs_skipped() -> None:
    buf = bytearray(b"\r\n\r\n" + MSG1 + b"\r\n" + MSG2 + b"\r\n\r\n")
    assert frame_stream(buf, 65536) == [MSG1, MSG2]
    assert buf == bytearray()


def test_frame_compact_content_length() -> None:
    msg = MSG1.replace(b"Content-Length:", b"l:")
    buf = bytearray(msg + MSG2)
    assert frame_stream(buf, 65536) == [msg, MSG2]


def test_frame_missing_content_length_is_error() -> None:
    msg = invite(body=b"").replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(ParseError):
        frame_stream(bytearray(msg), 65536)


def test_frame_garbage_content_length_is_error() -> None:
    with pytest.raises(ParseError):
        frame_stream(bytearray(invite(cl="ten", body=b"")), 65536)


def test_frame_size_limits() -> None:
    with pytest.raises(ParseError):
        frame_stream(bytearray(MSG1), len(MSG1) - 1)
    with pytest.raises(ParseError):
        frame_stream(bytearray(b"INVITE sip:x@h SIP/2.0\r\nX: " + b"a" * 200), 100)
    assert frame_stream(bytearray(MSG1), len(MSG1)) == [MSG1]


def test_skeletons_share_no_header_they_are_given() -> None:
    req = parse(b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK1\r\n"
                b"From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n"
                b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(req, Request)
    one, two = req.skeleton(), req.skeleton()
    assert (one.method, one.cseq, one.headers) == ("INVITE", (1, "INVITE"), [])
    one.add_header("X-Probe", "1")
    assert one.header("x-probe") == "1" and two.headers == [] and req.skeleton().headers == []
