"""HEP capture: a HEPv3 copy of every SIP message to Homer or sngrep, never in the way of the calls.

The transport hands over the bytes it already has (as received, or as sent; TLS as the decrypted SIP) with the
addresses; this module finds the call's correlation id, encodes (`proxy.hep`) and sends without waiting:

- UDP: one datagram per message on a connected, non-blocking socket. A full socket buffer drops the copy
  (counted); a capture server that is down answers with ICMP port-unreachable, which the connected socket
  reports on the next send: copies are then not even built for `hold_off` seconds (counted as dropped).
- TCP: copies wait as pieces (head, message, correlation chunk), joined and written when they hold
  `TCP_FLUSH_BYTES` (in the loop turn that filled them) or `TCP_FLUSH` seconds after the first one, whichever
  comes first: one syscall for many messages, and under load no wake-up of its own (an idle event loop woken
  100 times a second by a 10 ms flush timer cost more than the copies: HEP over TCP added +69 us per call at
  1000 calls/s, 2026-12-06); while the server is unreachable, or more than `max_queue_bytes` wait, copies are
  dropped (counted), and the connection is retried in the background with a growing delay.

Correlation id: the A-leg Call-ID for both legs, so the capture server shows the two legs as one call. A
received message's Call-ID is the one the engine parsed; a sent message's comes from its sender (the engine
notes who made each message it sends, `TransactionLayer.senders`): a call knows its A-leg, a transaction its
request's Call-ID. Only a message without a known sender has its Call-ID found in the bytes (one `find` for the
usual spelling, a regex for the rest). A Call-ID without the engine's B-leg prefix is its own answer; a
B-leg Call-ID is mapped to its A-leg through the engine's own call table, and remembered (a bounded
two-generation map, refreshed when a call ends) so the messages of a call that just ended still correlate.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Mapping
from typing import Final

import structlog

from proxy.b2bua import Call
from proxy.config import HepSettings
from proxy.hep import HepEncoder
from proxy.tracebacks import forget_frames

__all__ = ["HepSender", "call_id_of"]

log = structlog.get_logger("stirgate.transport", component="transport")

#: TCP copies wait at most this long (seconds) ...
TCP_FLUSH: Final = 0.1
#: ... or until this many bytes wait (at 1000 calls/s, ~8 kB of copies per call: a write every ~30 calls).
TCP_FLUSH_BYTES: Final = 256 * 1024
#: Entries per generation of the B-leg -> A-leg map (two generations kept).
CORRELATION_GENERATION: Final = 65536

_CALL_ID_RE = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id_of(data: bytes) -> bytes:
    """The Call-ID of a SIP message, from its bytes (b"" if none): found, not parsed; in the head only (a
    sipfrag body can hold a Call-ID of its own)."""
    i = data.find(b"\nCall-ID:")
    # The usual spelling, before the end of the head (a message that ends with its head has no body to look at:
    # seeking the blank line through the many line ends costs more than the rest).
    if i >= 0 and (data.endswith(b"\r\n\r\n") or data.find(b"\r\n\r\n", 0, i) < 0):
        j = data.find(b"\r", i + 9)
        if j < 0:
            j = len(data)
        i += 9
        while i < j and (data[i] == 32 or data[i] == 9):  # (indexing, unlike strip(), is no method call)
            i += 1
        while j > i and (data[j - 1] == 32 or data[j - 1] == 9):
            j -= 1
        return data[i:j]
    end = data.find(b"\r\n\r\n")
    m = _CALL_ID_RE.search(data, 0, end if end >= 0 else len(data))
    return m.group(1).strip() if m else b""


class _TcpLink(asyncio.Protocol):
    def __init__(self, sender: HepSender) -> None:
        self.sender = sender

    def connection_lost(self, exc: Exception | None) -> None:
        self.sender._lost()


class HepSender:
    """Encodes and sends HEPv3 copies; `sent`, `dropped` and `oversize` count what happened to them."""

    def __init__(self, settings: HepSettings, loop: asyncio.AbstractEventLoop, hold_off: float = 1.0,
                 b_leg_prefix: bytes = b"") -> None:
        self.settings = settings
        self.loop = loop
        self.hold_off = hold_off
        self.encoder = HepEncoder(settings.capture_id, settings.auth_key.encode() if settings.auth_key else None)
        self.address = settings.host_port
        #: What the engine's B-leg Call-IDs start with (b"": unknown, every Call-ID is looked up).
        self.b_leg_prefix = b_leg_prefix
        #: TCP: a copy is appended to a buffer (cheap, may be made at once); UDP: a datagram of its own.
        self.buffered = settings.transport != "udp"
        self.sent = 0
        self.dropped = 0
        self.oversize = 0
        self._down_until = 0.0
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Transport | None = None
        #: The TCP copies waiting to be written, as pieces (head, message, correlation chunk), joined at the write:
        #: one copy of each byte, where appending to a growing buffer copied and reallocated as it went.
        self._pieces: list[bytes] = []
        self._buffered_bytes = 0
        self._buffered = 0
        #: How many bytes the buffer may hold (see `_set_room`).
        self._room = settings.max_queue_bytes
        #: A full buffer is written at once; below a small max_queue_bytes, at half of it (copies beyond the
        #: queue limit are dropped, and must not be while a write is merely waiting for its timer).
        self._flush_bytes = min(TCP_FLUSH_BYTES, settings.max_queue_bytes // 2)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closed = False
        self._corr: dict[bytes, bytes] = {}
        self._corr_old: dict[bytes, bytes] = {}

    # --- life cycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        host, port = self.address
        if self.settings.transport == "udp":
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
            except OSError:
                pass
            sock.connect((host, port))  # UDP: no packet sent; only makes ICMP errors visible to us
            self._udp = sock
        else:
            self._connector = self.loop.create_task(self._connect_loop())

    def close(self) -> None:
        self._closed = True
        self.flush()  # what waits for its timer (it cancels the timer)
        if self._connector is not None:
            self._connector.cancel()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    async def _connect_loop(self) -> None:
        host, port = self.address
        delay = 0.5
        while not self._closed:
            if self._tcp is None:
                try:
                    transport, _ = await asyncio.wait_for(
                        self.loop.create_connection(lambda: _TcpLink(self), host, port), timeout=5.0)
                    self._tcp = transport
                    self._set_room(transport)
                    delay = 0.5
                    log.info("hep_connected", address=f"{host}:{port}")
                except (OSError, TimeoutError) as exc:
                    log.debug("hep_connect_failed", address=f"{host}:{port}", error=str(exc))
                    forget_frames(exc)  # (a cycle for the GC pass per retry while the capture server is down)
                    delay = min(delay * 2, 10.0)
            await asyncio.sleep(delay)

    @property
    def connected(self) -> bool:
        """TCP: a connection to the capture server is up (copies are being written)."""
        return self._tcp is not None and not self._tcp.is_closing()

    def _lost(self) -> None:
        if self._tcp is not None:
            log.info("hep_disconnected", address=f"{self.address[0]}:{self.address[1]}")
        self._tcp = None

    # --- correlation ------------------------------------------------------------------------------------------------
    def correlation(self, data: bytes, calls: Mapping[str, tuple[Call, int]]) -> bytes:
        """The A-leg Call-ID of the call `data` belongs to (its own Call-ID for A-legs and strays)."""
        return self.correlate(call_id_of(data), calls)

    def received_correlation(self, data: bytes, call_id: str, calls: Mapping[str, tuple[Call, int]]) -> bytes:
        """A received message's correlation: from the Call-ID the engine parsed (`Engine.received_call_id`), or
        from the bytes when it parsed none."""
        return self.correlate(call_id.encode("latin-1"), calls) if call_id else self.correlation(data, calls)

    def sent_correlation(self, data: bytes, sender: object, calls: Mapping[str, tuple[Call, int]]) -> bytes:
        """A sent message's correlation, from who sent it (`TransactionLayer.senders`): a call's A-leg, or the
        Call-ID a transaction noted; from the bytes when the sender is not known."""
        if isinstance(sender, Call):
            return sender.a.call_id.encode("latin-1")
        if isinstance(sender, str) and sender:
            return self.correlate(sender.encode("latin-1"), calls)
        return self.correlation(data, calls)

    def correlate(self, cid: bytes, calls: Mapping[str, tuple[Call, int]]) -> bytes:
        """The A-leg Call-ID of the call whose leg has Call-ID `cid`. A Call-ID without the engine's B-leg prefix
        is its own answer; a B-leg's is looked up once, then remembered."""
        if not cid or not cid.startswith(self.b_leg_prefix):
            return cid
        hit = self._corr.get(cid)
        if hit is not None:
            return hit
        entry = calls.get(cid.decode("latin-1"))
        if entry is None:  # not (or no longer) a call: what we knew of it, else its own Call-ID
            return self._corr_old.get(cid, cid)
        a = cid if entry[1] == 0 else entry[0].a.call_id.encode("latin-1")
        self._remember(cid, a)
        return a

    def call_ended(self, call: Call) -> None:
        """The engine's call-end hook: its B-legs' correlation is remembered afresh, so the messages that come
        after the call left the engine's table (the BYE that ended it, its 200, retransmissions) still get the
        A-leg's Call-ID, however long the call lasted."""
        a = call.a.call_id.encode("latin-1")
        for leg in call.tried_legs:
            self._remember(leg.call_id.encode("latin-1"), a)

    def _remember(self, b: bytes, a: bytes) -> None:
        if len(self._corr) >= CORRELATION_GENERATION:
            self._corr_old = self._corr
            self._corr = {}
        self._corr[b] = a

    # --- sending ------------------------------------------------------------------------------------------------------
    def capture(self, data: bytes, ip_proto: int, src_host: str, src_port: int, dst_host: str, dst_port: int,
                correlation: bytes, now: float = 0.0) -> None:
        """Encode and send one copy (`now`: wall-clock time of the message; 0 = now)."""
        if not now:
            now = time.time()
        if now < self._down_until:
            self.dropped += 1
            return
        seconds = int(now)
        encoder = self.encoder
        tail = encoder.correlation_chunk(correlation)
        head = encoder.head(len(data), ip_proto, src_host, src_port, dst_host, dst_port, seconds,
                            int((now - seconds) * 1_000_000), len(tail))
        if head is None:
            self.oversize += 1
            return
        udp = self._udp
        if udp is not None:
            try:
                udp.send(b"".join((head, data, tail)))
                self.sent += 1
            except BlockingIOError:
                self.dropped += 1
            except OSError:  # ECONNREFUSED (ICMP from a server that is down) and the like
                self.dropped += 1
                self._down_until = now + self.hold_off
            return
        size = self._buffered_bytes + len(head) + len(data) + len(tail)
        if self._tcp is None or size > self._room:
            self.dropped += 1
            return
        pieces = self._pieces
        pieces.append(head)
        pieces.append(data)
        if tail:
            pieces.append(tail)
        self._buffered_bytes = size
        self._buffered += 1
        if size >= self._flush_bytes:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_later(TCP_FLUSH, self.flush)

    def flush(self) -> None:
        """Write the TCP copies that wait (for a full buffer or the timer) now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tcp = self._tcp
        if self._pieces:
            if tcp is not None and not tcp.is_closing():
                tcp.write(b"".join(self._pieces))
                self.sent += self._buffered
            else:
                self.dropped += self._buffered
            self._pieces = []
            self._buffered_bytes = 0
            self._buffered = 0
        self._set_room(tcp)

    def _set_room(self, tcp: asyncio.Transport | None) -> None:
        """What the buffer may hold until the next write: the queue limit less what the transport still holds
        (which only shrinks until then)."""
        self._room = self.settings.max_queue_bytes - (tcp.get_write_buffer_size() if tcp is not None else 0)
