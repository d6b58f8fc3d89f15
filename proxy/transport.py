"""asyncio adapters around the sans-I/O engine: sockets in, sockets out, one timer handle. Nothing else.

UDP datagrams and stream messages (TCP or TLS, framed by Content-Length) go to `Engine.receive`; whatever the
engine put in its outbox is sent at once; one `call_at` handle tracks the engine's earliest deadline. With a
capture server configured (`hep:`), each message in and out is also handed to `proxy.capture`, after the SIP
sends of the same turn.

Stream connections (TCP and TLS share the code): one per peer address, reused for every message to it; bounded
per source address; closed when idle or stuck on a partial message; CRLFCRLF keep-alive pings (RFC 5626 3.5.1)
on the connections stirgate opens, answered with CRLF on every connection. TLS specifics:
- accepted: the peer's address names its trunk before any handshake (unknown or non-TLS trunks are refused);
  the handshake then runs with that trunk's context (its CA, its certificate for stirgate, mutual TLS with
  `verify_peer`), and with `server_name` the client certificate must carry that name. Never blocking the
  loop: the handshake is asynchronous and cut after `protection.tls_handshake_timeout`.
- dialled: the trunk's context; the peer's certificate must chain to the trunk's CA and name `server_name`
  (default: the destination host). A refused or failed handshake fails the waiting transactions at once
  (`Engine.transport_failed`), so a call moves to the next trunk.
- an accepted connection whose client certificate was verified also carries requests to that peer (RFC 5923
  style): one connection per peer, whichever side opened it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import structlog

from proxy.capture import HepSender
from proxy.config import Trunk, TrunkTlsSettings
from proxy.engine import Engine
from proxy.hep import IPPROTO_TCP, IPPROTO_UDP
from proxy.metrics import Metrics
from proxy.redirect import Outbox
from proxy.redis_state import RedisState
from proxy.rxqueue import ReceiveQueue
from proxy.sip.message import ParseError, frame_stream
from proxy.sip.transaction import Target
from proxy.stir.certs import CertEntry
from proxy.tracebacks import forget_frames

__all__ = ["SipServer", "cert_names_match"]

log = structlog.get_logger("stirgate.transport", component="transport")

#: Timers are coalesced to this resolution: one wake-up per 10 ms at most, whatever the call rate.
TIMER_RESOLUTION = 0.01
#: Seconds to open a TCP connection (the TLS handshake has its own bound on top).
CONNECT_TIMEOUT = 5.0
#: Counters the transport keeps in the engine's stats (exported with the engine's counters).
TRANSPORT_STATS = ("tls_refused", "tls_handshake_failures", "tls_handshake_timeouts", "tls_peer_name_mismatch",
                   "connect_failures", "keepalive_timeouts", "keepalive_unanswered", "hep_sent", "hep_dropped",
                   "hep_oversize")
#: The UDP receive queues are sampled every this many messages (and every 100 ms): an overload fills them
#: within tens of milliseconds, and one getsockopt per 64 datagrams costs nothing measurable.
QUEUE_SAMPLE_EVERY = 64


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer, local: tuple[str, int]) -> None:
        self.server = server
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_message(data, ("udp", addr[0], addr[1]), self.local)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))


class _RedirectUdp(asyncio.DatagramProtocol):
    """A UDP listener in redirect mode: its messages go to the engine's Redirector, its answers leave from it."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.outbox: Outbox = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_redirect_message(data, ("udp", addr[0], addr[1]), self.outbox)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))

    def flush(self) -> None:
        transport = self.transport
        for data, target in self.outbox:
            if transport is not None:
                transport.sendto(data, (target[1], target[2]))
        self.outbox.clear()


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted (`peer` None) or dialled."""

    def __init__(self, server: SipServer, scheme: str, peer: tuple[str, int] | None = None,
                 tls: TrunkTlsSettings | None = None, redirect: bool = False) -> None:
        self.server = server
        self.scheme = scheme
        #: Accepted on a listener in redirect mode: messages go to the Redirector.
        self.redirect = redirect
        #: Accepted TLS: the settings of the trunk its address belongs to (for the client certificate's name).
        self.tls = tls
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.pending: list[bytes] = []
        now = server.loop.time()
        self.last_activity = now
        self.last_received = now
        #: When the ping waiting for an answer went out (0: none waiting), and when the last one did.
        self.ping_sent = 0.0
        self.last_ping = 0.0
        #: The peer answered a ping on this connection (pongs are optional for a trunk peer: RFC 5626 pongs
        #: come from peers that support them; SIPp and some SBCs never send one). Only such a peer's silence
        #: after a ping closes the connection; the kernel's TCP keepalive finds the others dead.
        self.answers_pings = False
        #: An unanswered ping was noted (logged and counted once per connection).
        self.unanswered_noted = False
        self.inbound = peer is None
        #: Counted against its source address's connection cap (accepted ones only).
        self.counted = False
        self.local = server.listen_addrs.get(scheme, ("0.0.0.0", 0))
        #: TLS: the peer's certificate was verified (mutual TLS when accepted).
        self.verified = False
        self.released = False

    @property
    def key(self) -> tuple[str, str, int]:
        assert self.peer is not None
        return (self.scheme, self.peer[0], self.peer[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        peer = t.get_extra_info("peername")
        if not peer:  # reset before we even saw it
            self.release()
            t.abort()
            return
        sock = t.get_extra_info("sockname")
        if sock:
            self.local = (sock[0], sock[1])
        server = self.server
        if not self.inbound:  # dialled: for TLS this comes after a verified handshake
            self.verified = self.scheme == "tls"
            self._established(t)
            return
        self.peer = (peer[0], peer[1])
        tls = self.tls
        if tls is not None:  # accepted TLS, handshake done (counted and started by SipServer._accept_tls)
            if tls.verify_peer and tls.server_name and not cert_names_match(t.get_extra_info("peercert"),
                                                                             tls.server_name):
                server.count("tls_peer_name_mismatch")
                log.info("tls_peer_refused", peer=self.peer, reason="certificate does not name " + tls.server_name)
                self.release()
                t.abort()
                return
            self.verified = tls.verify_peer
            self._established(t)
            return
        if not server.admit(self):
            self.released = True
            t.abort()
            return
        self._established(t)

    def _established(self, t: asyncio.Transport) -> None:
        server = self.server
        self.transport = t
        now = server.loop.time()
        self.last_activity = self.last_received = now
        server.connections[self.key] = self
        if not self.inbound:
            sip = server.engine.config.sip
            tcp_keepalive(t, sip.keepalive_interval, sip.keepalive_timeout)
        if self.verified and self.inbound and self.peer is not None:
            server.verified_peers[self.peer[0]] = self
        for data in self.pending:
            t.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        now = self.server.loop.time()
        self.last_activity = self.last_received = now
        buffer = self.buffer
        buffer += data
        if buffer[:2] == b"\r\n":
            self._keepalives()
        try:
            messages = frame_stream(buffer, self.server.max_tcp_message)
        except ParseError as exc:
            log.info("stream_framing_error", peer=self.peer, transport=self.scheme, error=str(exc))
            self.server.engine.stats["unparseable"] += 1
            if self.transport is not None:
                self.transport.close()
            return
        if not messages:
            return
        assert self.peer is not None
        source: Target = (self.scheme, self.peer[0], self.peer[1])
        for msg in messages:
            if self.redirect:
                self.server.on_redirect_message(msg, source, self.server.redirect_tcp_outbox)
            else:
                self.server.on_message(msg, source, self.local)

    def _keepalives(self) -> None:
        """RFC 5626 3.5.1 at a message boundary: CRLFCRLF is a ping (answered CRLF), a lone CRLF a pong.
        (A ping glued to the end of a message in one read is skipped unanswered by the framing; peers ping
        quiet connections, so it does not happen in practice.)"""
        buffer = self.buffer
        while buffer[:2] == b"\r\n":
            if buffer[:4] == b"\r\n\r\n":
                del buffer[:4]
                if self.transport is not None:
                    self.transport.write(b"\r\n")
            else:
                del buffer[:2]
                if self.ping_sent:
                    self.answers_pings = True  # a pong
        self.ping_sent = 0.0

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.transport = None

    def release(self) -> None:
        """Forget this connection (once): its table entries and its place in its source's cap."""
        if self.released:
            return
        self.released = True
        server = self.server
        if self.peer is not None:
            if server.connections.get(self.key) is self:
                del server.connections[self.key]
            if server.verified_peers.get(self.peer[0]) is self:
                del server.verified_peers[self.peer[0]]
        if self.counted and self.peer is not None:
            left = server.per_source.get(self.peer[0], 1) - 1
            if left > 0:
                server.per_source[self.peer[0]] = left
            else:
                server.per_source.pop(self.peer[0], None)
            self.counted = False

    def send(self, data: bytes) -> None:
        self.last_activity = self.server.loop.time()
        if self.transport is not None:
            self.transport.write(data)
        else:
            self.pending.append(data)


