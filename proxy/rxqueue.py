"""How full a UDP socket's kernel receive queue is, and how many datagrams the kernel dropped there.

Why: under overload the event loop barely lags (it reads a few dozen datagrams per turn and goes on), but the
socket's queue fills, and once it is full the kernel drops every trunk's datagrams alike. The fill level is the
earliest overload signal there is, and the drop count says whether the socket is the bottleneck. Linux only
(`SO_MEMINFO`, 4.6+); elsewhere `sample` reports an empty queue and no drops.
"""

from __future__ import annotations

import socket
import struct
import sys

__all__ = ["ReceiveQueue"]

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
# struct sock meminfo: rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops
_MEMINFO = struct.Struct("9I")


class ReceiveQueue:
    """One socket's receive queue: `sample()` -> (share of the receive buffer in use, datagrams dropped)."""

    __slots__ = ("_sock", "drops", "fill", "supported")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.supported = sys.platform.startswith("linux")
        self.fill = 0.0
        self.drops = 0

    def sample(self) -> float:
        """Read the kernel's counters once; the share of the receive buffer in use (0..1)."""
        if not self.supported or self._sock.fileno() < 0:
            return 0.0
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
        except OSError:
            self.supported = False
            return 0.0
        rmem, rcvbuf, _w, _s, _f, _q, _o, _b, drops = _MEMINFO.unpack(raw)
        self.fill = rmem / rcvbuf if rcvbuf else 0.0
        self.drops = drops
        return self.fill
