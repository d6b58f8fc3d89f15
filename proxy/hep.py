"""HEPv3 (Homer Encapsulation Protocol) encoding: one SIP message and its addresses -> one HEP packet. Pure.

A packet is "HEP3", its total length (u16), then chunks: vendor id (u16, 0 = generic), type (u16), length
(u16, the 6-byte chunk header included), value. The chunks are written in the order the fixed-layout readers
expect (sngrep 1.x reads the generic chunks at fixed offsets, then the addresses, the auth key and the payload);
the correlation id comes last, after the payload, where such readers ignore it and chunk-walking ones (Homer's
heplify-server, Kamailio sipcapture) find it.

    type  1 IP family (u8: 2 AF_INET, 10 AF_INET6)     type  2 IP protocol (u8: 17 UDP, 6 TCP)
    type  7 source port (u16)                           type  8 destination port (u16)
    type  9 timestamp seconds (u32)                     type 10 timestamp microseconds (u32)
    type 11 protocol type (u8: 1 SIP)                   type 12 capture agent id (u32)
    type 3/4 IPv4 source/destination (4 bytes)          type 5/6 IPv6 source/destination (16 bytes)
    type 14 auth key                                    type 15 payload (the SIP message as sent/received)
    type 17 correlation id (stirgate: the A-leg Call-ID, so both legs of a call show as one)
"""

from __future__ import annotations

import socket
import struct
from typing import Final

__all__ = ["IPPROTO_TCP", "IPPROTO_UDP", "MAX_PACKET", "HepEncoder"]

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
#: The length field is 16 bits: a packet (headers included) cannot be longer.
MAX_PACKET: Final = 0xFFFF

_AF_INET: Final = 2
_AF_INET6: Final = 10
_PROTO_SIP: Final = 1

# "HEP3" + total length, then the port and time chunks (family and protocol go in between, cached).
_START = struct.Struct("!4sH")
_PORTS_TIME = struct.Struct("!HHHH HHHH HHHI HHHI")
_CHUNK_HEAD = struct.Struct("!HHH")


def _chunk(kind: int, value: bytes) -> bytes:
    return _CHUNK_HEAD.pack(0, kind, 6 + len(value)) + value


class HepEncoder:
    """Encodes packets for one capture agent (its id and auth key). What depends only on the two addresses and
    the protocol is built once per address pair and reused (peers repeat): per message, two packs and a join."""

    __slots__ = ("_after_time", "_auth", "_pairs")

    def __init__(self, capture_id: int, auth_key: bytes | None = None) -> None:
        self._after_time = _chunk(11, bytes([_PROTO_SIP])) + _chunk(12, struct.pack("!I", capture_id))
        self._auth = _chunk(14, auth_key) if auth_key else b""
        #: (IP protocol, source IP, destination IP) -> (family and protocol chunks, the chunks from the protocol
        #: type through the auth key), or None when the pair cannot be encoded.
        self._pairs: dict[tuple[int, str, str], tuple[bytes, bytes] | None] = {}

    def _pair(self, ip_proto: int, src_host: str, dst_host: str) -> tuple[bytes, bytes] | None:
        try:
            family, src = _address(src_host)
            dst_family, dst = _address(dst_host)
        except OSError:
            return None
        if dst_family != family:
            return None
        v6 = family == _AF_INET6
        middle = b"".join((self._after_time, _chunk(5 if v6 else 3, src), _chunk(6 if v6 else 4, dst), self._auth))
        return _chunk(1, bytes([family])) + _chunk(2, bytes([ip_proto])), middle

    def encode(self, payload: bytes, ip_proto: int, src_host: str, src_port: int, dst_host: str, dst_port: int,
               seconds: int, micros: int, correlation: bytes = b"") -> bytes | None:
        """One HEPv3 packet, or None when it would exceed 65535 bytes (or an address is not an IP literal)."""
        key = (ip_proto, src_host, dst_host)
        pair = self._pairs.get(key)
        if pair is None:
            if key in self._pairs:
                return None
            pair = self._pair(ip_proto, src_host, dst_host)
            if len(self._pairs) >= 4096:
                self._pairs.clear()
            self._pairs[key] = pair
            if pair is None:
                return None
        fp, middle = pair
        n = len(payload)
        c = len(correlation)
        total = 6 + len(fp) + _PORTS_TIME.size + len(middle) + 6 + n + (6 + c if c else 0)
        if total > MAX_PACKET:
            return None
        return b"".join((
            _START.pack(b"HEP3", total),
            fp,
            _PORTS_TIME.pack(0, 7, 8, src_port, 0, 8, 8, dst_port, 0, 9, 10, seconds, 0, 10, 10, micros),
            middle,
            _CHUNK_HEAD.pack(0, 15, 6 + n),
            payload,
            _CHUNK_HEAD.pack(0, 17, 6 + c) + correlation if c else b"",
        ))


def _address(host: str) -> tuple[int, bytes]:
    if ":" in host:
        return _AF_INET6, socket.inet_pton(socket.AF_INET6, host)
    return _AF_INET, socket.inet_pton(socket.AF_INET, host)