def cert_names_match(cert: Any, name: str) -> bool:
    """Whether a peer certificate (ssl's getpeercert() dict) names `name`: its subjectAltName DNS or IP
    entries (a leading "*." matches one label), or its common name when it has no subjectAltName."""
    if not isinstance(cert, dict):
        return False
    want = name.lower().rstrip(".")
    sans = cert.get("subjectAltName") or ()
    for kind, value in sans:
        v = str(value).lower().rstrip(".")
        if kind == "IP Address" and v == want:
            return True
        if kind == "DNS" and (v == want or (v.startswith("*.") and "." in want and want.split(".", 1)[1] == v[2:])):
            return True
    if sans:
        return False
    for rdn in cert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName" and str(value).lower() == want:
                return True
    return False


class SipServer:
    """Binds the configured addresses and pumps bytes between them and one Engine."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, max_tcp_message: int = 65536) -> None:
        self.engine = engine
        self.loop = loop
        self.protection = engine.config.protection
        #: Accepted stream connections per source address (TCP and TLS together), for the per-source cap.
        self.per_source: dict[str, int] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.max_tcp_message = max_tcp_message
        self.udp: asyncio.DatagramTransport | None = None
        self.udp_private: asyncio.DatagramTransport | None = None
        self.udp_local: tuple[str, int] = ("0.0.0.0", 0)
        self.private_local: tuple[str, int] = ("0.0.0.0", 0)
        self.stream_servers: list[asyncio.Server] = []
        #: TLS listeners are accepted here (the trunk, hence the TLS context, depends on the peer's address).
        self.listen_sockets: list[socket.socket] = []
        self.accept_tasks: list[asyncio.Task[None]] = []
        #: (transport, host, port) -> the connection to or from that peer address.
        self.connections: dict[tuple[str, str, int], _StreamConnection] = {}
        #: Peer IP -> an accepted TLS connection whose client certificate was verified (reused to reach it).
        self.verified_peers: dict[str, _StreamConnection] = {}
        #: First listen address per transport: the local address of a stream connection not yet open.
        self.listen_addrs: dict[str, tuple[str, int]] = {}
        self._contexts: dict[tuple[TrunkTlsSettings, bool], ssl.SSLContext] = {}
        self._contexts_for: object = engine.config
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.on_idle: Callable[[], None] | None = None
        self.metrics: Metrics | None = None
        #: HEP capture (None: off); `_captured` holds received messages until the sends of their turn are out.
        self.capture: HepSender | None = None
        self._captured: list[tuple[bytes, Target, tuple[str, int], bytes, float]] = []
        #: The shared state store (Redis) that waiting calls' state ops go to; None with the memory store.
        self.state: RedisState | None = None
        self.redirect_udp: list[_RedirectUdp] = []
        #: Answers to messages on redirect TCP listeners (sent over their connections, by peer address).
        self.redirect_tcp_outbox: Outbox = []
        #: The kernel receive queues of the UDP sockets (an overload signal, and where drops are counted).
        self.queues: list[ReceiveQueue] = []
        self._until_sample = QUEUE_SAMPLE_EVERY
        stats = engine.stats
        for name in TRANSPORT_STATS:
            stats.setdefault(name, 0)

    def count(self, name: str) -> None:
        stats = self.engine.stats
        stats[name] = stats.get(name, 0) + 1

    async def start(self, listens: list[tuple[str, str, int]], reuse_port: bool,
                    private_udp: tuple[str, int] | None = None,
                    redirect_listens: list[tuple[str, str, int]] | None = None) -> None:
        """Bind `listens` (inline) and `redirect_listens` (every INVITE answered 302/reject by the Redirector)."""
        self.sync_wall_clock()
        for transport, host, port in redirect_listens or ():
            if transport == "udp":
                sock = _udp_socket(host, port, reuse_port, self.engine.config.sip.udp_recv_buffer)
                proto = _RedirectUdp(self)
                await self.loop.create_datagram_endpoint(_returning(proto), sock=sock)
                self.redirect_udp.append(proto)
            elif transport == "tcp":
                server = await self.loop.create_server(partial(_StreamConnection, self, "tcp", redirect=True),
                                                       host, port, reuse_port=reuse_port, reuse_address=True,
                                                       backlog=1024)
                self.stream_servers.append(server)
            else:
                raise OSError(f"redirect listeners take udp or tcp, not {transport}")
        for transport, host, port in listens:
            self.listen_addrs.setdefault(transport, (host, port))
            if transport == "udp":
                sock = _udp_socket(host, port, reuse_port, self.engine.config.sip.udp_recv_buffer)
                local = (host, port)
                udp, _ = await self.loop.create_datagram_endpoint(partial(_UdpProtocol, self, local), sock=sock)
                self.udp = udp
                self.udp_local = local
                self.queues.append(ReceiveQueue(sock))
            elif transport == "tls":
                lsock = _listen_socket(host, port, reuse_port)
                self.listen_sockets.append(lsock)
                self.accept_tasks.append(self.loop.create_task(self._accept_tls_loop(lsock)))
            else:
                server = await self.loop.create_server(partial(_StreamConnection, self, transport), host, port,
                                                       reuse_port=reuse_port, reuse_address=True, backlog=1024)
                self.stream_servers.append(server)
        if private_udp is not None:
            sock = _udp_socket(private_udp[0], private_udp[1], False, self.engine.config.sip.udp_recv_buffer)
            udp, _ = await self.loop.create_datagram_endpoint(partial(_UdpProtocol, self, private_udp), sock=sock)
            self.udp_private = udp
            self.private_local = private_udp
            self.queues.append(ReceiveQueue(sock))
        hep = self.engine.config.hep
        if hep is not None:
            self.capture = HepSender(hep, self.loop, b_leg_prefix=self.engine.b_leg_call_id_prefix.encode())
            self.engine.call_end_hooks.append(self.capture.call_ended)
            self.capture.start()
        self._housekeeping = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        """Every 100 ms: measure event-loop lag (an overload signal) and, every second, sweep the stream
        connections (idle, stuck on a partial message, keep-alives) and publish the capture counters."""
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
                self._sweep_streams(now)
                self.publish_capture_stats()

    def publish_capture_stats(self) -> None:
        capture = self.capture
        if capture is not None:
            stats = self.engine.stats
            stats["hep_sent"] = capture.sent
            stats["hep_dropped"] = capture.dropped
            stats["hep_oversize"] = capture.oversize

    def _sweep_streams(self, now: float) -> None:
        p = self.protection
        sip = self.engine.config.sip
        interval = sip.keepalive_interval
        for conn in list(self.connections.values()):
            t = conn.transport
            if t is None:
                continue
            quiet = now - conn.last_activity
            if quiet > p.tcp_idle_timeout or (conn.buffer.strip(b"\r\n") and quiet > p.tcp_message_timeout):
                self.engine.stats["tcp_timeouts"] += 1
                t.abort()
                continue
            if conn.inbound or interval <= 0:
                continue
            if conn.ping_sent:
                if conn.last_received >= conn.ping_sent:
                    conn.ping_sent = 0.0
                elif now - conn.ping_sent > sip.keepalive_timeout:
                    conn.ping_sent = 0.0
                    if conn.answers_pings:
                        self.count("keepalive_timeouts")
                        log.info("keepalive_timeout", peer=conn.peer, transport=conn.scheme)
                        t.abort()
                        continue
                    if not conn.unanswered_noted:
                        conn.unanswered_noted = True
                        self.count("keepalive_unanswered")
                        log.info("keepalive_unanswered", peer=conn.peer, transport=conn.scheme,
                                 detail="the peer does not answer CRLF pings: its connection is kept, and "
                                        "TCP keepalive probes find it if it dies")
                continue
            if now - max(conn.last_received, conn.last_ping) >= interval:
                t.write(b"\r\n\r\n")
                conn.ping_sent = conn.last_ping = now
                conn.last_activity = now  # a connection kept alive is not idle

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for t in (self.udp, self.udp_private, *(r.transport for r in self.redirect_udp)):
            if t is not None:
                t.close()
        for server in self.stream_servers:
            server.close()
        for task in self.accept_tasks:
            task.cancel()
        for lsock in self.listen_sockets:
            lsock.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self.capture is not None:
            self.capture.close()
            self.publish_capture_stats()

    # --- TLS ----------------------------------------------------------------------------------------------------
    def _context(self, tls: TrunkTlsSettings, server_side: bool) -> ssl.SSLContext:
        """The SSLContext for a trunk's settings, built once (again after a reload: files may have been renewed)."""
        if self._contexts_for is not self.engine.config:
            self._contexts.clear()
            self._contexts_for = self.engine.config
        ctx = self._contexts.get((tls, server_side))
        if ctx is None:
            ctx = tls.server_context() if server_side else tls.client_context()
            self._contexts[(tls, server_side)] = ctx
        return ctx

    def admit(self, conn: _StreamConnection) -> bool:
        """An accepted connection within its source's cap (counted then), or refused."""
        assert conn.peer is not None
        count = self.per_source.get(conn.peer[0], 0)
        if count >= self.protection.tcp_max_connections_per_source:
            self.engine.stats["tcp_refused"] += 1
            return False
        self.per_source[conn.peer[0]] = count + 1
        conn.counted = True
        return True

    async def _accept_tls_loop(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, addr = await self.loop.sock_accept(lsock)
            except OSError as exc:  # e.g. EMFILE: keep listening
                log.warning("tls_accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            self.loop.create_task(self._accept_tls(sock, (addr[0], addr[1])))

    async def _accept_tls(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """One accepted TLS connection: refused before any handshake when its address belongs to no TLS trunk
        or its source is at its cap; else the handshake with that trunk's context, bounded in time.

        (The socket is accepted here rather than by a server protocol and upgraded with start_tls: uvloop may
        deliver the ClientHello to the plain protocol before start_tls takes the transport over.)"""
        trunk = self.engine.router.trunk_for_source(peer[0])
        tls = trunk.tls if trunk is not None and trunk.transport == "tls" else None
        if tls is None:
            self.count("tls_refused")
            log.info("tls_peer_refused", peer=peer, reason="no TLS trunk has this address")
            sock.close()
            return
        conn = _StreamConnection(self, "tls", None, tls)
        conn.peer = peer
        if not self.admit(conn):
            sock.close()
            return
        timeout = self.protection.tls_handshake_timeout
        try:
            ctx = self._context(tls, True)
            await asyncio.wait_for(self.loop.connect_accepted_socket(lambda: conn, sock, ssl=ctx,
                                                                     ssl_handshake_timeout=timeout + 1.0), timeout)
        except TimeoutError as exc:
            self.count("tls_handshake_timeouts")
            log.info("tls_handshake_timeout", peer=peer, side="server")
            conn.release()
            sock.close()
            forget_frames(exc)  # (each failed handshake's chain would be a cycle for the GC pass)
        except (OSError, EOFError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.count("tls_handshake_failures")
            log.info("tls_handshake_failed", peer=peer, side="server", error=str(exc))
            conn.release()
            sock.close()
            forget_frames(exc)

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
    def on_message(self, data: bytes, source: Target, local: tuple[str, int] | None = None) -> None:
        self._until_sample -= 1
        if self._until_sample <= 0:
            self.sample_queues()
        t0 = time.perf_counter() if data.startswith(b"INVITE ") else 0.0
        capture = self.capture
        received_at = time.time() if capture is not None else 0.0
        try:
            self.engine.receive(data, source, self.loop.time())
        except Exception:
            log.exception("engine_error", source=source)
        if capture is not None:
            # After the engine, with the Call-ID it parsed (a call the message ended is remembered by the
            # capture's call-end hook); before the sends of this turn, so the copies keep their order.
            here = local or self.listen_addrs.get(source[0], self.udp_local)
            corr = capture.received_correlation(data, self.engine.received_call_id, self.engine.calls)
            if capture.buffered:  # an append to a buffer: nothing that would hold up the SIP
                capture.capture(data, _ip_proto(source[0]), source[1], source[2],
                                here[0], here[1], corr, received_at)
            else:
                self._captured.append((data, source, here, corr, received_at))
        forwarded = t0 > 0.0 and any(d.startswith(b"INVITE ") for d, _ in self.engine.outbox)
        self.flush()
        if forwarded and self.metrics is not None:
            self.metrics.observe_forward_delay(time.perf_counter() - t0)

    def on_redirect_message(self, data: bytes, source: Target, outbox: Outbox) -> None:
        """A message on a redirect listener: the Redirector answers into the listener's own outbox."""
        try:
            self.engine.redirector.receive(data, source, self.loop.time(), outbox)
        except Exception:
            log.exception("redirect_error", source=source)
        self.flush()

    async def _fetch_certs(self, call_id: str, values: list[str], redirect: bool = False) -> None:
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
        if redirect:
            self.engine.redirector.resume(call_id, self.loop.time(), fetched)
            self.flush()
            return
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
        engine = self.engine
        if (engine.state_requests or engine.state_writes) and self.state is not None:
            for call_id, ops, now in engine.state_requests:
                self.state.submit(call_id, ops, now)
            for ops, now in engine.state_writes:
                self.state.write(ops, now)
            engine.state_requests.clear()
            engine.state_writes.clear()
        redirector = engine.redirector
        if redirector.fetch_requests:
            for call_id, values in redirector.fetch_requests:
                self.loop.create_task(self._fetch_certs(call_id, values, redirect=True))
            redirector.fetch_requests.clear()
        for proto in self.redirect_udp:
            if proto.outbox:
                proto.flush()
        if self.redirect_tcp_outbox:
            for data, (_, host, port) in self.redirect_tcp_outbox:
                self._send_stream("tcp", data, host, port)
            self.redirect_tcp_outbox.clear()
        outbox = self.engine.outbox
        if outbox:
            if self.capture is not None:
                self._send_captured(outbox)
            else:
                udp = self.udp
                private = self.udp_private
                for data, target in outbox:
                    transport, host, port = target
                    if transport == "udp":
                        # Requests leave from this worker's own port (so answers come back to it); responses
                        # from the shared port the request arrived on.
                        sock = private if private is not None and not data.startswith(b"SIP/2.0 ") else udp
                        if sock is not None:
                            sock.sendto(data, (host, port))
                    else:
                        self._send_stream(transport, data, host, port)
            outbox.clear()
        elif self._captured:
            self._send_captured(outbox)
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

    def _send_captured(self, outbox: list[tuple[bytes, Target]]) -> None:
        """The sends of this turn with a HEP copy of each. Over UDP a copy is a datagram of its own: the copies
        go after every SIP send of the turn, received messages' first. Over TCP a copy is an append to a
        buffer, made as each message goes."""
        capture = self.capture
        assert capture is not None
        udp = self.udp
        private = self.udp_private
        buffered = capture.buffered
        now = time.time()
        calls = self.engine.calls
        # Who sent each message (the call, or the Call-ID its transaction noted), aligned with the outbox unless
        # something was queued past the transaction layer: then each copy's Call-ID is found in its bytes.
        senders = self.engine.txns.senders
        known = senders if senders is not None and len(senders) == len(outbox) else None
        sent: list[tuple[bytes, Target, tuple[str, int], bytes]] = []
        for k, (data, target) in enumerate(outbox):
            transport, host, port = target
            if transport == "udp":
                if private is not None and not data.startswith(b"SIP/2.0 "):
                    private.sendto(data, (host, port))
                    local = self.private_local
                elif udp is not None:
                    udp.sendto(data, (host, port))
                    local = self.udp_local
                else:
                    continue
            else:
                local = self._send_stream(transport, data, host, port).local
            corr = capture.sent_correlation(data, known[k] if known is not None else None, calls)
            if buffered:
                capture.capture(data, _ip_proto(transport), local[0], local[1], host, port, corr, now)
            else:
                sent.append((data, target, local, corr))
        if senders:
            senders.clear()
        for data, source, local, corr, at in self._captured:
            capture.capture(data, _ip_proto(source[0]), source[1], source[2], local[0],
                            local[1], corr, at)
        self._captured.clear()
        for data, target, local, corr in sent:
            capture.capture(data, _ip_proto(target[0]), local[0], local[1], target[1], target[2], corr, now)

    # --- stream connections ---------------------------------------------------------------------------------------
    def _send_stream(self, scheme: str, data: bytes, host: str, port: int) -> _StreamConnection:
        conn = self.connections.get((scheme, host, port))
        if conn is None and scheme == "tls":
            conn = self._verified_alias(host, port)
        if conn is None:
            conn = _StreamConnection(self, scheme, (host, port))
            self.connections[(scheme, host, port)] = conn
            conn.pending.append(data)
            self.loop.create_task(self._connect(conn, scheme, host, port))
            return conn
        conn.send(data)
        return conn

    def _verified_alias(self, host: str, port: int) -> _StreamConnection | None:
        """An accepted TLS connection from `host` whose client certificate this trunk's CA verified: the same
        peer, already authenticated, so requests to it reuse that connection (RFC 5923 style)."""
        conn = self.verified_peers.get(host)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return None
        router = self.engine.router
        if router.trunk_for_target(host, port) is not router.trunk_for_source(host):
            return None
        return conn

    async def _connect(self, conn: _StreamConnection, scheme: str, host: str, port: int) -> None:
        ctx: ssl.SSLContext | None = None
        name: str | None = None
        handshake = self.protection.tls_handshake_timeout
        if scheme == "tls":
            trunk: Trunk | None = self.engine.router.trunk_for_target(host, port)
            tls = trunk.tls if trunk is not None else None
            if tls is None:
                self._connect_failed(conn, scheme, host, port, "no TLS trunk for this address", "connect_failures")
                return
            try:
                ctx = self._context(tls, False)
            except (OSError, ValueError) as exc:
                self._connect_failed(conn, scheme, host, port, f"TLS settings unusable: {exc}", "connect_failures")
                return
            name = tls.server_name or host if tls.verify_peer else None
        # From this transport's listen address (the peer knows stirgate by it), unless that is a wildcard.
        listen = self.listen_addrs.get(scheme)
        local = (listen[0], 0) if listen is not None and listen[0] not in ("0.0.0.0", "::") else None
        started = self.loop.time()
        try:
            if ctx is not None:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda: conn, host, port, ssl=ctx, server_hostname=name or host, local_addr=local,
                    ssl_handshake_timeout=handshake), timeout=CONNECT_TIMEOUT + handshake)
            else:
                await asyncio.wait_for(self.loop.create_connection(lambda: conn, host, port, local_addr=local),
                                       timeout=CONNECT_TIMEOUT)
        except ssl.SSLCertVerificationError as exc:
            self._connect_failed(conn, scheme, host, port, f"peer certificate refused: {exc.verify_message}",
                                 "tls_handshake_failures")
            forget_frames(exc)  # (each failed connection's chain would be a cycle for the GC pass)
        except (TimeoutError, OSError, EOFError) as exc:
            slow = ctx is not None and self.loop.time() - started >= handshake
            kind = "tls_handshake_timeouts" if slow else ("tls_handshake_failures" if ctx is not None and
                                                           isinstance(exc, ssl.SSLError) else "connect_failures")
            self._connect_failed(conn, scheme, host, port, str(exc) or type(exc).__name__, kind)
            forget_frames(exc)

    def _connect_failed(self, conn: _StreamConnection, scheme: str, host: str, port: int, why: str,
                        counter: str) -> None:
        self.count(counter)
        log.info("connect_failed", transport=scheme, host=host, port=port, error=why)
        if self.connections.get((scheme, host, port)) is conn:
            del self.connections[(scheme, host, port)]
        conn.pending.clear()
        conn.released = True
        # The transactions waiting on this peer fail now: the call moves on to its next trunk.
        self.engine.transport_failed((scheme, host, port), self.loop.time())
        self.flush()


def _ip_proto(transport: str) -> int:
    """The IP protocol a HEP copy names for a SIP transport ("udp"; "tcp" and "tls" ride on TCP)."""
    return IPPROTO_UDP if transport == "udp" else IPPROTO_TCP


def tcp_keepalive(t: asyncio.Transport, interval: float, timeout: float) -> None:
    """The kernel's TCP keepalive on a connection stirgate dialled, probing after `interval` quiet seconds and
    giving up ~`timeout` later: any TCP stack answers its probes, so a dead peer is found even when the peer
    never answers CRLF pings. Nothing with `interval` 0 (keep-alives off)."""
    sock = t.get_extra_info("socket")
    if sock is None or interval <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(interval)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, round(timeout / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass  # (a platform without these options: the CRLF pings still run)


def _listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _returning(proto: _RedirectUdp) -> Callable[[], _RedirectUdp]:
    return lambda: proto


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
