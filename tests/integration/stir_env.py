"""What the end-to-end STIR/SHAKEN tests need beside tests/integration/harness.py (used as is, never edited).

- a demo PKI (`stirgate certs init`) plus a second, untrusted one, and the SP public key for secsipidx;
- the shipped x5u server (`python -m proxy.stir.x5u_server`) as a subprocess, ready once a TLS handshake with
  the demo CA succeeds; a counting https x5u server in a thread of the test process (request count, a delay on
  the first answer, a chosen Cache-Control); a TCP listener that accepts and never answers;
- stirgate on any loopback address (the harness's `Stirgate.start` probes 127.0.0.1 only), with configs for
  the signing side, the verifying side and the two-stirgate chain of ../shared/TOPOLOGY.md;
- fresh Identity values (signed just before use: iat must be within 60 s) and tampered ones;
- SIPp injection files for sipp_scenarios/stir_uac*.xml, and the times of a -trace_msg file;

Everything waits on something observed (a handshake, an OPTIONS answer, a bound socket, an event), bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration import harness
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP

TERM_IP = "127.0.0.2"  # the terminating stirgate when two are chained (TOPOLOGY.md)
CALLER = "+15551230001"  # From user part of the SIPp UACs (owned prefix 1555 -> attest A)
CALLER_TN = "15551230001"
OTHER_CALLER = "+12125550100"  # a number the customer does not own -> attest B
DIALLED = harness.DIALLED  # 15551230002, SIPp's -s
ORIGID = "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"
SECSIPIDX = shutil.which("secsipidx")


# ----------------------------------------------------------------------------------------------- PKI
@dataclass(frozen=True)
class StirPki:
    """`stirgate certs init DIR` output; `other` is a second set whose CA stirgate does not trust."""

    dir: Path
    other: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def key(self) -> Path:
        return self.dir / "sp.key"

    @property
    def pub(self) -> Path:
        return self.dir / "sp.pub"

    @property
    def untrusted_key(self) -> Path:
        return self.other / "sp.key"


def make_pki(directory: Path) -> StirPki:
    """Two demo sets; the untrusted SP certificate is also published beside the good one as untrusted.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    other = directory / "other"
    for d in (directory, other):
        proc = subprocess.run([*harness.stirgate_command(), "certs", "init", str(d)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copy(other / "sp.pem", directory / "untrusted.pem")
    cert = x509.load_pem_x509_certificate((directory / "sp.pem").read_bytes())
    pub = cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (directory / "sp.pub").write_bytes(pub)
    return StirPki(directory, other)


# ----------------------------------------------------------------------------------------------- x5u servers
def tls_ready(port: int, ca: Path, host: str = STIRGATE_IP) -> bool:
    """One TLS handshake with the server's certificate checked against the demo CA."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((host, port), timeout=0.5) as raw, ctx.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


class X5uServer:
    """The shipped x5u server (`python -m proxy.stir.x5u_server`) as a subprocess on a free port."""

    def __init__(self, pki: StirPki, workdir: Path) -> None:
        self.pki = pki
        self.port = harness.free_port(STIRGATE_IP, kind=socket.SOCK_STREAM)
        self.log_path = workdir / "x5u-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "sp.pem") -> str:
        return f"https://{STIRGATE_IP}:{self.port}/{name}"

    def start(self) -> X5uServer:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.stir.x5u_server", "--dir", str(self.pki.dir),
             "--listen", f"{STIRGATE_IP}:{self.port}"],
            cwd=harness.ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        proc = self.proc
        harness.wait_until(lambda: proc.poll() is not None or tls_ready(self.port, self.pki.ca),
                           f"x5u server TLS on {STIRGATE_IP}:{self.port}", attempts=300)  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"x5u server exited {proc.returncode}: {self.log_path.read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def demo_stir_pki() -> StirPki:
    """The session's demo PKI (`harness.demo_pki_dir`); `other`, the untrusted set, is not made."""
    directory = harness.demo_pki_dir()
    return StirPki(directory, directory)


def serve_x5u(pki: StirPki, workdir: Path) -> Iterator[X5uServer]:
    """The shipped x5u server for a fixture's lifetime: `yield from serve_x5u(...)`."""
    server = X5uServer(pki, workdir).start()
    try:
        yield server
    finally:
        server.stop()


class CountingX5u:
    """An https x5u server in a thread of the test process: counts requests, can hold the first answer back.

    `hold_first` is an Event the first request waits on (bounded by `hold_max` seconds), so a test can keep the
    first fetch in flight while more calls arrive. `answered_at` records the wall time each answer left.
    """

    def __init__(self, pki: StirPki, body: bytes, *, cache_control: str = "max-age=3600",
                 hold_max: float = 0.0) -> None:  # fmt: skip
        self.pki = pki
        self.body = body
        self.cache_control = cache_control
        self.hold_max = hold_max
        self.hold_first = threading.Event()
        self.requests: list[tuple[float, str]] = []  # (wall time received, path)
        self.answered_at: list[float] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def url(self, name: str = "sp.pem") -> str:
        return f"https://{STIRGATE_IP}:{self.port}/{name}"

    @property
    def count(self) -> int:
        return len(self.requests)

    async def _handler(self, request: Any) -> Any:
        from aiohttp import web

        first = not self.requests
        self.requests.append((time.time(), request.path))
        if first and self.hold_max > 0:
            await asyncio.get_running_loop().run_in_executor(None, self.hold_first.wait, self.hold_max)
        self.answered_at.append(time.time())
        return web.Response(body=self.body, content_type="application/x-pem-file",
                            headers={"Cache-Control": self.cache_control})  # fmt: skip

    async def _main(self) -> None:
        from aiohttp import web

        from proxy.stir.x5u_server import server_ssl_context

        app = web.Application()
        app.router.add_get("/{name}", self._handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, STIRGATE_IP, 0,
                           ssl_context=server_ssl_context(self.pki.dir / "x5u-server.pem",
                                                          self.pki.dir / "x5u-server.key"))  # fmt: skip
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self.hold_first.set()
            await runner.cleanup()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> CountingX5u:
        self._thread = threading.Thread(target=self._run, name="counting-x5u", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"counting x5u server did not start: {self._error!r}")
        harness.wait_until(lambda: tls_ready(self.port, self.pki.ca), "counting x5u server TLS")
        self.requests.clear()  # the readiness handshake sent no HTTP request, but be exact
        return self

    def stop(self) -> None:
        self.hold_first.set()
        if self._stop is not None and self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


class SilentServer:
    """A TCP listener that never accepts: connections complete in the kernel backlog, TLS never starts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((STIRGATE_IP, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def url(self, name: str = "sp.pem") -> str:
        return f"https://{STIRGATE_IP}:{self.port}/{name}"

    def wait_client_gone(self, timeout: float = 10.0) -> bool:
        """Take the first queued connection and read until the client closes it (the fetcher gave up).

        True when it closed within `timeout`; False when no connection came or it stayed open."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return False
        with conn:
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                try:
                    if not conn.recv(65536):
                        return True
                except TimeoutError:
                    return False
                except OSError:
                    return True  # reset: gone as well
        return False

    def close(self) -> None:
        self.sock.close()


def dead_url() -> str:
    """An https URL on a 127.0.0.1 port nothing listens on (free at the time of asking)."""
    port = harness.free_port(STIRGATE_IP, kind=socket.SOCK_STREAM)
    return f"https://{STIRGATE_IP}:{port}/sp.pem"


# ----------------------------------------------------------------------------------------------- stirgate
def _socket_inodes(ip: str, port: int, proto: str) -> set[str]:
    """Inodes of the sockets bound to ip:port (UDP) or listening there (TCP), per /proc/net/{udp,tcp}."""
    want = f"{int.from_bytes(socket.inet_aton(ip), sys.byteorder):08X}:{port:04X}"
    out = set()
    with (Path("/proc/net") / proto).open() as fh:
        next(fh)
        for line in fh:
            cols = line.split()
            if cols[1] == want and (proto == "udp" or cols[3] == "0A"):
                out.add(cols[9])
    return out


def owns_sockets(pid: int, ip: str, port: int) -> bool:
    """True when process `pid` holds both the UDP and the listening TCP socket on ip:port."""
    try:
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    return all(any(f"socket:[{inode}]" in fds for inode in _socket_inodes(ip, port, proto))
               for proto in ("udp", "tcp"))  # fmt: skip


class _PortTaken(Exception):
    pass


class StirgateAt(harness.Stirgate):
    """harness.Stirgate on any loopback address. Ready = this process holds the UDP and TCP sockets on ip:port
    (another run on the machine may have taken the port since it was seen free) and answers an OPTIONS from a
    trunk source with 200."""

    def __init__(self, config: Path, workdir: Path, ip: str, probe_from: str) -> None:
        super().__init__(config, workdir)
        self.ip = ip
        self.probe_from = probe_from

    def start(self, ready_attempts: int = 50, bind_retries: int = 10) -> StirgateAt:
        """Start and wait until ready. Another run may take the port between our free-port check and the bind:
        then stirgate exits with EADDRINUSE, and we wait for the port again (bounded number of times)."""
        for attempt in range(bind_retries + 1):
            try:
                return self._start_once(ready_attempts)
            except _PortTaken:
                if attempt == bind_retries:
                    raise RuntimeError(
                        f"{self.ip}:{SIP_PORT} kept being taken by another process "
                        f"(set STIRGATE_IT_PORT_OFFSET to run beside it):\n{self.log_tail()}"
                    ) from None
        raise AssertionError("unreachable")

    def _start_once(self, ready_attempts: int) -> StirgateAt:
        harness.wait_port_free(self.ip, SIP_PORT, "udp")
        harness.wait_port_free(self.ip, SIP_PORT, "tcp")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*harness.stirgate_command(), "run", "-c", str(self.config)],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            return owns_sockets(proc.pid, self.ip, SIP_PORT) and (
                harness.send_options((self.ip, SIP_PORT), src_ip=self.probe_from) == 200
            )

        try:
            harness.wait_until(ready, f"stirgate {self.ip} to answer OPTIONS", attempts=ready_attempts * 10)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"stirgate {self.ip} never answered OPTIONS with 200:\n{self.log_tail()}") from None
        if proc.poll() is not None:
            if "address already in use" in self.log_path.read_text(errors="replace"):
                raise _PortTaken
            raise RuntimeError(f"stirgate {self.ip} exited with {proc.returncode}:\n{self.log_tail()}")
        return self


