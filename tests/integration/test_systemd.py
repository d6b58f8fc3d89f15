"""stirgate as a systemd service (issue 14): the unit file, and the sd_notify messages it relies on.

systemd is not PID 1 in the test environment, so the unit cannot be started here: `systemd-analyze verify`
checks it (every key known, every command executable), `systemd-analyze security` its hardening, and the
readiness protocol is checked with a NOTIFY_SOCKET of the test's own, which reads each datagram with the
sender's credentials the way systemd does (NotifyAccess=main: only the main process counts).
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.config import SipSettings
from tests.integration import harness
from tests.integration.harness import SIP_PORT, STIRGATE_IP

UNIT = harness.ROOT / "examples" / "systemd" / "stirgate.service"
INSTALLED = "/opt/stirgate/bin/stirgate"  # where README's install section puts the console script


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def local_unit(tmp_path: Path) -> Path:
    """The unit with the console script of the virtualenv under test where README installs it."""
    script = harness.stirgate_command()
    if len(script) != 1:
        pytest.skip("no stirgate console script in this virtualenv (`make venv-test` installs it)")
    path = tmp_path / "stirgate.service"
    path.write_text(UNIT.read_text().replace(INSTALLED, script[0]))
    return path


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; `make test` installs it)")
    return found


def test_unit_file_verifies(systemd_analyze: str, tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    r = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, and prints them: a clean unit prints nothing.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_unit_file_is_hardened(systemd_analyze: str, tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    r = subprocess.run([systemd_analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "exposure above 2.0 ('OK' is below):\n" + r.stdout[-3000:] + r.stderr


def test_unit_file_matches_how_stirgate_runs() -> None:
    service = unit_sections()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    # SIGTERM to the main process only: it forwards it to its workers (a second one would stop them at once).
    assert service["KillMode"] == "mixed" and service.get("KillSignal", "SIGTERM") == "SIGTERM"
    # Long enough for a whole drain (default drain_grace) and the records flush after it.
    assert float(service["TimeoutStopSec"]) >= SipSettings().drain_grace + 10
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "/var/lib/stirgate" in service["ReadWritePaths"]


# ----------------------------------------------------------------------------------------------- sd_notify
@dataclass
class Notice:
    pid: int
    fields: dict[str, str]


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: a datagram socket that sees who sent each message (SO_PASSCRED)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))

    def next(self, timeout: float = 30.0) -> Notice:
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = next(struct.unpack("iII", d[:12])[0] for level, kind, d in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return Notice(pid, fields)

    def pending(self) -> list[Notice]:
        out = []
        while True:
            try:
                out.append(self.next(timeout=0.5))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@pytest.fixture
def start_stirgate(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[object]:
    """start(*args) -> Popen of `stirgate run` with NOTIFY_SOCKET set; not waited for: the test waits for READY."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        harness.wait_port_free(STIRGATE_IP, SIP_PORT, "udp")
        harness.wait_port_free(STIRGATE_IP, SIP_PORT, "tcp")
        config = harness.make_config(tmp_path / "stirgate.yaml")
        with (tmp_path / "stirgate.log").open("wb") as log:
            proc = subprocess.Popen([*harness.stirgate_command(), "run", "-c", str(config), *args], cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "stirgate.log").read_text(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


def test_ready_once_listening_then_reloading_and_stopping(start_stirgate: object, notify_socket: NotifySocket,
                                                          tmp_path: Path) -> None:
    proc = start_stirgate()  # type: ignore[operator]
    ready = notify_socket.next()
    assert ready.fields.get("READY") == "1", ready
    assert ready.pid == proc.pid  # the main process, as NotifyAccess=main requires
    # At READY its sockets are bound and it answers at once: the very first OPTIONS gets a 200.
    assert harness.owns_socket(proc.pid, STIRGATE_IP, SIP_PORT, "udp")
    assert harness.owns_socket(proc.pid, STIRGATE_IP, SIP_PORT, "tcp")
    assert harness.send_options(timeout=2.0) == 200
    assert harness.names_event(log_text(tmp_path), "listening")

    # systemctl reload = SIGHUP: RELOADING=1 (with the monotonic time systemd 253+ matches), then READY=1.
    os.kill(proc.pid, signal.SIGHUP)
    reloading, again = notify_socket.next(), notify_socket.next()
    assert reloading.fields.get("RELOADING") == "1" and int(reloading.fields["MONOTONIC_USEC"]) > 0, reloading
    assert again.fields.get("READY") == "1" and "reloaded" in again.fields.get("STATUS", ""), again
    assert harness.names_event(log_text(tmp_path), "reloaded")

    # systemctl stop = SIGTERM: STOPPING=1 as the drain starts, then a clean exit.
    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.next()
    assert stopping.fields.get("STOPPING") == "1" and stopping.pid == proc.pid, stopping
    assert proc.wait(timeout=20) == 0, log_text(tmp_path)[-3000:]


def test_a_failed_reload_still_reports_ready(start_stirgate: object, notify_socket: NotifySocket,
                                            tmp_path: Path) -> None:
    proc = start_stirgate()  # type: ignore[operator]
    assert notify_socket.next().fields.get("READY") == "1"
    config = tmp_path / "stirgate.yaml"
    good = config.read_text()
    config.write_text(good + "\nnot_a_key: 1\n")
    try:
        os.kill(proc.pid, signal.SIGHUP)
        assert notify_socket.next().fields.get("RELOADING") == "1"
        after = notify_socket.next()
    finally:
        config.write_text(good)
    # Still running, on the previous configuration: READY again, saying why the reload did not take.
    assert after.fields.get("READY") == "1" and "reload failed" in after.fields.get("STATUS", ""), after
    assert harness.send_options(timeout=2.0) == 200
    assert stop(proc) == 0


def test_workers_ready_only_when_all_listen(start_stirgate: object, notify_socket: NotifySocket,
                                           tmp_path: Path) -> None:
    proc = start_stirgate("--workers", "2")  # type: ignore[operator]
    ready = notify_socket.next()
    assert ready.fields.get("READY") == "1" and ready.pid == proc.pid, ready
    workers = sorted(harness._descendants(proc.pid) - {proc.pid})
    assert len(workers) == 2, workers
    # Each worker holds its share of the listen port and its own port for the B-legs before READY.
    base = SipSettings().worker_port_base
    for pid in workers:
        assert harness.owns_socket(pid, STIRGATE_IP, SIP_PORT, "udp"), f"worker {pid} not on the listen port"
    owners = {i for i in range(2) for pid in workers if harness.owns_socket(pid, STIRGATE_IP, base + i, "udp")}
    assert owners == {0, 1}
    assert log_text(tmp_path).count('"event":"listening"') == 2
    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.next()
    assert stopping.fields.get("STOPPING") == "1" and stopping.pid == proc.pid, stopping
    assert proc.wait(timeout=20) == 0, log_text(tmp_path)[-3000:]
    # Nothing from the workers themselves (systemd would ignore them and complain).
    assert all(n.pid == proc.pid for n in notify_socket.pending())
