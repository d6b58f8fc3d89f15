"""Bench modes: what the SUTs do to each call (relay, sign, verify, flood) and what the UAC sends.

- relay: plain relay (the original bench).
- sign: stirgate's customer trunk signs (attest A by prefix) / Kamailio `-A MODE_SIGN` (secsipid_add_identity),
  both with the same demo key and x5u URL.
- verify: the UAC sends a valid Identity on every INVITE (one freshly signed PASSporT per call, iat = just
  before the step, through a SIPp injection file); the certificate is served by `proxy.stir.x5u_server` and
  cached after the first fetch. stirgate: the UAC is a carrier trunk with `verify: {mode: reject}`;
  Kamailio `-A MODE_VERIFY` (secsipid_check_identity with x5u fetch and cache_dir).
- flood: the plain relay scenario, but the UAC also accepts a 503 (and ACKs it); stirgate has an `overload:`
  block, Kamailio loads pike with its default settings. A step passes when every INVITE gets an answer (200 or
  503) with p99 <= 200 ms at >= 97 % of the offered rate. After the sweep, the fairness steps of
  bench/fairness.py (a flooding trunk at 2x/5x/10x capacity beside a modest one; also `--mode fairness` alone).
- redirect: stirgate's customer trunk in `mode: redirect` with the same signing set-up as `sign`: each INVITE
  gets a 302 whose Contact carries the Identity (checked by the UAC), then an ACK; no B-leg, no BYE. stirgate
  only (the peers have no redirect STI mode). Compared with `sign`: CPU per redirect <= 60 % of a signed call.
- rest (bench/rest.py, not a SIP sweep): the ATIS-1000082 API under a keep-alive HTTP load (wrk), signing and
  verification: requests/s and CPU per request, compared with `sign` / `verify` (target: within 1.5x).
- hep, hep-tcp: the plain relay with HEP capture on (`hep:` to `python -m bench.hep_sink` over UDP, or over TCP):
  what a HEPv3 copy of every message costs per call (stirgate only; compared with its relay, same run).
- tls: the plain relay over TLS on both trunks, SIPp reaching the SUT through a Kamailio TLS front
  (bench/tls_front.py): stirgate against Kamailio with its tls module, same front and load.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .procs import Addr, stop_process
from .sipp import SCENARIOS

ORIG = "+12025550100"   # the UAC's From user (bench/scenarios/uac*.xml)
DEST = "12025550199"    # the UAC's service (-s)
ATTEST_PREFIX = "1202"  # stirgate attests A for orig TNs starting with it (the UAC's From is +1202...)
MAX_POOL = 60_000       # signed Identity values per step at most; SIPp cycles through the file beyond


@dataclass(frozen=True)
class Mode:
    name: str
    uac_scenario: Path
    kamailio_define: str | None     # -A NAME for the Kamailio template
    needs_pki: bool = False
    needs_x5u_server: bool = False
    identity_pool: bool = False     # the UAC sends a fresh Identity (SIPp -inf file)
    flood: bool = False
    redirect: bool = False          # stirgate answers 302 (mode: redirect); the UAS sees nothing
    hep: str | None = None          # HEP capture on, over this transport (stirgate only)
    tls: bool = False               # the SUT behind the Kamailio TLS front (bench/tls_front.py)


MODES: dict[str, Mode] = {
    "relay": Mode("relay", SCENARIOS / "uac.xml", None),
    "sign": Mode("sign", SCENARIOS / "uac.xml", "MODE_SIGN", needs_pki=True),
    "verify": Mode("verify", SCENARIOS / "uac_identity.xml", "MODE_VERIFY", needs_pki=True,
                   needs_x5u_server=True, identity_pool=True),
    "flood": Mode("flood", SCENARIOS / "uac_flood.xml", None, flood=True),
    "redirect": Mode("redirect", SCENARIOS / "uac_redirect.xml", None, needs_pki=True, redirect=True),
    "hep": Mode("hep", SCENARIOS / "uac.xml", None, hep="udp"),
    "hep-tcp": Mode("hep-tcp", SCENARIOS / "uac.xml", None, hep="tcp"),
    "tls": Mode("tls", SCENARIOS / "uac.xml", None, tls=True),
}
SIP_MODES = tuple(MODES)
STANDALONE_MODES = ("crypto", "policies", "records", "records-pg", "campaigns", "policy-path")
#: Not SIPp sweeps: run after them, in the same run (they need the PKI and x5u server the SIP modes use).
SERVICE_MODES = ("rest",)


@dataclass
class Pki:
    """The demo PKI of `stirgate certs init` in the run folder, and the x5u URL its SP certificate is served at."""

    dir: Path
    x5u: str

    @property
    def key(self) -> Path:
        return self.dir / "sp.key"

    @property
    def cert(self) -> Path:
        return self.dir / "sp.pem"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"


def make_pki(rundir: Path, exe: Path, x5u_listen: Addr) -> Pki:
    d = rundir / "pki"
    r = subprocess.run([str(exe), "certs", "init", str(d)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not (d / "sp.key").exists():
        raise RuntimeError(f"stirgate certs init failed: {r.stdout[-300:]} {r.stderr[-300:]}")
    return Pki(d, f"https://{x5u_listen}/sp.pem")


class X5uServer:
    """`python -m proxy.stir.x5u_server` over the run's PKI folder, for the whole run (stopped by PID)."""

    def __init__(self, python: Path, pki: Pki, listen: Addr, logdir: Path) -> None:
        self.python = python
        self.pki = pki
        self.listen = listen
        self.log = logdir / "x5u-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        import socket
        import ssl

        out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "proxy.stir.x5u_server", "--dir", str(self.pki.dir), "--listen", str(self.listen)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"x5u server exited: see {self.log}")
            try:
                with (socket.create_connection((self.listen.host, self.listen.port), timeout=1) as s,
                      ctx.wrap_socket(s, server_hostname=self.listen.host) as t):
                    t.sendall(b"GET /sp.pem HTTP/1.0\r\nHost: x\r\n\r\n")
                    if t.recv(64).split(b" ")[1:2] == [b"200"]:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"x5u server not ready on {self.listen}: see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, term_wait=5.0)