def _trunk(name: str, role: str, ip: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "sources": [ip], "destination": f"{ip}:{SIP_PORT}",
            "transport": "udp", **more}  # fmt: skip


def _base(ip: str, trunks: list[dict[str, Any]], routes: list[dict[str, Any]], stir: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": [f"udp:{ip}:{SIP_PORT}", f"tcp:{ip}:{SIP_PORT}"],
        "unknown_source": "reject",
        "sip": {"failover_timeout": 1.0, "no_answer_timeout": 5.0, "drain_grace": 2.0},
        "trunks": trunks,
        "routes": routes,
        "stir": stir,
        "logging": {"level": "debug"},
    }


def stir_section(pki: StirPki, x5u: str, **verify: Any) -> dict[str, Any]:
    """`stir:` with the demo CA as trust anchor, the demo signing profile publishing at `x5u`, loopback x5u."""
    v: dict[str, Any] = {
        "x5u_allow_private": True,
        "x5u_allow_any_port": True,
        "x5u_ca_file": str(pki.ca),
        "fetch_timeout": 1.0,
        "wait_timeout": 2.0,
    }
    v.update(verify)
    return {
        "country_code": "1",
        "trust_anchors": [str(pki.ca)],
        "signing_profiles": [{"name": "demo", "key": str(pki.key), "x5u": x5u}],
        "verify": v,
    }


