"""A receive queue of its own for each trunk peer, on the one listening address everyone already uses.

Why: every trunk sends to the same UDP socket, and once a flood fills that socket's kernel queue the kernel drops
every peer's datagrams alike, whatever the engine decides afterwards (measured: a trunk flooding at 6,000 INVITEs/s
on the shared 2-core machine, 45,000 datagrams dropped in the kernel and 27 of the modest trunk's 360 calls lost
with the flood already refused at the door). Linux delivers a UDP datagram to a socket *connected* to its sender
in preference to the unconnected listening socket (kernel 5.4+, with SO_REUSEPORT), so a connected socket on the
same local address per peer splits the one queue into one per peer, with no change on the peers' side: a flood
then overflows only its own queue, and the event loop reads every ready socket in turn (libuv: up to 32 datagrams
per socket per turn), so a modest trunk's messages wait behind at most one batch of the flood's.

The listening socket is bound without SO_REUSEPORT (so a second process cannot bind the port, see transport);
the flag is set only for the instant a peer socket is bound and cleared again (with several workers it stays set,
as the workers share the port). Peers are learnt from their first datagram (the source port is not known
before), only for addresses a trunk owns, at most `per_host` per address and `limit` in all: bounded.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

__all__ = ["PeerSockets"]


class PeerSockets:
    """The connected sockets opened beside one listening socket, by peer (host, port)."""

    __slots__ = ("_keep_reuseport", "_known", "_main", "_owned", "_per_host", "_recv_buffer", "hosts", "limit",
                 "opened", "sockets")

    def __init__(self, main: socket.socket, owned: Callable[[str], bool], *, limit: int, per_host: int = 4,
                 recv_buffer: int = 0, keep_reuseport: bool = False) -> None:
        self._main = main
        #: Whether an address belongs to a trunk (only trunk peers get a socket of their own).
        self._owned = owned
        self.limit = limit
        self._per_host = per_host
        self._recv_buffer = recv_buffer
        self._keep_reuseport = keep_reuseport
        #: Every (host, port) already decided: given a socket, or not to be given one.
        self._known: set[tuple[str, int]] = set()
        #: Sockets per host address.
        self.hosts: dict[str, int] = {}
        #: The sockets opened so far (their transports close them).
        self.sockets: list[socket.socket] = []
        self.opened = 0

    def wants(self, host: str, port: int) -> bool:
        """True the first time a trunk peer is seen on the listening socket while there is room for it."""
        if self.opened >= self.limit:
            return False
        key = (host, port)
        if key in self._known:
            return False
        self._known.add(key)
        if len(self._known) > 4 * self.limit:
            self._known.clear()  # bounded: strangers seen are forgotten (trunk peers opened stay opened)
        return self._owned(host) and self.hosts.get(host, 0) < self._per_host

    def open(self, host: str, port: int) -> socket.socket | None:
        """A non-blocking socket on the listening address, connected to the peer; None when the kernel refuses."""
        main = self._main
        local = main.getsockname()
        sock = socket.socket(main.family, socket.SOCK_DGRAM)
        # Every socket already on the address must carry SO_REUSEPORT for the kernel to let one more bind.
        group = [main, *self.sockets] if not self._keep_reuseport else []
        try:
            for s in group:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if self._recv_buffer:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
                sock.bind(local[:2])
                sock.connect((host, port))
            finally:
                for s in group:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
                if group:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        self.sockets.append(sock)
        self.opened += 1
        self.hosts[host] = self.hosts.get(host, 0) + 1
        return sock
