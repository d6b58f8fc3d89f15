"""Kamailio's dispatcher in front of stirgate nodes (examples/cluster/): the launcher the cluster tests
(test_cluster_e2e.py), `make cluster` (examples/cluster/run.py) and `make bench` (--mode cluster) share.

- `Front`: examples/cluster/kamailio.cfg in the foreground, its addresses and timers given as `-A` defines, its
  dispatcher list written from the destinations given; what the dispatcher thinks of each destination, and which
  one a Call-ID hashes to, read over its control socket (`kamcmd`).
- `node_config`: a stirgate node's YAML from examples/cluster/node1.yaml with the test's addresses, services and
  PKI; `destinations`: the dispatcher destinations of a node (one per worker).

Addresses (../shared/TOPOLOGY.md): peers send to the front at 127.0.0.3:5060; it relays calls from customers
(127.0.0.10) from 127.0.0.31 and calls from carriers (127.0.0.20) from 127.0.0.32, the sources of the nodes'
customer and carrier trunks; nodes on 127.0.0.1, 127.0.0.2, ...
"""

from __future__ import annotations

import copy
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.integration import harness
from tests.integration.kamailio import kamailio_binary, kamailio_command, launch
from tests.services import end_process

EXAMPLE = harness.ROOT / "examples" / "cluster"
FRONT_IP = "127.0.0.3"
CUSTOMERS_IP = "127.0.0.31"
CARRIERS_IP = "127.0.0.32"
SIP_PORT = 5060
WORKER_PORT_BASE = 5100

Addr = tuple[str, int]


def destinations(ip: str, workers: int, port: int = SIP_PORT, base: int = WORKER_PORT_BASE) -> list[Addr]:
    """Where the dispatcher sends a node's calls: each worker's own port (one worker: the listen port)."""
    return [(ip, port)] if workers <= 1 else [(ip, base + i) for i in range(workers)]


def interleave(per_node: Sequence[Sequence[Addr]]) -> list[Addr]:
    """Every node's worker 0, then every node's worker 1, ...: the order of examples/cluster/dispatcher.list (a
    destination down hands its calls to the next one: a dead node's workers then hand theirs to another node's
    workers, one each)."""
    return [node[i] for i in range(max(map(len, per_node), default=0)) for node in per_node if i < len(node)]


def uri(dest: Addr) -> str:
    return f"sip:{dest[0]}:{dest[1]}"