def signing_config(pki: StirPki, x5u: str, *, attestation: dict[str, Any] | None, to_ip: str) -> dict[str, Any]:
    """stirgate on 127.0.0.1 signing calls from the customer (127.0.0.10) towards a carrier at `to_ip`."""
    sign: dict[str, Any] = {"profile": "demo"}
    if attestation is not None:
        sign["attestation"] = attestation
    trunks = [
        _trunk("customer", "customer", CUSTOMER_IP, sign=sign),
        _trunk("carrier", "carrier", to_ip),
    ]
    routes = [{"from": ["customer"], "prefix": "", "trunks": ["carrier"]},
              {"from": ["carrier"], "prefix": "", "trunks": ["customer"]}]  # fmt: skip
    return _base(STIRGATE_IP, trunks, routes, stir_section(pki, x5u))


def verifying_config(pki: StirPki, x5u: str, *, ip: str, upstream_ip: str, downstream_ip: str,
                     verify: dict[str, Any], **stir_verify: Any) -> dict[str, Any]:  # fmt: skip
    """stirgate on `ip` verifying calls from the carrier at `upstream_ip`, delivering to `downstream_ip`."""
    trunks = [
        _trunk("carrier", "carrier", upstream_ip, verify=verify),
        _trunk("customer", "customer", downstream_ip),
    ]
    routes = [{"from": ["carrier"], "prefix": "", "trunks": ["customer"]},
              {"from": ["customer"], "prefix": "", "trunks": ["carrier"]}]  # fmt: skip
    return _base(ip, trunks, routes, stir_section(pki, x5u, **stir_verify))


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------- Identity values
def sign_identity(key: Path, x5u: str, *, orig: str = CALLER_TN, dest: str = DIALLED, attest: str = "A",
                  iat: float | None = None) -> str:  # fmt: skip
    """An Identity header value signed now (or at `iat`) by stirgate's signer with the key at `key`."""
    from proxy.stir.signer import Signer, SigningProfile

    signer = Signer(SigningProfile("test", str(key), x5u))
    return signer.sign(orig, [dest], attest, ORIGID, time.time() if iat is None else iat)


