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

# Per message: what depends only on the route (protocol, both addresses and ports) is built once and reused
# (peers repeat), so a copy is one struct pack for the chunks before the payload, then the payload and the
# correlation id.
_CHUNK_HEAD = struct.Struct("!HHH")
_PORT = struct.Struct("!HHHH")
_ROUTES_MAX: Final = 4096


def _chunk(kind: int, value: bytes) -> bytes:
    return _CHUNK_HEAD.pack(0, kind, 6 + len(value)) + value


_SECONDS_HEAD: Final = _CHUNK_HEAD.pack(0, 9, 10)
_MICROS_HEAD: Final = _CHUNK_HEAD.pack(0, 10, 10)
_PAYLOAD_TYPE: Final = struct.pack("!HH", 0, 15)


def _head_struct(first_len: int, middle_len: int) -> struct.Struct:
    """A packet's head, packed from 8 values: "HEP3", total length, the route's first chunks (family, protocol,
    ports) with the seconds chunk's header, the seconds, the microseconds chunk's header, the microseconds, the
    chunks from the protocol type through the auth key with the payload chunk's vendor and type, and the
    payload chunk's length. (Fixed headers travel as bytes: a pack costs per value.)"""
    return struct.Struct(f"!4sH{first_len}sI6sI{middle_len}sH")


class HepEncoder:
    """Encodes packets for one capture agent (its id and auth key). What depends only on the route (protocol,
    addresses, ports) is built once per route and reused: per message, one pack, plus the correlation chunk
    (kept for the last correlation id, which the messages of a call share)."""

    __slots__ = ("_after_time", "_auth", "_corr", "_corr_chunk", "_routes")

    def __init__(self, capture_id: int, auth_key: bytes | None = None) -> None:
        self._after_time = _chunk(11, bytes([_PROTO_SIP])) + _chunk(12, struct.pack("!I", capture_id))
        self._auth = _chunk(14, auth_key) if auth_key else b""
        #: (IP protocol, source IP, source port, destination IP, destination port) -> (the head's struct and its
        #: size, the family/protocol/port chunks, the chunks from the protocol type through the auth key), or
        #: None when the route cannot be encoded.
        self._routes: dict[tuple[int, str, int, str, int], tuple[struct.Struct, int, bytes, bytes] | None] = {}
        self._corr = b""
        self._corr_chunk = b""

    def _route(self, ip_proto: int, src_host: str, src_port: int, dst_host: str,
               dst_port: int) -> tuple[struct.Struct, int, bytes, bytes] | None:
        try:
            family, src = _address(src_host)
            dst_family, dst = _address(dst_host)
        except OSError:
            return None
        if dst_family != family:
            return None
        v6 = family == _AF_INET6
        first = b"".join((_chunk(1, bytes([family])), _chunk(2, bytes([ip_proto])),
                          _PORT.pack(0, 7, 8, src_port), _PORT.pack(0, 8, 8, dst_port), _SECONDS_HEAD))
        middle = b"".join((self._after_time, _chunk(5 if v6 else 3, src), _chunk(6 if v6 else 4, dst), self._auth,
                           _PAYLOAD_TYPE))
        st = _head_struct(len(first), len(middle))
        return st, st.size, first, middle

    def head(self, n: int, ip_proto: int, src_host: str, src_port: int, dst_host: str, dst_port: int,
             seconds: int, micros: int, tail: int) -> bytes | None:
        """A packet's bytes before its `n`-byte payload (`tail`: the length of what follows the payload), or None
        when the packet would exceed 65535 bytes or an address is not an IP literal."""
        key = (ip_proto, src_host, src_port, dst_host, dst_port)
        route = self._routes.get(key)
        if route is None:
            if key in self._routes:
                return None
            route = self._route(ip_proto, src_host, src_port, dst_host, dst_port)
            if len(self._routes) >= _ROUTES_MAX:
                self._routes.clear()
            self._routes[key] = route
            if route is None:
                return None
        st, size, first, middle = route
        total = size + n + tail
        if total > MAX_PACKET:
            return None
        return st.pack(b"HEP3", total, first, seconds, _MICROS_HEAD, micros, middle, 6 + n)

    def correlation_chunk(self, correlation: bytes) -> bytes:
        """The chunk that follows the payload (b"" without a correlation id)."""
        if correlation != self._corr:
            self._corr = correlation
            self._corr_chunk = _chunk(17, correlation) if correlation else b""
        return self._corr_chunk

    def encode(self, payload: bytes, ip_proto: int, src_host: str, src_port: int, dst_host: str, dst_port: int,
               seconds: int, micros: int, correlation: bytes = b"") -> bytes | None:
        """One HEPv3 packet, or None when it would exceed 65535 bytes (or an address is not an IP literal)."""
        tail = self.correlation_chunk(correlation)
        head = self.head(len(payload), ip_proto, src_host, src_port, dst_host, dst_port, seconds, micros, len(tail))
        if head is None:
            return None
        return b"".join((head, payload, tail))


def _address(host: str) -> tuple[int, bytes]:
    if ":" in host:
        return _AF_INET6, socket.inet_pton(socket.AF_INET6, host)
    return _AF_INET, socket.inet_pton(socket.AF_INET, host)