def write_identity_pool(pki: Pki, path: Path, calls: int, now: float | None = None,
                        cap: int | None = MAX_POOL) -> tuple[int, float]:
    """A SIPp injection file (SEQUENTIAL; field0 = JWS token, field1 = x5u URL: SIPp splits fields on ';')
    with one freshly signed shaken PASSporT per call, iat = now, at most `cap` (None: one per call, as held
    dialogs need: SIPp cycling through the file would repeat an origid). Returns (values written, seconds)."""
    from proxy.stir.signer import Signer, SigningProfile

    t0 = time.monotonic()
    now = time.time() if now is None else now
    signer = Signer(SigningProfile("bench", str(pki.key), pki.x5u))
    n = max(1, calls if cap is None else min(calls, cap))
    lines = ["SEQUENTIAL"]
    for _ in range(n):
        value = signer.sign(ORIG, [DEST], "A", str(uuid.uuid4()), now)
        token = value.split(";", 1)[0]
        lines.append(f"{token};{pki.x5u}")
    path.write_text("\n".join(lines) + "\n")
    return n, time.monotonic() - t0


class HepSink:
    """`python -m bench.hep_sink` for the modes with HEP capture (stopped by PID)."""

    def __init__(self, python: Path, listen: Addr, transport: str, logdir: Path) -> None:
        self.python = python
        self.listen = listen
        self.transport = transport
        self.log = logdir / f"hep-sink-{transport}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "bench.hep_sink", "--listen", str(self.listen), "--transport", self.transport],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HEP sink exited: see {self.log}")
            if b"listening" in self.log.read_bytes():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"HEP sink not ready on {self.listen}: see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, term_wait=5.0)