class Front:
    """Kamailio with examples/cluster/kamailio.cfg, started in the foreground (-DD -E), stopped by its PID."""

    def __init__(self, workdir: Path, dests: Sequence[Addr], *, ping_interval: int = 1, failover_ms: int = 1000,
                 children: int = 2, shm_mb: int = 64, public: Addr = (FRONT_IP, SIP_PORT),
                 customers: Addr = (CUSTOMERS_IP, SIP_PORT), carriers: Addr = (CARRIERS_IP, SIP_PORT),
                 customer_peers: str = "127.0.0.10/32", carrier_peers: str = "127.0.0.20/32",
                 debug: int = 2, list_file: Path | None = None, probe: bool = True) -> None:  # fmt: skip
        if kamailio_binary() is None:
            raise FileNotFoundError("kamailio not found (Debian package kamailio)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.dests = list(dests)
        self.public, self.customers, self.carriers = public, customers, carriers
        self.defines = {
            "PUBLIC_LISTEN": f"udp:{public[0]}:{public[1]}",
            "CUSTOMERS_LISTEN": f"udp:{customers[0]}:{customers[1]}",
            "CARRIERS_LISTEN": f"udp:{carriers[0]}:{carriers[1]}",
            "CUSTOMER_PEERS": f'"{customer_peers}"',
            "CARRIER_PEERS": f'"{carrier_peers}"',
            "PING_INTERVAL": str(ping_interval),
            "FAILOVER_MS": str(failover_ms),
            "CHILDREN": str(children),
        }
        self.shm_mb = shm_mb
        self.probe = probe  # False: destinations never probed (flag 0), e.g. a SIPp UAS that ignores OPTIONS
        self.debug = debug
        #: The dispatcher list: `list_file` as it is (it must name `dests`), else one written from `dests`.
        self.list_file = list_file
        self.list_path = list_file or workdir / "dispatcher.list"
        # A Unix socket path must stay under 108 bytes: not under pytest's deep tmp_path.
        self._ctl_dir = Path(tempfile.mkdtemp(prefix="kam-"))
        self.ctl = self._ctl_dir / "ctl"
        self.log_path = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._order: list[str] | None = None

    def write_list(self) -> Path:
        if self.list_file is not None:
            return self.list_file
        lines = ["# written by tests/integration/cluster.py: setid destination flags(8: probed) priority"]
        lines += [f"1 {uri(d)} {8 if self.probe else 0} 0" for d in self.dests]
        self.list_path.write_text("\n".join(lines) + "\n")
        return self.list_path

    def command(self) -> list[str]:
        defines = {**self.defines, "DS_LIST": f'"{self.write_list()}"', "CTL_SOCKET": f'"unix:{self.ctl}"'}
        return kamailio_command(EXAMPLE / "kamailio.cfg", shm_mb=self.shm_mb, extra=("--debug", str(self.debug)),
                                defines=[f"{name}={value}" for name, value in defines.items()])

    def start(self, seconds: float = 30.0) -> Front:
        for ip, port in (self.public, self.customers, self.carriers):
            harness.wait_port_free(ip, port, "udp")
        self.proc = proc = launch(self.command(), self.workdir, self.log_path)

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            if not all(harness.owns_socket(proc.pid, ip, port) for ip, port in (self.public, self.customers,
                                                                              self.carriers)):
                return False
            return self.ctl.exists() and self._rpc_ok("core.uptime")

        harness.wait_until(ready, "Kamailio to bind its sockets and answer on its control socket",
                           attempts=int(seconds / 0.1), interval=0.1)  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited with {proc.returncode}:\n{self.log_tail()}")
        return self

    # --- the dispatcher's view ------------------------------------------------------------------------------
    def rpc(self, *args: str, timeout: float = 5.0) -> str:
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        p = subprocess.run([kamcmd, "-s", f"unix:{self.ctl}", *args], capture_output=True, text=True,
                           timeout=timeout)  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {p.stdout}{p.stderr}")
        return p.stdout

    def _rpc_ok(self, *args: str) -> bool:
        try:
            self.rpc(*args, timeout=2.0)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            return False
        return True

    def flags(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags: first letter A(ctive), I(nactive), T(rying) or D(isabled);
        second P when probed."""
        out: dict[str, str] = {}
        current = None
        for line in self.rpc("dispatcher.list").splitlines():
            m = re.match(r"\s*URI:\s*(\S+)", line)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"\s*FLAGS:\s*(\S+)", line)
            if m and current is not None:
                out[current] = m.group(1)
                current = None
        return out

    def wait_state(self, dests: Sequence[Addr], active: bool, seconds: float = 30.0) -> None:
        """Until the dispatcher holds every one of `dests` active (or every one inactive)."""
        want = "A" if active else "I"
        harness.wait_until(lambda: all(self.flags().get(uri(d), "?")[:1] == want for d in dests),
                           f"dispatcher to mark {', '.join(map(uri, dests))} {'up' if active else 'down'} "
                           f"(now {self.flags()})", attempts=int(seconds / 0.1), interval=0.1)  # fmt: skip

    def slot(self, call_id: str) -> Addr:
        """The destination a Call-ID hashes to while every destination is up (algorithm 0). The slot indexes
        the set as the dispatcher holds it (dispatcher.list's order, not the file's)."""
        out = self.rpc("dispatcher.hash", str(len(self.dests)), call_id)
        m = re.search(r"slot:\s*(\d+)", out)
        if m is None:
            raise RuntimeError(f"dispatcher.hash: {out}")
        if self._order is None:
            self._order = list(self.flags())
        host, port = self._order[int(m.group(1))].removeprefix("sip:").rsplit(":", 1)
        return host, int(port)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> int | None:
        code = end_process(self.proc, seconds=10)
        shutil.rmtree(self._ctl_dir, ignore_errors=True)
        return code


# ----------------------------------------------------------------------------------------------- nodes
def node_config(path: Path, *, ip: str, redis_url: str, records: dict[str, Any], x5u: str, pki_dir: Path,
                policies: Path | None = None, sip: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """examples/cluster/node1.yaml for a node on `ip`: its services, the test PKI and x5u URL, a free API port."""
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLE / "node1.yaml").read_text())
    cfg["listen"] = [f"udp:{ip}:{SIP_PORT}"]
    cfg["sip"] = {**cfg["sip"], "drain_grace": 10.0, **(sip or {})}
    cfg["state"] = {**cfg["state"], "url": redis_url, "timeout_ms": 500, "retry_interval": 0.2}
    cfg["records"] = records
    cfg["api"] = {"listen": f"{ip}:{harness.free_port(ip, kind=socket.SOCK_STREAM)}"}
    stir = cfg["stir"]
    stir["trust_anchors"] = [str(pki_dir / "ca.pem")]
    stir["signing_profiles"][0].update(key=str(pki_dir / "sp.key"), x5u=x5u)
    stir["verify"].update(x5u_ca_file=str(pki_dir / "ca.pem"), x5u_allow_any_port=True)
    if policies is None:
        cfg.pop("policies", None)
    else:
        cfg["policies"] = str(policies)
    cfg["logging"] = {"level": "debug"}
    if extra:
        cfg = harness._merge(cfg, extra)
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
    return path


def wait_workers(dests: Sequence[Addr], seconds: float = 20.0) -> None:
    """Every worker answers an OPTIONS from the front's address with 200 (what the dispatcher's probe needs)."""
    deadline = time.monotonic() + seconds
    for d in dests:
        while harness.send_options(d, CUSTOMERS_IP) != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stirgate worker {uri(d)} never answered OPTIONS from {CUSTOMERS_IP} with 200")


def instance_of(dest: Addr) -> str | None:
    """The instance id of the worker at `dest` (the first 10 hex digits of the tags it makes): the prefix of the
    b_call_id of every call record it writes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((CUSTOMERS_IP, 0))
        s.settimeout(1.0)
        data, call_id = harness.options_request(s.getsockname(), dest)
        s.sendto(data, dest)
        try:
            while True:
                reply, _ = s.recvfrom(65535)
                if call_id.encode() in reply:
                    m = re.search(rb"\r\nTo:[^\r]*;tag=([0-9a-f]{10})", reply)
                    return m.group(1).decode() if m else None
        except (TimeoutError, OSError):
            return None
