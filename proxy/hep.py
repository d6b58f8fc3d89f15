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
    """Encodes packets for one capture agent (its id and auth key); per-address chunks are cached."""

    __slots__ = ("_addr_cache", "_after_time", "_auth", "_family_proto")

    def __init__(self, capture_id: int, auth_key: bytes | None = None) -> None:
        self._after_time = _chunk(11, bytes([_PROTO_SIP])) + _chunk(12, struct.pack("!I", capture_id))
        self._auth = _chunk(14, auth_key) if auth_key else b""
        #: (family, IP protocol) -> their two chunks.
        self._family_proto: dict[tuple[int, int], bytes] = {}
        #: IP text -> (family, packed address): peers repeat, so inet_pton runs once per address.
        self._addr_cache: dict[str, tuple[int, bytes]] = {}

    def _address(self, host: str) -> tuple[int, bytes]:
        hit = self._addr_cache.get(host)
        if hit is None:
            if ":" in host:
                hit = (_AF_INET6, socket.inet_pton(socket.AF_INET6, host))
            else:
                hit = (_AF_INET, socket.inet_pton(socket.AF_INET, host))
            if len(self._addr_cache) >= 4096:
                self._addr_cache.clear()
            self._addr_cache[host] = hit
        return hit

    def encode(self, payload: bytes, ip_proto: int, src_host: str, src_port: int, dst_host: str, dst_port: int,
               seconds: int, micros: int, correlation: bytes = b"") -> bytes | None:
        """One HEPv3 packet, or None when it would exceed 65535 bytes (or an address is not an IP literal)."""
        try:
            family, src = self._address(src_host)
            dst_family, dst = self._address(dst_host)
        except OSError:
            return None
        if dst_family != family:
            return None
        v6 = family == _AF_INET6
        addrs = _CHUNK_HEAD.pack(0, 5 if v6 else 3, 6 + len(src)) + src + \
            _CHUNK_HEAD.pack(0, 6 if v6 else 4, 6 + len(dst)) + dst
        fp = self._family_proto.get((family, ip_proto))
        if fp is None:
            fp = self._family_proto[(family, ip_proto)] = _chunk(1, bytes([family])) + _chunk(2, bytes([ip_proto]))
        corr = _CHUNK_HEAD.pack(0, 17, 6 + len(correlation)) + correlation if correlation else b""
        auth = self._auth
        after = self._after_time
        total = 6 + len(fp) + _PORTS_TIME.size + len(after) + len(addrs) + len(auth) + 6 + len(payload) + len(corr)
        if total > MAX_PACKET:
            return None
        return b"".join((
            _START.pack(b"HEP3", total),
            fp,
            _PORTS_TIME.pack(0, 7, 8, src_port, 0, 8, 8, dst_port, 0, 9, 10, seconds, 0, 10, 10, micros),
            after,
            addrs,
            auth,
            _CHUNK_HEAD.pack(0, 15, 6 + len(payload)),
            payload,
            corr,
        ))
