"""The systems under test: how to configure, start, probe and stop each one."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .modes import ATTEST_PREFIX, MODES, Mode, Pki
from .procs import Addr, stop_process, tree_cpu_split, udp_bound

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PEERS = Path(os.environ.get("STIRGATE_PEERS_DIR", REPO.parent / "shared" / "peers"))


def _pinned(cpus: frozenset[int]) -> Callable[[], None]:
    """What the SUT's child runs before its program: keep it (and what it forks) on `cpus`."""
    return lambda: os.sched_setaffinity(0, cpus)


def kamailio_command(exe: str, config: Path, shm_mb: int, defines: tuple[str, ...] = ()) -> list[str]:
    """Kamailio in the foreground, logging to stderr, on `config` (`shm_mb` of shared memory, 32 MB per process);
    each of `defines` as `-A`. The bench's SUT and its TLS front both start it so."""
    return [exe, "-DD", "-E", "-m", str(shm_mb), "-M", "32", *(a for d in defines for a in ("-A", d)), "-f",
            str(config)]


def kamailio_binary() -> str:
    return shutil.which("kamailio") or "/usr/sbin/kamailio"


def sip_probe(src: Addr, dst: Addr, max_forwards: int = 70, timeout: float = 0.5) -> int | None:
    """Send one OPTIONS from `src` to `dst`; the status code of the first response, or None."""
    got = sip_probe_full(src, dst, max_forwards, timeout)
    return None if got is None else got[0]


