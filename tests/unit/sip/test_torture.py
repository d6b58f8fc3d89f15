"""RFC 4475 torture messages, bit-exact, against the parser and the request checks.

Outcome rules (see tests/data/rfc4475/MANIFEST.json):
  "parse"  requests: parse() succeeds and check_request() is None; responses: parse() returns a Response.
  "drop"   parse() raises ParseError, or check_request() rejects the request (any code), or, for a
           response, parse() returns a Response whose status is within 100..699 (nothing can answer it).
  <code>   requests: check_request() returns that code. A ParseError is accepted in place of the code
           only when the code is 400 (the message is too broken to parse, the edge answers 400 from
           what it can read); a VersionError (a ParseError carrying the request) counts as 505.
  layer    "method-policy" entries (405/501) are answered by the engine's method policy, not by
           check_request(); for them check_request() returning None also satisfies the outcome.
  also_ok  further outcomes the RFC explicitly permits (a liberal element); checked the same way.
Nothing may ever raise anything but ParseError.

Round trip (valid messages with "roundtrip": true): with H = the input up to and including the first
CRLFCRLF and B = the body as delimited by Content-Length (the rest of the datagram when absent; octets
beyond it are discarded, RFC 3261 18.3), parse(data).to_bytes() must split into exactly the lines of H
(start line and every header line, folding and spelling included, in order) and exactly B, and
parse(data).body must be B. One addition is allowed: when the input has no Content-Length, the output
may add a single "Content-Length: len(B)" line as the last header line.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("proxy.sip.validate")

from proxy.sip.message import ParseError, Response, parse
from proxy.sip.validate import check_request

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))
ENTRIES = {m["name"]: m for m in MANIFEST["messages"]}
NAMES = sorted(ENTRIES)
ROUNDTRIP = sorted(n for n, m in ENTRIES.items() if m["roundtrip"])


def _data(name: str) -> bytes:
    return (DATA / ENTRIES[name]["file"]).read_bytes()


def observe(data: bytes) -> tuple[str, object]:
    """What the edge would do: ("parse-error", exc) | ("version", exc) | ("response", msg) | ("request", result)."""
    try:
        msg = parse(data)
    except ParseError as exc:
        if type(exc).__name__ == "VersionError":
            return "version", exc
        return "parse-error", exc
    if isinstance(msg, Response):
        return "response", msg
    result = check_request(msg)
    if result is not None:
        code, reason = result
        assert isinstance(code, int) and 300 <= code <= 699, result
        assert isinstance(reason, str) and reason.strip(), result
    return "request", result


def satisfies(expected: object, kind: str, value: object) -> bool:
    if expected == "parse":
        return (kind == "request" and value is None) or kind == "response"
    if expected == "drop":
        if kind == "parse-error":
            return True
        if kind == "request":
            return value is not None
        if kind == "response":
            return 100 <= value.status <= 699  # type: ignore[attr-defined]
        return False
    if expected == "ignore":
        return kind == "parse-error"
    assert isinstance(expected, int)
    if kind == "request":
        return value is not None and value[0] == expected  # type: ignore[index]
    if kind == "parse-error":
        return expected == 400
    if kind == "version":
        return expected == 505
    return False


def describe(kind: str, value: object) -> str:
    if kind == "request":
        return "accepted (check_request None)" if value is None else f"check_request -> {value!r}"
    if kind == "response":
        return f"parsed {value!r}"
    return f"{kind}: {value!r}"


def split_body(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\r\n\r\n") + 4
    head, rest = data[:end], data[end:]
    m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", head)
    return head, rest if m is None else rest[: int(m.group(1))]


def test_manifest_lists_every_file_once() -> None:
    files = sorted(p.name for p in DATA.glob("*.dat"))
    assert len(MANIFEST["messages"]) == len(ENTRIES) == 49
    assert sorted(m["file"] for m in MANIFEST["messages"]) == files


@pytest.mark.parametrize("name", NAMES)
def test_bytes_are_the_archived_bytes(name: str) -> None:
    data = _data(name)
    assert len(data) == ENTRIES[name]["size"]
    assert hashlib.sha256(data).hexdigest() == ENTRIES[name]["sha256"]
    kind = "response" if data.startswith(b"SIP/") else "request"
    assert kind == ENTRIES[name]["kind"]


@pytest.mark.parametrize("name", NAMES)
def test_outcome(name: str) -> None:
    entry = ENTRIES[name]
    kind, value = observe(_data(name))
    wanted = [entry["outcome"], *entry["also_ok"]]
    if entry["layer"] == "method-policy":
        wanted.append("parse")
    assert any(satisfies(w, kind, value) for w in wanted), (
        f"{name} ({entry['section']}): expected {wanted}, got {describe(kind, value)}"
    )


@pytest.mark.parametrize("name", ROUNDTRIP)
def test_roundtrip_keeps_header_lines_and_body(name: str) -> None:
    data = _data(name)
    head, body = split_body(data)
    msg = parse(data)
    assert msg.body == body
    out = msg.to_bytes()
    out_head, out_body = out[: out.index(b"\r\n\r\n") + 4], out[out.index(b"\r\n\r\n") + 4 :]
    in_lines, out_lines = head.split(b"\r\n"), out_head.split(b"\r\n")
    if not re.search(rb"(?im)^(?:content-length|l)[ \t]*:", head) and len(out_lines) == len(in_lines) + 1:
        added = out_lines.pop(-3)  # the line before the final b"", b"" pair
        assert re.fullmatch(rb"Content-Length: *" + str(len(body)).encode(), added), added
    assert out_lines == in_lines
    assert out_body == body


def test_wsinv_fields() -> None:
    msg = parse(_data("wsinv"))
    assert msg.method == "INVITE"  # type: ignore[union-attr]
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"  # type: ignore[union-attr]
    assert msg.header("call-id") == msg.header("i") == "wsinv.ndaksdj@192.0.2.1"
    assert msg.header("MAX-FORWARDS") is not None and msg.header("max-forwards").strip() == "0068"
    assert len(msg.headers_all("via")) == 2  # "Via  :" (folded) and "v:" (two values)
    assert msg.header("s") is not None and msg.header("subject") == msg.header("s")
    assert "newfangled value" in msg.header("NewFangledHeader") and "continued" in msg.header("newfangledheader")
    assert msg.header("m") is not None and "secondparam" in msg.header("contact")


def test_longreq_keeps_all_34_vias_in_order() -> None:
    vias = parse(_data("longreq")).headers_all("via")
    assert len(vias) == 34
    assert "sip33.example.com" in vias[0] and "host.example.com" in vias[-1]


def test_intmeth_method_and_cseq() -> None:
    msg = parse(_data("intmeth"))
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.method == method  # type: ignore[union-attr]
    assert msg.header("cseq").split() == ["139122385", method]


def test_dblreq_processes_only_the_register() -> None:
    msg = parse(_data("dblreq"))
    assert msg.method == "REGISTER" and msg.body == b""  # type: ignore[union-attr]


def test_mpart01_binary_body_is_exact() -> None:
    data = _data("mpart01")
    msg = parse(data)
    assert len(msg.body) == 553 and msg.body == split_body(data)[1]
    assert b"\x30\x82\x01\x52" in msg.body and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_noreason_and_unreason_are_responses() -> None:
    r100 = parse(_data("noreason"))
    assert isinstance(r100, Response) and r100.status == 100 and r100.reason.strip() == ""
    r200 = parse(_data("unreason"))
    assert isinstance(r200, Response) and r200.status == 200 and r200.reason.startswith("= 2**3 * 5**2 ")


@pytest.mark.parametrize("name", ["escnull", "esc01", "semiuri"])
def test_escapes_are_not_decoded(name: str) -> None:
    data = _data(name)
    msg = parse(data)
    start = data.split(b"\r\n", 1)[0].decode()
    assert msg.uri == start.split(" ")[1]  # type: ignore[union-attr]
    if name == "escnull":
        assert "%00" in msg.header("to") and "\x00" not in msg.header("to")
