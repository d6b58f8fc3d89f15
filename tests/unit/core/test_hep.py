"""The HEPv3 encoder, field by field against the layout (HEP3, u16 total, chunks of vendor/type/length/value),
read here with struct directly: nothing from proxy.hep is used to check proxy.hep."""

from __future__ import annotations

import socket
import struct

import pytest

from proxy.hep import IPPROTO_TCP, IPPROTO_UDP, MAX_PACKET, HepEncoder

SIP = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nCall-ID: abc@x\r\nContent-Length: 0\r\n\r\n"


def chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value) of every chunk, checking each length as it goes."""
    assert packet[:4] == b"HEP3"
    (total,) = struct.unpack("!H", packet[4:6])
    assert total == len(packet)
    out = []
    pos = 6
    while pos < total:
        vendor, kind, length = struct.unpack("!HHH", packet[pos : pos + 6])
        assert length >= 6 and pos + length <= total
        out.append((vendor, kind, packet[pos + 6 : pos + length]))
        pos += length
    assert pos == total
    return out


def test_ipv4_udp_packet_field_by_field() -> None:
    enc = HepEncoder(capture_id=2001, auth_key=b"secret")
    p = enc.encode(SIP, IPPROTO_UDP, "127.0.0.10", 5060, "127.0.0.1", 5062, 1_700_000_000, 123_456, b"abc@x")
    assert p is not None
    got = chunks(p)
    assert [(v, k) for v, k, _ in got] == [(0, k) for k in (1, 2, 7, 8, 9, 10, 11, 12, 3, 4, 14, 15, 17)]
    v = {k: val for _, k, val in got}
    assert v[1] == bytes([socket.AF_INET])           # IP family (u8)
    assert v[2] == bytes([17])                       # IP protocol: UDP (u8)
    assert v[7] == struct.pack("!H", 5060)           # source port (u16)
    assert v[8] == struct.pack("!H", 5062)           # destination port (u16)
    assert v[9] == struct.pack("!I", 1_700_000_000)  # seconds (u32)
    assert v[10] == struct.pack("!I", 123_456)       # microseconds (u32)
    assert v[11] == bytes([1])                       # protocol type: SIP (u8)
    assert v[12] == struct.pack("!I", 2001)          # capture agent id (u32)
    assert v[3] == socket.inet_aton("127.0.0.10")    # IPv4 source
    assert v[4] == socket.inet_aton("127.0.0.1")     # IPv4 destination
    assert v[14] == b"secret"                        # auth key
    assert v[15] == SIP                              # the SIP message, byte for byte
    assert v[17] == b"abc@x"                         # correlation id


def test_fixed_layout_offsets_that_sngrep_1_x_reads() -> None:
    """sngrep 1.x reads the generic chunks at fixed offsets (struct hep_generic), then the IPv4 chunks, then the
    payload chunk: the first 80 bytes must be exactly that."""
    p = HepEncoder(9).encode(SIP, IPPROTO_TCP, "10.0.0.1", 1, "10.0.0.2", 2, 3, 4)
    assert p is not None
    assert struct.unpack("!4sH", p[:6]) == (b"HEP3", len(p))
    generic = struct.unpack("!HHHB HHHB HHHH HHHH HHHI HHHI HHHB HHHI", p[6:6 + 67])
    assert generic == (0, 1, 7, 2, 0, 2, 7, 6, 0, 7, 8, 1, 0, 8, 8, 2, 0, 9, 10, 3, 0, 10, 10, 4, 0, 11, 7, 1,
                       0, 12, 10, 9)
    ips = struct.unpack("!HHH4s HHH4s", p[73:93])
    assert ips == (0, 3, 10, socket.inet_aton("10.0.0.1"), 0, 4, 10, socket.inet_aton("10.0.0.2"))
    assert struct.unpack("!HHH", p[93:99]) == (0, 15, 6 + len(SIP))
    assert p[99:] == SIP  # no correlation id given: no chunk 17


def test_ipv6() -> None:
    p = HepEncoder(1).encode(SIP, IPPROTO_UDP, "2001:db8::1", 5060, "::1", 5061, 0, 0, b"c")
    assert p is not None
    v = {k: val for _, k, val in chunks(p)}
    assert v[1] == bytes([10])
    assert v[5] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert v[6] == socket.inet_pton(socket.AF_INET6, "::1")
    assert 3 not in v and 4 not in v


@pytest.mark.parametrize(("src", "dst"), [("127.0.0.1", "::1"), ("not-an-ip", "127.0.0.1")])
def test_addresses_that_cannot_be_encoded(src: str, dst: str) -> None:
    assert HepEncoder(1).encode(SIP, IPPROTO_UDP, src, 1, dst, 2, 0, 0) is None


def test_a_message_too_large_for_the_16_bit_length_is_refused() -> None:
    enc = HepEncoder(1)
    fits = MAX_PACKET - 99  # 99 bytes of headers and chunks around the payload (IPv4, no key, no correlation)
    p = enc.encode(b"x" * fits, IPPROTO_TCP, "10.0.0.1", 1, "10.0.0.2", 2, 0, 0)
    assert p is not None and len(p) == MAX_PACKET
    assert enc.encode(b"x" * (fits + 1), IPPROTO_TCP, "10.0.0.1", 1, "10.0.0.2", 2, 0, 0) is None