def sip_probe_full(src: Addr, dst: Addr, max_forwards: int = 70,
                   timeout: float = 0.5) -> tuple[int, bytes] | None:
    """Send one OPTIONS from `src` to `dst`; (status, raw response) of the first response, or None."""
    branch = f"z9hG4bK-bench-{random.getrandbits(48):x}"
    msg = (
        f"OPTIONS sip:{dst} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src};branch={branch};rport\r\n"
        f"From: <sip:bench@{src.host}>;tag=bench{random.getrandbits(32):x}\r\n"
        f"To: <sip:{dst}>\r\n"
        f"Call-ID: bench-probe-{random.getrandbits(64):x}@{src.host}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src.host, src.port))
        s.settimeout(timeout)
        s.sendto(msg, (dst.host, dst.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            parts = data.split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"SIP/2.0" and branch.encode() in data:
                try:
                    return int(parts[1]), data
                except ValueError:
                    continue
        return None
    except OSError:
        return None  # source address busy
    finally:
        s.close()


def to_tag(response: bytes) -> str:
    for line in response.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"to", b"t"):
            _, _, tag = value.partition(b";tag=")
            return tag.split(b";")[0].strip().decode(errors="replace")
    return ""


class SUT:
    """One system under test, restarted for every step so that steps do not inherit load."""

    name = "?"
    label = "?"

    def __init__(self, listen: Addr, uas: Addr, uacs: list[Addr], workdir: Path) -> None:
        self.listen = listen
        self.uas = uas
        self.uacs = uacs
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.step_uacs: list[Addr] | None = None  # UAC addresses chosen at start (None: as configured)
        self.notes: list[str] = []
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self.mode: Mode = MODES["relay"]
        self.pki: Pki | None = None
        self._cpu_known: set[int] | None = None
        #: The CPUs the SUT's processes run on (`--pin-sut`; None: wherever the kernel puts them).
        self.cpus: frozenset[int] | None = None

    def set_mode(self, mode: Mode, pki: Pki | None) -> None:
        self.mode = mode
        self.pki = pki

    # --- overridden -----------------------------------------------------------------------------------
    def available(self) -> str | None:
        """None when the SUT can run here, else why not."""
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"listen": str(self.listen), "command": " ".join(self.command())}

    def env(self) -> dict[str, str] | None:
        """The environment of the SUT process (None: the bench's own)."""
        return None

    # --- common ---------------------------------------------------------------------------------------
    def cpu_sample(self) -> tuple[float, dict[str, float]]:
        """CPU seconds (utime + stime) the SUT's processes used so far, and its parts: here `kernel`, the stime
        of that total (one process tree). Processes seen at the first sample of a step stay counted while they
        live, even if they leave the tree."""
        total, kernel, self._cpu_known = tree_cpu_split(self.pid, self._cpu_known)
        return total, {"kernel": kernel}

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self.step_uacs = None
        self.notes = []
        self._cpu_known = None
        self.log_path = stepdir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
            env=self.env(),
            preexec_fn=None if self.cpus is None else _pinned(self.cpus),
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start: see {self.log_path}")
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {ready_timeout:.0f} s: see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, term_wait=8.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def extra_addrs(self) -> list[Addr]:
        """Other UDP addresses the SUT binds (must be free before a step)."""
        return []

    def engine_stats(self) -> list[dict[str, object]]:
        return []

    def sockets_on_listen(self) -> int:
        return udp_bound(self.listen.host, self.listen.port)


class Stirgate(SUT):
    name = "stirgate"

    def __init__(self, *a: object, workers: int = 1, log_level: str = "info", worker_port_base: int = 5100,
                 records: bool = False, max_calls_in_setup: int = 100, exe: Path | None = None,
                 origin: str = "", hep_listen: Addr | None = None, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.hep_listen = hep_listen
        #: Mode tls: stirgate's TLS listen address and the bench certificates (bench/tls_front.py).
        self.tls_listen: Addr | None = None
        self.tls_files: object = None
        self.records = records
        self.max_calls_in_setup = max_calls_in_setup
        self.workers = workers
        self.worker_port_base = worker_port_base
        self.log_level = log_level
        extra = (", records" if records else "") + (f", {origin}" if origin else "")
        self.label = f"stirgate ({workers} worker{'s' if workers > 1 else ''}{extra})"
        self.config = self.workdir / "stirgate-bench.yaml"
        self.exe = exe or VENV_BIN / "stirgate"  # default: the checkout's editable install
        #: The two SIPp trunks' transport; tcp also listens on TCP at `listen` (UDP stays, for the probes).
        self.trunk_transport = "udp"
        #: stir.verify.iat_max_age when a run verifies PASSporTs signed longer ago than the default 60 s allows.
        self.iat_max_age: int | None = None

    def available(self) -> str | None:
        if not self.exe.exists():
            return f"{self.exe} not installed"
        try:
            r = subprocess.run([str(self.exe), "--help"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"stirgate --help failed: {e}"
        if r.returncode != 0:
            return f"stirgate --help exited {r.returncode}: {r.stderr.decode(errors='replace')[-300:]}"
        return None

    def write_config(self) -> None:
        self.config.write_text(self.config_text())

    def config_text(self) -> str:
        """The generated config: relay as before; sign adds a `sign:` block to the customer trunk; verify makes
        the UAC(s) a carrier trunk with `verify: {mode: reject}`; flood adds an `overload:` block."""
        sources = ", ".join(sorted({a.host for a in self.uacs}))
        mode, pki = self.mode.name, self.pki
        tt = self.trunk_transport
        sign = ""
        if mode in ("sign", "redirect"):
            sign = f"""    sign:
      profile: bench
      attestation:
        prefixes: ["{ATTEST_PREFIX}"]     # the UAC's From (+1202...) is attested A
"""
        if mode == "redirect":
            sign += "    mode: redirect              # INVITEs answered 302 with the Identity in the Contact\n"
        if mode == "verify":
            trunks = f"""trunks:
  - name: carrier           # the UAC(s): every INVITE carries an Identity, verified; failures rejected
    role: carrier
    sources: [{sources}]
    destination: {self.uacs[0]}
    transport: {tt}
    verify:
      mode: reject
      on_missing: reject
  - name: customer
    role: customer
    sources: [{self.uas.host}]
    destination: {self.uas}
    transport: {tt}

routes:
  - from: [carrier]
    prefix: ""
    trunks: [customer]
  - from: [customer]
    prefix: ""
    trunks: [carrier]
"""
        else:
            trunks = f"""trunks:
  - name: customer
    role: customer
    sources: [{sources}]
    destination: {self.uacs[0]}
    transport: {tt}
{sign}  - name: carrier
    role: carrier
    sources: [{self.uas.host}]
    destination: {self.uas}
    transport: {tt}

routes:
  - from: [customer]
    prefix: ""
    trunks: [carrier]
  - from: [carrier]
    prefix: ""
    trunks: [customer]
"""
        stir = ""
        if pki is not None and mode in ("sign", "verify", "redirect"):
            stir = f"""
stir:
  trust_anchors: [{pki.ca}]
  signing_profiles:
    - name: bench
      key: {pki.key}
      x5u: {pki.x5u}
  verify:
    x5u_allow_private: true     # the bench's x5u server is on loopback, on a non-standard port
    x5u_allow_any_port: true
    x5u_ca_file: {pki.ca}
"""
            if self.iat_max_age is not None:
                stir += f"    iat_max_age: {self.iat_max_age}        # PASSporTs signed before a long set-up\n"
        if self.mode.tls:
            trunks = self.tls_trunks(sources)
        overload = ""
        if mode == "flood":
            overload = f"""
# Flood mode: shed new INVITEs with 503 + Retry-After beyond this many calls in set-up (other bounds default).
overload:
  max_calls_in_setup: {self.max_calls_in_setup}
"""
        if self.mode.hep and self.hep_listen is not None:
            overload += f"""
# HEP capture of every message (bench.hep_sink receives and discards).
hep:
  address: {self.hep_listen}
  capture_id: 2001
  transport: {self.mode.hep}
"""
        more_listens = f"\n  - tls:{self.tls_listen}" if self.mode.tls else ""
        if tt == "tcp":
            more_listens += f"\n  - tcp:{self.listen}"
        return f"""# Generated by `python -m bench --mode {mode}`: stirgate between the SIPp UAC(s) and the SIPp UAS.
listen:
  - udp:{self.listen}{more_listens}

unknown_source: reject

sip:
  worker_port_base: {self.worker_port_base}   # with --workers N, worker i owns UDP port base+i for its B-legs
  drain_grace: 2.0          # SIGTERM between steps: do not wait 30 s for calls an overload left behind

{trunks}
logging:
  level: {self.log_level}
{stir}{overload}
# The SIP path only, like Kamailio's plain relay (no accounting): call records off unless --records;
# the HTTP API off (its 127.0.0.1:8080 belongs to the tests' stirgate while they run).
records:
  enabled: {"true" if self.records else "false"}
  path: {self.workdir / "records.sqlite3"}
api:
  enabled: false
"""

    def tls_trunks(self, sources: str) -> str:
        """Mode tls: both trunks over mutual TLS to the Kamailio front; the UACs' addresses stay a UDP trunk for
        the readiness probes."""
        from .tls_front import FRONT_A, FRONT_B, TlsFiles

        files = self.tls_files
        assert isinstance(files, TlsFiles) and self.tls_listen is not None
        port = self.tls_listen.port
        tls = (f"    tls: {{ca_file: {files.ca}, cert_file: {files.cert['sut']}, key_file: {files.key['sut']}}}")
        return f"""trunks:
  - name: customer
    role: customer
    sources: [{FRONT_A}]
    destination: {FRONT_A}:{port}
    transport: tls
{tls}
  - name: carrier
    role: carrier
    sources: [{FRONT_B}]
    destination: {FRONT_B}:{port}
    transport: tls
{tls}
  - name: probe
    role: carrier
    sources: [{sources}]
    transport: udp

routes:
  - from: [customer]
    prefix: ""
    trunks: [carrier]
  - from: [carrier]
    prefix: ""
    trunks: [customer]
"""

    def command(self) -> list[str]:
        return [str(self.exe), "run", "-c", str(self.config), "--workers", str(self.workers)]

    def extra_addrs(self) -> list[Addr]:
        if self.workers <= 1:
            return []
        return [Addr(self.listen.host, self.worker_port_base + i) for i in range(self.workers)]

    def engine_stats(self) -> list[dict[str, object]]:
        """The per-worker counters stirgate logs when it stops (event "stopped", level info)."""
        out: list[dict[str, object]] = []
        if self.log_path is None or not self.log_path.exists():
            return out
        with open(self.log_path, errors="replace") as f:
            for line in f:
                if '"stopped"' not in line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "stopped":
                    out.append({k: v for k, v in ev.items() if k not in ("event", "level", "timestamp", "logger")})
        return out

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self.write_config()
        super().start(stepdir, ready_timeout)

    def ready(self) -> bool:
        # Probe from each UAC's own address: SO_REUSEPORT hashes the address pair, so this reaches the
        # very worker that will serve that UAC.
        if not all(sip_probe(src, self.listen) == 200 for src in self.uacs):
            return False
        if self.workers > 1:
            self.balance()
        return True

    def balance(self) -> None:
        """With N workers, give the N UACs source ports that land on N different workers.

        SO_REUSEPORT picks the socket by a hash of the address pair: two source addresses land on the
        same worker half of the time. A worker is recognised by the per-process prefix of the tags it
        makes (stirgate's engine: 10 hex digits, then a counter); a probe answered by the same prefix
        came from the same worker. If this cannot be told, the configured ports are kept and a note says so.
        """
        chosen: list[Addr] = []
        seen: set[str] = set()
        for base in self.uacs:
            pick = None
            for k in range(0, 40):
                cand = Addr(base.host, base.port + k)
                got = sip_probe_full(cand, self.listen)
                if got is None or got[0] != 200:
                    continue
                worker = to_tag(got[1])[:10]
                if not worker:
                    break
                if worker not in seen or len(seen) >= self.workers:
                    pick = cand
                    seen.add(worker)
                    break
            if pick is None:
                self.notes.append(f"could not place UAC {base} on its own worker: configured port kept")
                pick = base
            chosen.append(pick)
        self.step_uacs = chosen
        if len(seen) < min(self.workers, len(self.uacs)):
            self.notes.append(f"UACs reach {len(seen)} worker(s) only")


class Kamailio(SUT):
    name = "kamailio"
    label = "Kamailio 5.6 (plain relay)"

    def __init__(self, *a: object, pike: bool = True, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.pike = pike
        #: Mode tls: Kamailio's TLS listen address, the front it relays to, the bench certificates.
        self.tls_listen: Addr | None = None
        self.tls_next_hop: str = ""
        self.tls_files: object = None
        self.config = self.workdir / "kamailio-bench.cfg"
        self.exe = kamailio_binary()

    def set_mode(self, mode: Mode, pki: Pki | None) -> None:
        super().set_mode(mode, pki)
        self.label = "Kamailio 5.6 " + {
            "sign": "+ secsipid (MODE_SIGN)",
            "verify": "+ secsipid (MODE_VERIFY, x5u + cache_dir)",
            "flood": "relay + pike (defaults)" if self.pike else "relay, no pike",
            "tls": "(stateful relay, tls module)",
        }.get(mode.name, "(plain relay)")

    def available(self) -> str | None:
        if not os.access(self.exe, os.X_OK):
            return "kamailio not installed (make sysdeps-bench)"
        if not (PEERS / "kamailio.cfg.in").exists():
            return f"{PEERS / 'kamailio.cfg.in'} missing"
        return None

    def write_config(self) -> None:
        text = (PEERS / "kamailio.cfg.in").read_text()
        cache = self.workdir / "kamailio-cache"
        cache.mkdir(exist_ok=True)
        pki = self.pki
        for key, val in {
            "@NEXTHOP@": f"sip:{self.uas}",
            "@X5U@": pki.x5u if pki else "https://127.0.0.1:8443/sp.pem",
            "@KEY@": str(pki.key if pki else self.workdir / "unused.key"),
            "@CERT@": str(pki.cert if pki else self.workdir / "unused.pem"),
            "@CACHE@": str(cache),
            "@CTL@": str(self.workdir / "kamailio-ctl.sock"),
        }.items():
            text = text.replace(key, val)
        # The template listens on 127.0.0.1:5070; follow --port-offset / --peer-listen.
        text = text.replace("udp:127.0.0.1:5070", f"udp:{self.listen}")
        text = text.replace('alias="127.0.0.1:5070"', f'alias="{self.listen}"')
        if self.mode.flood and self.pike:
            text = add_pike(text)
        if self.mode.tls:
            text = self.add_tls(text)
        self.config.write_text(text)

    def add_tls(self, text: str) -> str:
        """Mode tls: TCP on, a TLS listener, the tls module (mutual TLS with the bench CA), next hop over TLS."""
        from .tls_front import TlsFiles, kamailio_tls_cfg

        files = self.tls_files
        assert isinstance(files, TlsFiles) and self.tls_listen is not None
        tls_cfg = self.workdir / "kamailio-bench-tls.cfg"
        tls_cfg.write_text(kamailio_tls_cfg(files, "sut", require_client_cert=True))
        text = text.replace("disable_tcp=yes", "enable_tls=yes\ntcp_children=NCHILD\ntcp_connection_lifetime=3605")
        text = text.replace(f"listen=udp:{self.listen}", f"listen=udp:{self.listen}\nlisten=tls:{self.tls_listen}")
        text = text.replace('loadmodule "ctl.so"\n',
                            f'loadmodule "ctl.so"\nloadmodule "tls.so"\nmodparam("tls", "config", "{tls_cfg}")\n', 1)
        return text.replace(f'"!UAS!sip:{self.uas}!g"', f'"!UAS!{self.tls_next_hop}!g"')

    def command(self) -> list[str]:
        defines = (self.mode.kamailio_define,) if self.mode.kamailio_define else ()
        return kamailio_command(self.exe, self.config, 4096, defines)

    def env(self) -> dict[str, str] | None:
        # secsipid fetches x5u with Go's net/http, which trusts SSL_CERT_FILE: the bench CA.
        if self.pki is None:
            return None
        return {**os.environ, "SSL_CERT_FILE": str(self.pki.ca)}

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self.write_config()
        super().start(stepdir, ready_timeout)

    def ready(self) -> bool:
        # Max-Forwards 0 gets "483 Too Many Hops" from the request route: any answer means it routes.
        return sip_probe(Addr(self.uacs[0].host, 0), self.listen, max_forwards=0) is not None


class Sippy(SUT):
    name = "sippy"
    label = "Sippy B2BUA 2.5 (b2bua_simple)"

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.exe = VENV_BIN / "b2bua_simple"
        self._bound_since: float | None = None

    def available(self) -> str | None:
        if not self.exe.exists():
            return f"{self.exe} missing: {VENV_BIN / 'pip'} install sippy"
        return None

    def command(self) -> list[str]:
        return [
            str(self.exe), "-f", "-l", self.listen.host, "-p", str(self.listen.port),
            "-n", str(self.uas), "-L", str(self.workdir / "sippy.log"),
        ]

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self._bound_since = None
        super().start(stepdir, ready_timeout)

    def ready(self) -> bool:
        # b2bua_simple may not answer OPTIONS at all: ready once its socket is bound and it either
        # answers a probe or has been bound for a second.
        if self.sockets_on_listen() == 0:
            return False
        if sip_probe(Addr(self.uacs[0].host, 0), self.listen, max_forwards=0, timeout=0.3) is not None:
            return True
        now = time.monotonic()
        if self._bound_since is None:
            self._bound_since = now
        return now - self._bound_since > 1.0


PIKE_LOAD = 'loadmodule "pike.so"\n'
PIKE_CHECK = """\t# bench flood mode: pike with its default settings (2 s sampling unit, 30 requests per unit
\t# per source, 120 s removal latency); a source over the density is dropped silently, as Kamailio's
\t# default config does.
\tif (!pike_check_req()) {
\t\texit;
\t}
"""


def add_pike(cfg: str) -> str:
    """The Kamailio template with pike loaded (defaults) and checked on every request, first thing."""
    cfg = cfg.replace('loadmodule "ctl.so"\n', 'loadmodule "ctl.so"\n' + PIKE_LOAD, 1)
    return cfg.replace("request_route {\n", "request_route {\n" + PIKE_CHECK, 1)
