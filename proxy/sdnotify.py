"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET, no library needed.

Under `Type=notify` systemd starts stirgate's dependants (and `systemctl start` returns) only once it reads
READY=1; STOPPING=1 and RELOADING=1 show in `systemctl status` while a drain or a reload runs. Outside systemd
NOTIFY_SOCKET is unset and every call is a no-op. Only the main process may notify (systemd's default
NotifyAccess=main): with several workers the parent speaks for them (proxy.server).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


def _address(value: str) -> str | None:
    """A filesystem path, or "@name" for the abstract namespace; other kinds (vsock:) are not supported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends state lines to systemd when it asked for them (NOTIFY_SOCKET) and this process may speak."""

    def __init__(self, environ: Mapping[str, str] | None = None, enabled: bool = True) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", "")) if enabled else None

    @property
    def active(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send "KEY=value" fields as one message; False when not under systemd or the socket is gone."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
        except OSError:
            return False  # systemd went away or the socket is not ours to use: readiness is advisory
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC: newer systemd (253+) matches the reload to the time it was asked for.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                         "STATUS=reloading the configuration")
