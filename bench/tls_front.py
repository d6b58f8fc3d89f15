"""TLS relay bench (mode `tls`): SIPp speaks UDP only (Debian's build has no TLS), so Kamailio's tls module is
the TLS client and server around the system under test:

    SIPp UAC --UDP--> Kamailio front A --TLS--> SUT --TLS--> Kamailio front B --UDP--> SIPp UAS

One Kamailio process is both fronts (stateless forwarding; B record-routes so the SUT's in-dialog requests come
back through it). Only the SUT's CPU is counted (its own process tree); the front's CPU shows as "others". The
SUT is stirgate (TLS trunks both sides, mutual TLS) or Kamailio (the stateful relay of the peers' template, over
TLS both sides): the same front, certificates and SIPp load for both.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .modes import Mode, Pki
from .procs import Addr, stop_process
from .suts import SUT, kamailio_binary, kamailio_command, sip_probe

FRONT_A = "127.0.0.12"  # the customer side of the front: the SUT's TLS customer trunk
FRONT_B = "127.0.0.22"  # the carrier side: the SUT's TLS carrier trunk


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: dict[str, Path]
    key: dict[str, Path]


def make_tls_pki(directory: Path) -> TlsFiles:
    """A CA and P-256 certificates (server and client use) for the front and the two SUTs."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench TLS CA")).issuer_name(name("bench TLS CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs: dict[str, Path] = {}
    keys: dict[str, Path] = {}
    for label, ips in (("front", [FRONT_A, FRONT_B]), ("sut", ["127.0.0.1"])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(f"bench {label}")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        certs[label] = directory / f"{label}.pem"
        keys[label] = directory / f"{label}.key"
        certs[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keys[label].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return TlsFiles(directory / "ca.pem", certs, keys)


def kamailio_tls_cfg(files: TlsFiles, who: str, require_client_cert: bool) -> str:
    """A tls module config (server and client side) presenting `who`'s certificate."""
    require = "yes" if require_client_cert else "no"
    return f"""[server:default]
method = TLSv1.2+
certificate = {files.cert[who]}
private_key = {files.key[who]}
ca_list = {files.ca}
verify_certificate = {require}
require_certificate = {require}

[client:default]
method = TLSv1.2+
certificate = {files.cert[who]}
private_key = {files.key[who]}
ca_list = {files.ca}
verify_certificate = yes
require_certificate = yes
"""


FRONT_CFG = """#!KAMAILIO
# bench TLS front: UDP from the SIPp UAC -> TLS to the SUT; TLS from the SUT -> UDP to the SIPp UAS.
debug=1
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
enable_tls=yes
listen=udp:{a}:{udp_port}
listen=tls:{a}:{tls_port}
listen=tls:{b}:{tls_port}
listen=udp:{b}:{udp_port}
dns=no
rev_dns=no
use_dns_cache=off
tcp_connection_lifetime=3605
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "corex.so"
loadmodule "textops.so"
modparam("tls", "config", "{tls_cfg}")

request_route {{
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if ($Ri == "{a}") {{
		# from the UAC: to the SUT over TLS
		force_send_socket(tls:{a}:{tls_port});
		$du = "sip:{sut};transport=tls";
		forward();
		exit;
	}}
	# from the SUT (TLS): to the UAS over UDP; in-dialog requests come back here (record-routed)
	force_rport();
	if (has_totag()) {{
		loose_route();
	}} else if (is_method("INVITE")) {{
		record_route();
	}}
	force_send_socket(udp:{b}:{udp_port});
	$du = "sip:{uas}";
	forward();
	exit;
}}
"""


class TlsFront(SUT):
    """The system under test `inner`, reached over TLS through the Kamailio front (started and stopped with it).

    The UAC's target (`listen`) is the front's UDP address on the customer side; CPU, logs and counters are the
    inner SUT's."""

    def __init__(self, inner: SUT, files: TlsFiles, udp_port: int, tls_port: int) -> None:
        super().__init__(Addr(FRONT_A, udp_port), inner.uas, inner.uacs, inner.workdir)
        self.inner = inner
        self.files = files
        self.udp_port = udp_port
        self.tls_port = tls_port
        self.name = inner.name
        self.label = f"{inner.label.split(' (')[0]} over TLS (Kamailio TLS front)"
        self.exe = kamailio_binary()
        self.front: subprocess.Popen[bytes] | None = None
        self.front_cfg = inner.workdir / "tls-front.cfg"

    def available(self) -> str | None:
        if not os.access(self.exe, os.X_OK) or not Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so").exists():
            return "kamailio with its tls module is needed as the TLS front (make sysdeps-bench)"
        return self.inner.available()

    def set_mode(self, mode: Mode, pki: Pki | None) -> None:
        super().set_mode(mode, pki)
        self.inner.set_mode(mode, pki)

    @property
    def pid(self) -> int:
        return self.inner.pid

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.inner.proc

    @proc.setter
    def proc(self, value: subprocess.Popen[bytes] | None) -> None:
        pass

    @property
    def log_path(self) -> Path | None:
        return self.inner.log_path

    @log_path.setter
    def log_path(self, value: Path | None) -> None:
        pass

    def extra_addrs(self) -> list[Addr]:
        return [*self.inner.extra_addrs(), self.inner.listen, Addr(FRONT_B, self.udp_port)]

    def engine_stats(self) -> list[dict[str, object]]:
        return self.inner.engine_stats()

    def start(self, stepdir: Path, ready_timeout: float = 20.0) -> None:
        self.step_uacs = None
        self.notes = []
        self.inner.start(stepdir, ready_timeout)
        tls_cfg = self.inner.workdir / "tls-front-tls.cfg"
        tls_cfg.write_text(kamailio_tls_cfg(self.files, "front", require_client_cert=False))
        sut = getattr(self.inner, "tls_listen", None)
        self.front_cfg.write_text(FRONT_CFG.format(a=FRONT_A, b=FRONT_B, udp_port=self.udp_port,
                                                   tls_port=self.tls_port, tls_cfg=tls_cfg, sut=sut, uas=self.uas))
        log = open(stepdir / "tls-front.log", "wb")  # noqa: SIM115
        self.front = subprocess.Popen(kamailio_command(self.exe, self.front_cfg, 1024),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=self.inner.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.front.poll() is not None:
                self.inner.stop()
                raise RuntimeError(f"the Kamailio TLS front exited: see {stepdir / 'tls-front.log'}")
            if sip_probe(Addr(self.uacs[0].host, 0), self.listen, max_forwards=0) is not None:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Kamailio TLS front is not ready: see {stepdir / 'tls-front.log'}")

    def stop(self) -> None:
        if self.front is not None:
            stop_process(self.front, term_wait=5.0)
            self.front = None
        self.inner.stop()

    def ready(self) -> bool:
        return True

    def command(self) -> list[str]:
        return self.inner.command()
