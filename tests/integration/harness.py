"""Process helpers for the integration tests: a live stirgate, SIPp peers, and what they leave behind.

Everything is bounded: stirgate must answer an OPTIONS within a number of attempts, SIPp runs a fixed number of
calls under `-timeout ... -timeout_error`, every subprocess wait has a timeout and ends in a kill. Readiness is
observed (an OPTIONS answered, a socket bound in /proc/net), never assumed after a sleep.

Addresses follow ../shared/TOPOLOGY.md. `STIRGATE_IT_PORT_OFFSET` (default 0) moves every SIP port by the same
amount, so a run can sit beside another one (a load test, a demo) on the same machine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "sipp_scenarios"
BASE_CONFIG = ROOT / "examples" / "loopback.yaml"

PORT_OFFSET = int(os.environ.get("STIRGATE_IT_PORT_OFFSET", "0"))
SIP_PORT = 5060 + PORT_OFFSET
STIRGATE_IP = "127.0.0.1"
CUSTOMER_IP = "127.0.0.10"
CARRIER_IP = "127.0.0.20"
CARRIER2_IP = "127.0.0.21"
UNKNOWN_IP = "127.0.0.99"  # no trunk owns it
DIALLED = "15551230002"

SIPP_TIMEOUT_S = 30  # SIPp's own global timeout (-timeout, -timeout_error)
WAIT_MARGIN_S = 15  # our wait on top of it before killing


def stirgate_command() -> list[str]:
    """The console script in the virtualenv running the tests, else `python -m proxy.cli`."""
    script = Path(sys.executable).with_name("stirgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proxy.cli"]


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def have_pjsua2() -> bool:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- sockets in use
def _proc_net_sockets(ip: str, port: int, proto: str) -> list[int]:
    """Inodes of the sockets bound to ip:port (UDP) or listening there (TCP), per /proc/net/{udp,tcp}."""
    # The kernel prints the address as the in-memory 32-bit word, in host byte order.
    want = f"{int.from_bytes(socket.inet_aton(ip), sys.byteorder):08X}:{port:04X}"
    any_ = f"00000000:{port:04X}"
    out = []
    with (Path("/proc/net") / proto).open() as fh:
        next(fh)
        for line in fh:
            cols = line.split()
            local, state, inode = cols[1], cols[3], int(cols[9])
            if local in (want, any_) and (proto == "udp" or state == "0A"):
                out.append(inode)
    return out


def _proc_net_bound(ip: str, port: int, proto: str) -> bool:
    return bool(_proc_net_sockets(ip, port, proto))


def _descendants(pid: int) -> set[int]:
    pids, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for c in map(int, children):
                if c not in pids:
                    pids.add(c)
                    todo.append(c)
    return pids


def owns_socket(pid: int, ip: str, port: int, transport: str = "udp") -> bool:
    """True when process `pid` (or a child of it) holds the socket bound to ip:port: readiness that another
    process answering on the same address cannot fake."""
    inodes = set(_proc_net_sockets(ip, port, "tcp" if transport == "tcp" else "udp"))
    if not inodes:
        return False
    for p in _descendants(pid):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                return True
    return False


def is_bound(ip: str, port: int, transport: str = "udp") -> bool:
    return _proc_net_bound(ip, port, "tcp" if transport == "tcp" else "udp")


def port_holders(ip: str, port: int) -> str:
    """Which processes hold ip:port (UDP or TCP), for error messages: "pid cmdline" lines."""
    inodes = set(_proc_net_sockets(ip, port, "udp")) | set(_proc_net_sockets(ip, port, "tcp"))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(ln.startswith("socket:[") and int(ln[8:-1]) in inodes for ln in links):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            found.append(f"{proc.name} {cmd[:200]}")
    return "\n".join(found) or "(no process found)"


def names_event(text: str, name: str) -> bool:
    """Whether a JSON log line (or a message quoting one) carries this event, whatever its spacing."""
    return re.search(r'"event":\s*"' + re.escape(name) + '"', text) is not None


def count_event_lines(data: bytes, name: str) -> int:
    """How many log lines carry this event: a cheap count over the raw log, for polling under load."""
    return len(re.findall(rb'"event":\s*"' + re.escape(name.encode()) + rb'"', data))


def wait_until(predicate: Any, what: str, attempts: int = 250, interval: float = 0.02) -> None:
    """Poll `predicate` a bounded number of times; raise naming `what` if it never holds."""
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def wait_port_free(ip: str, port: int, transport: str = "udp", seconds: float = 30.0) -> None:
    """Another run (load test, demo) may hold a topology port: wait a bounded time, then fail saying so."""
    attempts = int(seconds / 0.1)
    try:
        wait_until(lambda: not is_bound(ip, port, transport), f"{transport}:{ip}:{port} to be free", attempts, 0.1)
    except TimeoutError as exc:
        raise RuntimeError(
            f"{transport}:{ip}:{port} is held by another process (another test run or load test on this machine?); "
            f"set STIRGATE_IT_PORT_OFFSET to run beside it. Held by:\n{port_holders(ip, port)}"
        ) from exc


def free_port(ip: str, span: int = 1, kind: int = socket.SOCK_DGRAM) -> int:
    """A port p on ip with p..p+span-1 all free (SIPp's media port takes p and p+2)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((ip, 0))
            base = s.getsockname()[1]
        if base + span >= 65535:
            continue
        ok = True
        for p in range(base, base + span):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((ip, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no free port range of {span} on {ip}")


# ----------------------------------------------------------------------------------------------- configuration
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(
    path: Path,
    *,
    sip: dict[str, Any] | None = None,
    trunks: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """examples/loopback.yaml with test overrides; written to `path`.

    sip: merged into `sip:` (e.g. failover_timeout, no_answer_timeout).
    trunks: per trunk name, keys merged into that trunk (e.g. {"carrier": {"transport": "tcp"}}).
    extra: merged at the top level last.
    SIP ports are moved by STIRGATE_IT_PORT_OFFSET; the HTTP API gets a free port (`api.listen`).
    """
    cfg: dict[str, Any] = yaml.safe_load(BASE_CONFIG.read_text())
    cfg["listen"] = [f"udp:{STIRGATE_IP}:{SIP_PORT}", f"tcp:{STIRGATE_IP}:{SIP_PORT}"]
    for trunk in cfg["trunks"]:
        host, _, _port = str(trunk["destination"]).rpartition(":")
        trunk["destination"] = f"{host}:{SIP_PORT}"
        if trunks and trunk["name"] in trunks:
            trunk.update(copy.deepcopy(trunks[trunk["name"]]))
    # A call a failed test left behind must not hold SIGTERM past Stirgate.stop's grace (10 s).
    cfg["sip"] = _merge(cfg.get("sip") or {}, {"drain_grace": 3.0})
    if sip:
        cfg["sip"] = _merge(cfg["sip"], sip)
    cfg.setdefault("logging", {})["level"] = "debug"
    # The HTTP API (health, metrics): a free loopback port of its own, so that a stirgate already on the
    # topology's 127.0.0.1:8080 (a demo, another run) does not collide with the one under test.
    api_port = free_port(STIRGATE_IP, kind=socket.SOCK_STREAM)
    cfg["api"] = {**(cfg.get("api") or {}), "listen": f"{STIRGATE_IP}:{api_port}"}
    if extra:
        cfg = _merge(cfg, extra)
    if cfg.get("stir"):
        _absolute_pki_paths(cfg["stir"])
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def demo_pki_dir() -> Path:
    """The demo STI-CA set (`stirgate certs init`) shared by this test session, made once."""
    from proxy.stir.demo_certs import init_demo_certs

    directory = Path(tempfile.gettempdir()) / f"stirgate-it-pki-{os.getpid()}"
    if not (directory / "x5u-server.key").exists():
        init_demo_certs(directory)
    return directory


def _absolute_pki_paths(stir: dict[str, Any]) -> None:
    """examples/loopback.yaml names the demo PKI as `demo-certs/...` in the working directory; tests run each
    stirgate in a folder of its own, so point those names at the session's demo PKI."""
    pki = demo_pki_dir()

    def fix(value: str) -> str:
        return str(pki / value.removeprefix("demo-certs/")) if value.startswith("demo-certs/") else value

    stir["trust_anchors"] = [fix(v) for v in stir.get("trust_anchors") or []]
    for profile in stir.get("signing_profiles") or []:
        profile["key"] = fix(profile["key"])
    verify = stir.get("verify") or {}
    if verify.get("x5u_ca_file"):
        verify["x5u_ca_file"] = fix(verify["x5u_ca_file"])


# ----------------------------------------------------------------------------------------------- stirgate
def options_request(src: tuple[str, int], dst: tuple[str, int]) -> tuple[bytes, str]:
    call_id = f"{uuid.uuid4().hex}@{src[0]}"
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    msg = (
        f"OPTIONS sip:{dst[0]}:{dst[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch};rport\r\n"
        f"From: <sip:probe@{src[0]}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{dst[0]}:{dst[1]}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return msg.encode(), call_id


def send_options(
    dst: tuple[str, int] = (STIRGATE_IP, SIP_PORT), src_ip: str = CUSTOMER_IP, timeout: float = 0.2
) -> int | None:
    """One OPTIONS over UDP from src_ip (ephemeral port); the status code of the answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src_ip, 0))
        s.settimeout(timeout)
        data, call_id = options_request(s.getsockname(), dst)
        s.sendto(data, dst)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                reply, _ = s.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError, OSError):
                return None
            m = re.match(rb"SIP/2\.0 (\d{3}) ", reply)
            if m and call_id.encode() in reply:
                return int(m.group(1))


def api_listen(config: Path | Mapping[str, Any]) -> tuple[str, int]:
    """Where a stirgate's HTTP API listens (`api.listen` of its config file, or of the config as loaded)."""
    cfg = yaml.safe_load(config.read_text()) if isinstance(config, Path) else config
    host, _, port = str(cfg["api"]["listen"]).rpartition(":")
    return host, int(port)


#: HTTP to a stirgate's API, asked directly: loopback never goes through an http_proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape_metrics(address: tuple[str, int]) -> dict[str, float]:
    """A stirgate's /metrics as {sample with its labels: value}, e.g. 'stirgate_sip_events_total{event="invites"}'."""
    with _DIRECT.open(f"http://{address[0]}:{address[1]}/metrics", timeout=5.0) as resp:
        body = resp.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class Stirgate:
    """A stirgate subprocess on a config file; JSON logs to `log_path`."""

    def __init__(self, config: Path, workdir: Path, command: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, run_args: Sequence[str] = (),
                 probe_from: str = CUSTOMER_IP) -> None:
        self.config = config
        self.workdir = workdir
        self.command = list(command) if command is not None else stirgate_command()
        self.env = env  # None: the test's own environment
        self.run_args = list(run_args)  # after `run -c CONFIG`, e.g. ["--workers", "2"]
        self.probe_from = probe_from  # readiness OPTIONS come from here: an address one of its trunks owns
        self.log_path = workdir / "stirgate.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        #: Set by a test that stops stirgate during a call: calls active when it starts draining are expected.
        self.calls_active_at_drain = False
        self.terminated = False  # SIGTERM sent by a test
        # Readiness is checked on the config's own listen addresses (a second node runs on 127.0.0.2).
        listens = [str(x).split(":") for x in yaml.safe_load(config.read_text()).get("listen") or []
                   if isinstance(x, str)]  # ({address, mode: redirect} entries answer differently)
        listens = [x for x in listens if len(x) == 3]
        udp = next(((h, int(p)) for t, h, p in listens if t == "udp"), (STIRGATE_IP, SIP_PORT))
        self.sip_addr: tuple[str, int] = udp
        self.transports = [t for t, h, p in listens if (h, int(p)) == udp] or ["udp", "tcp"]

    def start(self, ready_attempts: int = 150, bind_attempts: int = 3) -> Stirgate:
        """Start and wait until ready. Losing a race for the port to another process on this machine (it
        exits "address already in use") is retried a bounded number of times."""
        for attempt in range(bind_attempts):
            try:
                return self._start(ready_attempts)
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == bind_attempts - 1:
                    raise
                (self.workdir / f"stirgate-attempt{attempt}.log").write_bytes(self.log_path.read_bytes())
        raise AssertionError("unreachable")

    def _start(self, ready_attempts: int) -> Stirgate:
        ip, port = self.sip_addr
        for transport in self.transports:
            wait_port_free(ip, port, transport)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.command, "run", "-c", str(self.config), *self.run_args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        pid = self.proc.pid
        for _ in range(ready_attempts):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stirgate exited with {self.proc.returncode} before ready:\n{self.log_tail()}\n"
                    f"holders of {ip}:{port} now:\n{port_holders(ip, port)}"
                )
            # Ours must hold the UDP and TCP sockets, or the 200 could come from another stirgate on the port.
            # Until it does, an OPTIONS is not even sent (a prompt foreign 200 would spend the attempts).
            if not all(owns_socket(pid, ip, port, t) for t in self.transports):
                time.sleep(0.1)  # polling interval of a bounded readiness check, not a synchronisation
                continue
            if send_options((ip, port), self.probe_from) == 200:
                return self
        self.kill()
        raise RuntimeError(
            f"stirgate never answered OPTIONS with 200 (or another process holds its port):\n{self.log_tail()}\n"
            f"holders of {ip}:{port}:\n{port_holders(ip, port)}"
        )

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def terminate(self) -> None:
        """SIGTERM without waiting (a test of the graceful stop); `stop()` still reaps it."""
        assert self.proc is not None
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """stirgate's JSON log lines so far (others skipped); only those whose "event" is `event` when given."""
        out = []
        for line in _read(self.log_path).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (event is None or rec.get("event") == event):
                out.append(rec)
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def api_address(self) -> tuple[str, int]:
        """(host, port) of its HTTP API."""
        return api_listen(self.config)

    @property
    def api_base(self) -> str:
        """The URL its HTTP API's paths go after, e.g. f"{sg.api_base}/metrics"."""
        host, port = self.api_address
        return f"http://{host}:{port}"

    def metrics(self) -> dict[str, float]:
        """Its /metrics now (`scrape_metrics`)."""
        return scrape_metrics(self.api_address)

    def api_get(self, path: str) -> tuple[int, Any]:
        """(status, JSON body) of a GET on its HTTP API, whatever the status."""
        try:
            with _DIRECT.open(f"{self.api_base}{path}", timeout=5.0) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# ----------------------------------------------------------------------------------------------- SIPp
@dataclass
class TracedMessage:
    direction: str  # "sent" | "received"
    transport: str  # "UDP" | "TCP"
    raw: bytes

    @property
    def first_line(self) -> str:
        return self.raw.split(b"\r\n", 1)[0].decode(errors="replace")

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """The request method, or the CSeq method of a response."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        return self.header("CSeq").split()[-1]

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.first_line.split()[1])

    def headers(self, name: str) -> list[str]:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        out = []
        for line in head.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    def header(self, name: str) -> str:
        values = self.headers(name)
        return values[0] if values else ""

    @property
    def body(self) -> bytes:
        _head, _sep, rest = self.raw.partition(b"\r\n\r\n")
        length = int(self.header("Content-Length") or "0")
        return rest[:length]


_TRACE_SEP = re.compile(rb"^-{47} [0-9][^\n]*\n", re.M)
# "UDP message sent (640 bytes):" / "UDP message received [635] bytes :"
_TRACE_HDR = re.compile(rb"^(UDP|TCP|TLS) message (sent|received) (?:\((\d+) bytes\)|\[(\d+)\] bytes) ?:\n\n")


def parse_trace_msg(path: Path) -> list[TracedMessage]:
    """The messages of a SIPp -trace_msg file, byte for byte (the announced length is honoured)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    out = []
    for chunk in _TRACE_SEP.split(data):
        m = _TRACE_HDR.match(chunk)
        if not m:
            continue
        size = int(m.group(3) or m.group(4))
        raw = chunk[m.end() : m.end() + size]
        out.append(TracedMessage(m.group(2).decode(), m.group(1).decode(), raw))
    return out


@dataclass
class SippResult:
    name: str
    returncode: int
    successful: int | None
    failed: int | None
    messages: list[TracedMessage]
    errors: str
    screen: str
    workdir: Path

    def requests(self, method: str, direction: str = "received") -> list[TracedMessage]:
        return [m for m in self.messages if m.direction == direction and m.is_request and m.method == method]

    def responses(self, direction: str = "received") -> list[TracedMessage]:
        return [m for m in self.messages if m.direction == direction and not m.is_request]

    def summary(self, trace_lines: int = 60) -> str:
        """What to show when a test fails: exit code, counts, errors, and the end of the message trace."""
        trace = []
        for m in self.messages:
            arrow = ">>" if m.direction == "sent" else "<<"
            trace.append(f"{arrow} {m.transport} {m.raw.decode(errors='replace').rstrip()}")
        text = "\n".join(trace).splitlines()[-trace_lines:]
        return (
            f"--- SIPp {self.name}: exit {self.returncode}, successful={self.successful}, failed={self.failed}\n"
            f"--- errors:\n{self.errors.strip()[-3000:]}\n--- last messages:\n" + "\n".join(text)
        )


@dataclass
class Sipp:
    """One SIPp process: a scenario file from sipp_scenarios/, bound to local_ip:port (SIP_PORT by default)."""

    scenario: str
    local_ip: str
    workdir: Path
    name: str = ""
    remote: tuple[str, int] | None = None  # None: a UAS
    calls: int = 1
    transport: str = "u1"
    extra: Sequence[str] = ()
    timeout_s: int = SIPP_TIMEOUT_S
    port: int = SIP_PORT  # its SIP port (a second UAC on the same address needs another)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.scenario.removesuffix(".xml")
        self.dir = self.workdir / f"sipp-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def is_tcp(self) -> bool:
        return self.transport.startswith("t")

    def command(self) -> list[str]:
        binary = sipp_binary()
        if binary is None:
            raise RuntimeError("sipp not installed")
        media = free_port(self.local_ip, span=4)
        control = free_port(self.local_ip)
        cmd = [
            binary,
            "-sf", str(SCENARIOS / self.scenario),
            "-i", self.local_ip, "-p", str(self.port),
            "-t", self.transport,
            "-mi", self.local_ip, "-mp", str(media),
            "-ci", self.local_ip, "-cp", str(control),
            "-m", str(self.calls),
            "-s", DIALLED,
            "-nostdin",
            "-timeout", f"{self.timeout_s}s", "-timeout_error",
            "-trace_msg", "-message_file", str(self.dir / "messages.log"),
            "-trace_err", "-error_file", str(self.dir / "errors.log"),
            "-trace_stat", "-stf", str(self.dir / "stats.csv"), "-fd", "1",
            *self.extra,
        ]  # fmt: skip
        if self.remote is not None:
            cmd.append(f"{self.remote[0]}:{self.remote[1]}")
        return cmd

    def start(self, attempts: int = 3) -> Sipp:
        for attempt in range(attempts):
            self._start_once()
            assert self.proc is not None
            if self.proc.poll() is None or "Unable to bind" not in _read(self.dir / "errors.log"):
                break
            # Lost a race for a port (SIP, control or media) with another process on this machine: try again
            # (command() picks fresh control and media ports).
            (self.dir / f"errors-attempt{attempt}.log").write_text(_read(self.dir / "errors.log"))
            (self.dir / "errors.log").unlink(missing_ok=True)
        if self.remote is None and self.proc.poll() is not None:
            raise RuntimeError(f"SIPp {self.name} exited at start:\n{self.result().summary()}")
        return self

    def _start_once(self) -> None:
        transport = "tcp" if self.is_tcp else "udp"
        wait_port_free(self.local_ip, self.port, transport)
        cmd = self.command()
        (self.dir / "command.txt").write_text(" ".join(cmd) + "\n")
        screen = (self.dir / "screen.log").open("wb")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=screen, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
        screen.close()
        # Ready once its SIP socket is bound (listening, over TCP): a UAS must be before the call is placed;
        # a UAC that lost the port to another process exits at once with "Unable to bind".
        if self.remote is not None and self.is_tcp:
            return  # a TCP UAC connects out: nothing listens to observe
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or owns_socket(proc.pid, self.local_ip, self.port, transport),
                   f"SIPp {self.name} to bind {transport}:{self.local_ip}:{self.port}")  # fmt: skip

    def wait(self, timeout: float | None = None, retries: int = 2) -> SippResult:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout if timeout is not None else self.timeout_s + WAIT_MARGIN_S)
        except subprocess.TimeoutExpired:
            self.kill()
        result = self.result()
        if retries and result.returncode != 0 and "Unable to bind" in result.errors and not result.messages:
            # A port race lost after the SIP socket was bound (e.g. the control socket): nothing was sent yet.
            (self.dir / f"errors-lost-race{retries}.log").write_text(result.errors)
            (self.dir / "errors.log").unlink(missing_ok=True)
            self.start()
            return self.wait(timeout, retries - 1)
        return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def result(self) -> SippResult:
        rc = self.proc.returncode if self.proc is not None and self.proc.returncode is not None else -1
        ok, failed = _stat_counts(self.dir / "stats.csv")
        errors = _read(self.dir / "errors.log")
        return SippResult(self.name, rc, ok, failed, parse_trace_msg(self.dir / "messages.log"), errors,
                          _read(self.dir / "screen.log"), self.dir)  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _stat_counts(path: Path) -> tuple[int | None, int | None]:
    """SuccessfulCall(C) and FailedCall(C) from the last line of SIPp's -trace_stat CSV."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return None, None
    if len(lines) < 2:
        return None, None
    names = lines[0].split(";")
    values = lines[-1].split(";")
    row = dict(zip(names, values, strict=False))

    def num(key: str) -> int | None:
        try:
            return int(row[key])
        except (KeyError, ValueError):
            return None

    return num("SuccessfulCall(C)"), num("FailedCall(C)")


@contextlib.contextmanager
def running(*peers: Sipp) -> Iterator[tuple[Sipp, ...]]:
    """Start peers in order; make sure none outlives the block."""
    started: list[Sipp] = []
    try:
        for p in peers:
            started.append(p.start())
        yield peers
    finally:
        for p in started:
            p.kill()
