"""What the TLS and HEP tests need beside harness.py and stir_env.py.

- a TLS PKI made in the test with `cryptography`: an interconnect CA that every party trusts, a second CA
  nobody trusts, and P-256 leaf certificates (serverAuth + clientAuth, IP and DNS names) for each party;
- Python `ssl` clients that speak SIP over TLS to stirgate (the mutual-TLS, keep-alive and stall tests);
- the pjsua2 TLS agent (tests/integration/pjsua2_tls_agent.py) run as a bounded subprocess;
- a HEPv3 reader written from the protocol layout (independent of proxy.hep) and a UDP tee that records every
  HEP packet and forwards it to a real receiver (sngrep), plus a reader for the pcap sngrep writes.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration import harness

TLS_PORT = 5061 + harness.PORT_OFFSET
AGENT = Path(__file__).with_name("pjsua2_tls_agent.py")


# ----------------------------------------------------------------------------------------------- PKI
@dataclass(frozen=True)
class Party:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stirgate tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


class TlsPki:
    """CAs and leaf certificates written to `directory`; `trusted.ca`/`untrusted.ca` are the CA files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.now = datetime.datetime.now(datetime.UTC)
        self._cas: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
        self.ca = self._ca("trusted", "interconnect test CA")
        self.untrusted_ca = self._ca("untrusted", "nobody trusts this CA")

    def _ca(self, label: str, cn: str) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(days=1))
            .not_valid_after(self.now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        self._cas[label] = (cert, key)
        path = self.dir / f"{label}-ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def leaf(self, label: str, *, dns: str, ip: str | None = None, issuer: str = "trusted") -> Party:
        """A leaf certificate for `dns` (and `ip`), usable as TLS server and client, issued by `issuer`."""
        ca_cert, ca_key = self._cas[issuer]
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(dns)]
        if ip is not None:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        cert = (
            x509.CertificateBuilder().subject_name(_name(dns)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(days=1))
            .not_valid_after(self.now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        cert_path = self.dir / f"{label}.pem"
        key_path = self.dir / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        key_path.chmod(0o600)
        return Party(cert_path, key_path)


def tls_block(pki: TlsPki, me: Party, server_name: str | None = None, **more: Any) -> dict[str, Any]:
    """A trunk's `tls:` settings: trust the interconnect CA, present `me`."""
    block: dict[str, Any] = {"ca_file": str(pki.ca), "cert_file": str(me.cert), "key_file": str(me.key),
                             "verify_peer": True, "min_version": "TLSv1.2"}  # fmt: skip
    if server_name is not None:
        block["server_name"] = server_name
    block.update(more)
    return block


# ----------------------------------------------------------------------------------------------- SIP over TLS
def client_context(pki: TlsPki, me: Party | None, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca))
    if me is not None:
        ctx.load_cert_chain(str(me.cert), str(me.key))
    return ctx


def options_over(sock: socket.socket, src: tuple[str, int], transport: str = "TLS") -> bytes:
    """Send one OPTIONS on an open stream socket; its bytes."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    msg = (
        f"OPTIONS sip:{harness.STIRGATE_IP}:{TLS_PORT};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {src[0]}:{src[1]};branch={branch}\r\n"
        f"From: <sip:probe@{src[0]}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{harness.STIRGATE_IP}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    sock.sendall(msg)
    return msg


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes | None:
    """The first SIP response on a stream socket (None when it closed or stayed silent for `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (TimeoutError, OSError):
        return None
    return data


def tls_connect(ctx: ssl.SSLContext, src_ip: str, server_hostname: str = harness.STIRGATE_IP,
                port: int = TLS_PORT) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind((src_ip, 0))
    raw.settimeout(10)
    raw.connect((harness.STIRGATE_IP, port))
    return ctx.wrap_socket(raw, server_hostname=server_hostname)


def closed_by_peer(sock: socket.socket, within: float = 15.0) -> bool:
    """True when the peer closes (or resets, or refuses TLS on) the connection before `within` seconds."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):
                return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    return False


# ----------------------------------------------------------------------------------------------- pjsua2 over TLS
def run_tls_agent(spec: dict[str, Any], workdir: Path, timeout: float = 90) -> dict[str, Any]:
    """Run pjsua2_tls_agent.py with `spec` (see its docstring); the JSON it printed."""
    spec_path = workdir / f"agent-{uuid.uuid4().hex[:6]}.json"
    spec_path.write_text(json.dumps(spec))
    log = workdir / f"{spec_path.stem}.log"
    proc = subprocess.run([sys.executable, str(AGENT), str(spec_path), "--log", str(log)],
                          capture_output=True, timeout=timeout, cwd=harness.ROOT)  # fmt: skip
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"pjsua2 TLS agent exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]!r}\nstderr:\n{proc.stderr[-3000:]!r}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    result["_log"] = str(log)
    return result


def describe(r: dict[str, Any]) -> str:
    return "pjsua2 events:\n  " + "\n  ".join(r.get("events", [])) + f"\n(pjsip log: {r.get('_log')})"


# ----------------------------------------------------------------------------------------------- HEP
@dataclass
class HepPacket:
    """One HEPv3 packet, read chunk by chunk from the wire layout (vendor, type, length incl. header, value)."""

    chunks: dict[int, bytes]
    order: list[int]

    def u8(self, kind: int) -> int:
        return self.chunks[kind][0]

    def u16(self, kind: int) -> int:
        return int(struct.unpack("!H", self.chunks[kind])[0])

    def u32(self, kind: int) -> int:
        return int(struct.unpack("!I", self.chunks[kind])[0])

    def ip(self, kind: int) -> str:
        return str(ipaddress.ip_address(self.chunks[kind]))

    @property
    def src(self) -> tuple[str, int]:
        return (self.ip(3 if 3 in self.chunks else 5), self.u16(7))

    @property
    def dst(self) -> tuple[str, int]:
        return (self.ip(4 if 4 in self.chunks else 6), self.u16(8))

    @property
    def payload(self) -> bytes:
        return self.chunks[15]

    @property
    def correlation(self) -> bytes:
        return self.chunks.get(17, b"")


def read_hep(data: bytes) -> HepPacket:
    assert data[:4] == b"HEP3", data[:16]
    total = struct.unpack("!H", data[4:6])[0]
    assert total == len(data), (total, len(data))
    chunks: dict[int, bytes] = {}
    order: list[int] = []
    pos = 6
    while pos < total:
        vendor, kind, length = struct.unpack("!HHH", data[pos : pos + 6])
        assert vendor == 0 and length >= 6 and pos + length <= total, (vendor, kind, length, pos, total)
        chunks[kind] = data[pos + 6 : pos + length]
        order.append(kind)
        pos += length
    return HepPacket(chunks, order)


def split_hep_stream(data: bytes) -> list[bytes]:
    """HEP packets back to back on a TCP stream."""
    out = []
    pos = 0
    while pos + 6 <= len(data):
        total = struct.unpack("!H", data[pos + 4 : pos + 6])[0]
        if pos + total > len(data):
            break
        out.append(data[pos : pos + total])
        pos += total
    return out


@dataclass
class HepTee:
    """A UDP HEP receiver on 127.0.0.1 (thread) recording every packet; with `forward`, each packet is passed
    on unchanged to that address (a real capture server)."""

    forward: tuple[str, int] | None = None
    packets: list[HepPacket] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((harness.STIRGATE_IP, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hep-tee")

    @property
    def address(self) -> str:
        return f"{harness.STIRGATE_IP}:{self.port}"

    def start(self) -> HepTee:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.raw.append(data)
            self.packets.append(read_hep(data))
            if self.forward is not None:
                self.out.sendto(data, self.forward)

    def wait_for(self, predicate: Any, what: str, seconds: float = 15.0) -> None:
        harness.wait_until(lambda: predicate(self.packets), what, attempts=int(seconds / 0.05), interval=0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.out.close()


class Sngrep:
    """`sngrep -N -q -L udp:127.0.0.1:PORT -O FILE`: a real HEP receiver writing what it understood as pcap."""

    def __init__(self, workdir: Path, config: Path | None = None) -> None:
        self.port = harness.free_port(harness.STIRGATE_IP)
        self.config = config
        self.pcap = workdir / "sngrep.pcap"
        self.log = workdir / "sngrep.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sngrep:
        out = self.log.open("wb")
        conf = ["-f", str(self.config)] if self.config is not None else ["-F"]
        self.proc = subprocess.Popen(["sngrep", "-N", "-q", *conf, "-L", f"udp:{harness.STIRGATE_IP}:{self.port}",
                                      "-O", str(self.pcap)],
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        out.close()
        proc = self.proc
        harness.wait_until(lambda: proc.poll() is not None
                           or harness.owns_socket(proc.pid, harness.STIRGATE_IP, self.port, "udp"),
                           "sngrep to listen for HEP")  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"sngrep exited {proc.returncode}: {self.log.read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        """SIGINT: sngrep closes its pcap dump on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@dataclass(frozen=True)
class PcapFrame:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_pcap(path: Path) -> list[PcapFrame]:
    """Ethernet/IPv4/UDP frames of a classic little-endian pcap file (what sngrep writes for HEP input)."""
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", data[:4]
    link = struct.unpack("<I", data[20:24])[0]
    pos = 24
    out = []
    while pos + 16 <= len(data):
        _sec, _usec, incl, _orig = struct.unpack("<IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        eth = 14 if link == 1 else 0
        ip = frame[eth:]
        ihl = (ip[0] & 0x0F) * 4
        src_ip, dst_ip = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        udp = ip[ihl:]
        sport, dport, length = struct.unpack("!HHH", udp[:6])
        out.append(PcapFrame((src_ip, sport), (dst_ip, dport), udp[8:length]))
    return out


@contextlib.contextmanager
def stopping(*things: Any) -> Any:
    try:
        yield
    finally:
        for t in reversed(things):
            with contextlib.suppress(Exception):
                t.stop()


# ----------------------------------------------------------------------------------------------- stirgate
PROBE_IP = "127.0.0.30"  # a UDP-only trunk address: readiness probes (TLS trunks take no UDP)


def probe_trunk() -> dict[str, Any]:
    return {"name": "probe", "role": "carrier", "sources": [PROBE_IP], "transport": "udp"}


def base_config(ip: str, trunks: list[dict[str, Any]], routes: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """stirgate on `ip`: UDP and TCP on the SIP port (readiness), TLS on TLS_PORT; a free API port."""
    api = harness.free_port(harness.STIRGATE_IP, kind=socket.SOCK_STREAM)
    cfg: dict[str, Any] = {
        "listen": [f"udp:{ip}:{harness.SIP_PORT}", f"tcp:{ip}:{harness.SIP_PORT}", f"tls:{ip}:{TLS_PORT}"],
        "unknown_source": "reject",
        "sip": {"failover_timeout": 5.0, "no_answer_timeout": 10.0, "drain_grace": 2.0},
        "trunks": [*trunks, probe_trunk()],
        "routes": routes,
        "records": {"enabled": False},
        "api": {"listen": f"{harness.STIRGATE_IP}:{api}"},
        "logging": {"level": "debug"},
    }
    cfg.update(more)
    return cfg


def metrics(config: Path) -> dict[str, float]:
    """The stirgate's /metrics as {sample with labels: value}."""
    return harness.scrape_metrics(harness.api_listen(config))


def event_count(config: Path, event: str) -> float:
    return metrics(config).get(f'stirgate_sip_events_total{{event="{event}"}}', 0.0)


class HepTcpCollector:
    """A TCP HEP receiver on 127.0.0.1 (thread): every packet of every connection, in arrival order."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((harness.STIRGATE_IP, 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[HepPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hep-tcp")

    @property
    def address(self) -> str:
        return f"{harness.STIRGATE_IP}:{self.port}"

    def start(self) -> HepTcpCollector:
        self._thread.start()
        return self

    def _run(self) -> None:
        conns: list[socket.socket] = []
        pending: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                c.settimeout(0.05)
                conns.append(c)
                pending[c] = b""
            except TimeoutError:
                pass
            for c in list(conns):
                try:
                    data = c.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    conns.remove(c)
                    c.close()
                    continue
                buf = pending[c] + data
                packets = split_hep_stream(buf)
                pending[c] = buf[sum(len(p) for p in packets):]
                self.packets.extend(read_hep(p) for p in packets)
        for c in conns:
            c.close()

    def wait_for(self, predicate: Any, what: str, seconds: float = 15.0) -> None:
        harness.wait_until(lambda: predicate(self.packets), what, attempts=int(seconds / 0.05), interval=0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
