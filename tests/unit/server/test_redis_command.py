"""RESP encoding of the state store's commands: bulk lengths count bytes, not characters."""

from __future__ import annotations

import hiredis

from proxy.redis_state import command


def test_command_is_resp_with_byte_lengths() -> None:
    wire = command("EVALSHA", "ab", "0", "numéro")
    assert wire == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n$7\r\nnum\xc3\xa9ro\r\n"
    # hiredis reads it back as a client would send it (a request is an array of bulk strings, like a reply)
    reader = hiredis.Reader()
    reader.feed(wire)
    assert reader.gets() == [b"EVALSHA", b"ab", b"0", "numéro".encode()]
