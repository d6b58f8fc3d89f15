"""asyncio adapters around the sans-I/O engine: sockets in, sockets out, one timer handle. Nothing else.

UDP datagrams and TCP messages (framed by Content-Length) go to `Engine.receive`; whatever the engine put in its
outbox is sent at once; one `call_at` handle tracks the engine's earliest deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import cast

import structlog

from proxy.engine import Engine
from proxy.metrics import Metrics
from proxy.rxqueue import ReceiveQueue
from proxy.sip.message import ParseError, frame_stream
from proxy.sip.transaction import Target
from proxy.stir.certs import CertEntry

__all__ = ["SipServer"]

log = structlog.get_logger("stirgate.transport", component="transport")

#: Timers are coalesced to this resolution: one wake-up per 10 ms at most, whatever the call rate.
TIMER_RESOLUTION = 0.01
#: The UDP receive queues are sampled every this many messages (and every 100 ms): an overload fills them
#: within tens of milliseconds, and one getsockopt per 64 datagrams costs nothing measurable.
QUEUE_SAMPLE_EVERY = 64


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_message(data, ("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))


class _TcpConnection(asyncio.Protocol):
    def __init__(self, server: SipServer, peer: tuple[str, int] | None = None) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.pending: list[bytes] = []
        self.last_activity = server.loop.time()
        self.inbound = peer is None  # accepted (counted against the source's cap), not dialled out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        peer = transport.get_extra_info("peername")
        if not peer:  # reset before we even saw it
            self.inbound = False
            self.transport.abort()
            return
        self.peer = (peer[0], peer[1])
        server = self.server
        if self.inbound:
            count = server.tcp_per_source.get(peer[0], 0)
            if count >= server.protection.tcp_max_connections_per_source:
                server.engine.stats["tcp_refused"] += 1
                self.inbound = False  # not counted
                self.transport.abort()
                return
            server.tcp_per_source[peer[0]] = count + 1
        server.tcp_connections[self.peer] = self
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.server.loop.time()
        self.buffer += data
        try:
            messages = frame_stream(self.buffer, self.server.max_tcp_message)
        except ParseError as exc:
            log.info("tcp_framing_error", peer=self.peer, error=str(exc))
            self.server.engine.stats["unparseable"] += 1
            if self.transport is not None:
                self.transport.close()
            return
        assert self.peer is not None
        source: Target = ("tcp", self.peer[0], self.peer[1])
        for msg in messages:
            self.server.on_message(msg, source)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self.peer is not None and server.tcp_connections.get(self.peer) is self:
            del server.tcp_connections[self.peer]
        if self.inbound and self.peer is not None:
            left = server.tcp_per_source.get(self.peer[0], 1) - 1
            if left > 0:
                server.tcp_per_source[self.peer[0]] = left
            else:
                server.tcp_per_source.pop(self.peer[0], None)
            self.inbound = False
        self.transport = None

    def send(self, data: bytes) -> None:
        self.last_activity = self.server.loop.time()
        if self.transport is not None:
            self.transport.write(data)
        else:
            self.pending.append(data)


class SipServer:
    """Binds the configured addresses and pumps bytes between them and one Engine."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, max_tcp_message: int = 65536) -> None:
        self.engine = engine
        self.loop = loop
        self.protection = engine.config.protection
        self.tcp_per_source: dict[str, int] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.max_tcp_message = max_tcp_message
        self.udp: asyncio.DatagramTransport | None = None
        self.udp_private: asyncio.DatagramTransport | None = None
        self.tcp_servers: list[asyncio.Server] = []
        self.tcp_connections: dict[tuple[str, int], _TcpConnection] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.on_idle: Callable[[], None] | None = None
        self.metrics: Metrics | None = None
        #: The kernel receive queues of the UDP sockets (an overload signal, and where drops are counted).
        self.queues: list[ReceiveQueue] = []
        self._until_sample = QUEUE_SAMPLE_EVERY

    async def start(self, listens: list[tuple[str, str, int]], reuse_port: bool,
                    private_udp: tuple[str, int] | None = None) -> None:
        self.sync_wall_clock()
        for transport, host, port in listens:
            if transport == "udp":
                sock = _udp_socket(host, port, reuse_port, self.engine.config.sip.udp_recv_buffer)
                udp, _ = await self.loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=sock)
                self.udp = udp
                self.queues.append(ReceiveQueue(sock))
            else:
                server = await self.loop.create_server(lambda: _TcpConnection(self), host, port,
                                                       reuse_port=reuse_port, reuse_address=True, backlog=1024)
                self.tcp_servers.append(server)
        if private_udp is not None:
            sock = _udp_socket(private_udp[0], private_udp[1], False, self.engine.config.sip.udp_recv_buffer)
            udp, _ = await self.loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=sock)
            self.udp_private = udp
            self.queues.append(ReceiveQueue(sock))
        self._housekeeping = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        """Every 100 ms: measure event-loop lag (an overload signal) and, every second, close TCP connections
        idle too long or stuck on a partial message (slowloris)."""
        tick = 0.1
        ticks = 0
        expected = self.loop.time() + tick
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            self.engine.loop_lag = max(0.0, now - expected)
            expected = now + tick
            self.sample_queues()
            ticks += 1
            if ticks % 10 == 0:
                self._sweep_tcp(now)

    def _sweep_tcp(self, now: float) -> None:
        p = self.protection
        for conn in list(self.tcp_connections.values()):
            if conn.transport is None:
                continue
            quiet = now - conn.last_activity
            if quiet > p.tcp_idle_timeout or (conn.buffer.strip(b"\r\n") and quiet > p.tcp_message_timeout):
                self.engine.stats["tcp_timeouts"] += 1
                conn.transport.abort()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for t in (self.udp, self.udp_private):
            if t is not None:
                t.close()
        for server in self.tcp_servers:
            server.close()
        for conn in list(self.tcp_connections.values()):
            if conn.transport is not None:
                conn.transport.close()

    def sample_queues(self) -> None:
        """The fullest UDP receive queue, as the engine's overload signal."""
        self._until_sample = QUEUE_SAMPLE_EVERY
        fill = 0.0
        drops = 0
        for q in self.queues:
            f = q.sample()
            if f > fill:
                fill = f
            drops += q.drops
        self.engine.receive_queue = fill
        self.engine.receive_drops = drops

    # --- the pump ---------------------------------------------------------------------------------------------
    def on_message(self, data: bytes, source: Target) -> None:
        self._until_sample -= 1
        if self._until_sample <= 0:
            self.sample_queues()
        t0 = time.perf_counter() if data.startswith(b"INVITE ") else 0.0
        try:
            self.engine.receive(data, source, self.loop.time())
        except Exception:
            log.exception("engine_error", source=source)
        forwarded = t0 > 0.0 and any(d.startswith(b"INVITE ") for d, _ in self.engine.outbox)
        self.flush()
        if forwarded and self.metrics is not None:
            self.metrics.observe_forward_delay(time.perf_counter() - t0)

    async def _fetch_certs(self, call_id: str, values: list[str]) -> None:
        """Fetch a waiting call's x5u certificates off the SIP path, then let the engine carry on."""
        verifier = self.engine.auth.verifier
        fetched: dict[str, CertEntry] = {}
        started = time.perf_counter()
        if verifier is not None:
            try:
                fetched = await asyncio.wait_for(verifier.prepare(values), timeout=self.engine.auth.wait_timeout)
                if self.metrics is not None:
                    self.metrics.observe_x5u_fetch(time.perf_counter() - started)
            except TimeoutError:
                log.info("x5u_fetch_timeout", call_id=call_id)
            except Exception:
                log.exception("x5u_fetch_error", call_id=call_id)
        # The entries go along with the call: a certificate served as uncacheable (no-store) is still good for it.
        self.engine.resume(call_id, self.loop.time(), fetched)
        forwarded = any(d.startswith(b"INVITE ") for d, _ in self.engine.outbox)
        self.flush()
        if forwarded and self.metrics is not None:
            self.metrics.observe_forward_delay(time.perf_counter() - started)

    def sync_wall_clock(self) -> None:
        self.engine.wall_offset = time.time() - self.loop.time()

    def on_timer(self) -> None:
        self._timer = None
        self.sync_wall_clock()
        try:
            self.engine.handle_timer(self.loop.time())
        except Exception:
            log.exception("timer_error")
        self.flush()

    def flush(self) -> None:
        if self.engine.fetch_requests:
            for call_id, values in self.engine.fetch_requests:
                self.loop.create_task(self._fetch_certs(call_id, values))
            self.engine.fetch_requests.clear()
        outbox = self.engine.outbox
        if outbox:
            udp = self.udp
            private = self.udp_private
            for data, target in outbox:
                transport, host, port = target
                if transport == "udp":
                    # Requests leave from this worker's own port (so answers come back to it); responses from
                    # the shared port the request arrived on.
                    sock = private if private is not None and not data.startswith(b"SIP/2.0 ") else udp
                    if sock is not None:
                        sock.sendto(data, (host, port))
                else:
                    self._send_tcp(data, host, port)
            outbox.clear()
        if self.on_idle is not None:
            self.on_idle()
        # No timer can be due before the armed one when even the earliest entry (cancelled or not) is not
        # earlier: the common case, decided without looking for the earliest live timer.
        earliest = self.engine.earliest_deadline()
        if earliest is None or (self._timer is not None and earliest + TIMER_RESOLUTION >= self._timer_at):
            return
        deadline = self.engine.next_deadline()
        if deadline is None:
            return
        # Re-arm only for a firing time clearly earlier than the armed one. (Comparing the deadline itself
        # re-armed on every message once a deadline was due, pushing the timer 10 ms on each time: under
        # steady traffic no timer fired at all.)
        at = max(deadline, self.loop.time()) + TIMER_RESOLUTION
        if self._timer is None or at < self._timer_at - TIMER_RESOLUTION:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self.on_timer)

    def _send_tcp(self, data: bytes, host: str, port: int) -> None:
        conn = self.tcp_connections.get((host, port))
        if conn is None:
            conn = _TcpConnection(self, (host, port))
            self.tcp_connections[(host, port)] = conn
            conn.pending.append(data)
            self.loop.create_task(self._connect(conn, host, port))
            return
        conn.send(data)

    async def _connect(self, conn: _TcpConnection, host: str, port: int) -> None:
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: conn, host, port), timeout=5.0)
        except (TimeoutError, OSError) as exc:
            log.info("tcp_connect_failed", host=host, port=port, error=str(exc))
            if self.tcp_connections.get((host, port)) is conn:
                del self.tcp_connections[(host, port)]


def _udp_socket(host: str, port: int, reuse_port: bool, recv_buffer: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # No SO_REUSEADDR: on UDP it would let a second process bind the same port and silently take its traffic.
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # A moderate receive buffer: bursts and scheduling gaps are absorbed (at 3,000 calls/s a 512 KB buffer, ~250
    # datagrams at the kernel's per-datagram charge, overflowed whenever SIPp held both cores for ~20 ms), but an
    # overload shows up as drops (which SIP retransmits) instead of seconds of stale messages queued in the kernel.
    for opt, size in ((socket.SO_RCVBUF, recv_buffer), (socket.SO_SNDBUF, 4 * 1024 * 1024)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
