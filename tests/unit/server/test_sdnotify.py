"""sd_notify without a library: what systemd reads from NOTIFY_SOCKET, and silence when there is none."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from proxy.sdnotify import Notifier


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_ready_is_one_datagram_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with _receiver(str(path)) as rx:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.active and notifier.ready("listening on udp:127.0.0.1:5060")
        assert rx.recv(4096) == b"READY=1\nSTATUS=listening on udp:127.0.0.1:5060"
        assert notifier.reloading()
        fields = dict(line.split("=", 1) for line in rx.recv(4096).decode().splitlines())
        assert fields["RELOADING"] == "1" and int(fields["MONOTONIC_USEC"]) > 0
        assert notifier.stopping("draining")
        assert rx.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def test_abstract_socket_address() -> None:
    name = f"stirgate-test-{os.getpid()}"
    with _receiver("\0" + name) as rx:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert rx.recv(4096) == b"READY=1"


def test_outside_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).active
    assert not Notifier({}).ready("x")
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready("x")  # systemd went away
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).active  # not a kind stirgate speaks
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "x.sock")}, enabled=False).active  # a worker