def secsipidx_sign(key: Path, x5u: str, *, orig: str = CALLER_TN, dest: str = DIALLED, attest: str = "A") -> str:
    assert SECSIPIDX is not None
    proc = subprocess.run(
        [SECSIPIDX, "-sign-full", "-orig-tn", orig, "-dest-tn", dest, "-attest", attest, "-x5u", x5u,
         "-k", str(key), "-orig-id", ORIGID],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def secsipidx_check(value: str, pub: Path, expire: int = 300) -> subprocess.CompletedProcess[str]:
    assert SECSIPIDX is not None
    return subprocess.run([SECSIPIDX, "-check", "-identity", value, "-p", str(pub), "-expire", str(expire)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def _b64d(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws_parts(value: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(JWS header, claims, signature bytes) of an Identity header value."""
    token = value.split(";", 1)[0].strip()
    head, payload, sig = token.split(".")
    return json.loads(_b64d(head)), json.loads(_b64d(payload)), _b64d(sig)


def tamper_signature(value: str) -> str:
    """The same Identity with one byte of the ES256 signature flipped (still 64 bytes, still base64url)."""
    token, sep, params = value.partition(";")
    head, payload, sig = token.split(".")
    raw = bytearray(_b64d(sig))
    raw[10] ^= 0x5A
    return f"{head}.{payload}.{_b64e(bytes(raw))}{sep}{params}"


# ----------------------------------------------------------------------------------------------- SIPp helpers
def inf_file(path: Path, rows: Sequence[tuple[str, str, str | None]]) -> Path:
    """A SEQUENTIAL -inf file for stir_uac*.xml: per call (caller, extra header line, Identity value or None)."""
    lines = ["SEQUENTIAL"]
    for caller, extra, identity in rows:
        assert ";" not in caller and ";" not in extra, "';' separates SIPp fields"
        fields = [caller, extra]
        if identity is not None:
            parts = identity.split(";")
            assert len(parts) == 4, f"stir_uac_identity.xml expects jws;info;alg;ppt, got {identity!r}"
            fields.extend(parts)
        lines.append(";".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


_STAMP = re.compile(rb"^-{47} (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d(?:\.\d+)?)", re.M)


@dataclass(frozen=True)
class TraceEvent:
    at: float  # wall clock (SIPp prints local time)
    direction: str  # "sent" | "received"
    first_line: str
    call_id: str


def trace_events(messages_log: Path) -> list[TraceEvent]:
    """Every message of a SIPp -trace_msg file with the time SIPp stamped on it (harness.parse_trace_msg drops it)."""
    data = messages_log.read_bytes() if messages_log.exists() else b""
    stamps = list(_STAMP.finditer(data))
    out = []
    for i, m in enumerate(stamps):
        end = stamps[i + 1].start() if i + 1 < len(stamps) else len(data)
        chunk = data[m.end() : end].decode(errors="replace")
        head, _, msg = chunk.partition("\n\n")
        direction = "sent" if "message sent" in head else "received"
        lines = msg.split("\r\n")
        call_id = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                        if ln.split(":", 1)[0].strip().lower() in ("call-id", "i")), "")  # fmt: skip
        stamp = re.sub(r"\s+", " ", m.group(1).decode())
        fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
        out.append(TraceEvent(datetime.datetime.strptime(stamp, fmt).timestamp(), direction, lines[0], call_id))
    return out


def sent_invite_times(messages_log: Path) -> list[float]:
    """Wall-clock times of the INVITEs a SIPp -trace_msg file shows sent."""
    return [e.at for e in trace_events(messages_log) if e.direction == "sent" and e.first_line.startswith("INVITE ")]


def param(value: str, name: str) -> str | None:
    """A parameter of a name-addr's URI or header params (verstat lives in the URI, 3GPP TS 24.229)."""
    for part in re.split(r"[;>]", value):
        key, eq, val = part.strip().partition("=")
        if eq and key.lower() == name.lower():
            return val
    return None


@contextlib.contextmanager
def started(*things: Any) -> Iterator[None]:
    """Stop/kill what was started, in reverse order, whatever happens."""
    try:
        yield
    finally:
        for t in reversed(things):
            for name in ("stop", "kill", "close"):
                fn = getattr(t, name, None)
                if fn is not None:
                    with contextlib.suppress(Exception):
                        fn()
                    break


__all__ = [
    "CALLER",
    "CALLER_TN",
    "CARRIER_IP",
    "CUSTOMER_IP",
    "DIALLED",
    "ORIGID",
    "OTHER_CALLER",
    "SECSIPIDX",
    "TERM_IP",
    "CountingX5u",
    "SilentServer",
    "StirPki",
    "StirgateAt",
    "X5uServer",
    "dead_url",
    "inf_file",
    "jws_parts",
    "make_pki",
    "param",
    "secsipidx_check",
    "secsipidx_sign",
    "sent_invite_times",
    "sign_identity",
    "signing_config",
    "tamper_signature",
    "trace_events",
    "verifying_config",
    "write_config",
]
