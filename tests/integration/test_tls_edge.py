"""stirgate's TLS listener against real TLS clients (OpenSSL through Python's ssl): mutual TLS, the trunk named
by its address and its certificate, per-source caps, CRLF keep-alives, and a peer stalling mid-handshake that
is cut after the timeout while other traffic (TLS and a SIPp call over UDP) is served (issue 15).

One stirgate for the module: customer trunk 127.0.0.10 over TLS only (mutual TLS, its certificate must name
pbx.customer.test), carrier trunks over UDP for the SIPp call, a UDP probe trunk for readiness.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.conftest import log_problems
from tests.integration.harness import CARRIER2_IP, CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, UNKNOWN_IP, Sipp
from tests.integration.stir_env import StirgateAt, write_config
from tests.integration.tls_env import (
    PROBE_IP,
    TLS_PORT,
    TlsPki,
    base_config,
    client_context,
    closed_by_peer,
    event_count,
    options_over,
    read_response,
    tls_block,
    tls_connect,
)

pytestmark = pytest.mark.integration

HANDSHAKE_TIMEOUT = 2.0
CAP = 4


class Env:
    def __init__(self, sg: StirgateAt, pki: TlsPki, workdir: Path) -> None:
        self.sg = sg
        self.pki = pki
        self.workdir = workdir
        self.pbx = pki.leaf("pbx", dns="pbx.customer.test", ip=CUSTOMER_IP)
        self.impostor = pki.leaf("impostor", dns="other.customer.test", ip=CUSTOMER_IP)
        self.untrusted = pki.leaf("pbx-untrusted", dns="pbx.customer.test", ip=CUSTOMER_IP, issuer="untrusted")

    def count(self, event: str) -> float:
        return event_count(self.sg.config, event)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("tls-edge")
    pki = TlsPki(workdir / "pki")
    me = pki.leaf("stirgate", dns="sbc.stirgate.test", ip=STIRGATE_IP)
    trunks = [
        {"name": "customer", "role": "customer", "sources": [CUSTOMER_IP], "transport": "tls",
         "destination": f"{CUSTOMER_IP}:{TLS_PORT}", "tls": tls_block(pki, me, server_name="pbx.customer.test")},
        {"name": "carrier", "role": "carrier", "sources": [CARRIER_IP], "destination": f"{CARRIER_IP}:{SIP_PORT}",
         "transport": "udp"},
        {"name": "carrier2", "role": "carrier", "sources": [CARRIER2_IP], "destination": f"{CARRIER2_IP}:{SIP_PORT}",
         "transport": "udp"},
    ]  # fmt: skip
    routes = [{"from": ["customer", "carrier2"], "prefix": "", "trunks": ["carrier"]}]
    cfg = base_config(STIRGATE_IP, trunks, routes,
                      protection={"tcp_max_connections_per_source": CAP, "tls_handshake_timeout": HANDSHAKE_TIMEOUT})
    cfg["sip"] |= {"gc_full_interval": 0.5, "gc_full_max_interval": 1.0}  # (the GC pass test below)
    sg = StirgateAt(write_config(workdir / "stirgate.yaml", cfg), workdir, STIRGATE_IP, PROBE_IP)
    sg.start()
    e = Env(sg, pki, workdir)
    try:
        yield e
    finally:
        alive = sg.alive()
        rc = sg.stop()
        problems = log_problems(sg)
        assert alive and rc == 0 and not problems, f"exit {rc}, problems: {problems}\n{sg.log_tail()}"


def test_mutual_tls_client_with_the_trunks_certificate_is_served(env: Env) -> None:
    with tls_connect(client_context(env.pki, env.pbx), CUSTOMER_IP) as s:
        # stirgate's own certificate was checked by the client (CA and IP name) in the handshake.
        options_over(s, s.getsockname())
        reply = read_response(s)
        assert reply is not None and reply.startswith(b"SIP/2.0 200 "), reply
        # RFC 5626 3.5.1: a CRLFCRLF ping gets a CRLF pong on the same connection.
        s.sendall(b"\r\n\r\n")
        s.settimeout(5)
        assert s.recv(16) == b"\r\n"
        # And the connection still carries SIP afterwards.
        options_over(s, s.getsockname())
        reply = read_response(s)
        assert reply is not None and reply.startswith(b"SIP/2.0 200 "), reply


@pytest.mark.parametrize("client", ["no certificate", "untrusted CA", "wrong name"])
def test_mutual_tls_refuses_a_client_without_the_trunks_certificate(env: Env, client: str) -> None:
    me = {"no certificate": None, "untrusted CA": env.untrusted, "wrong name": env.impostor}[client]
    counter = "tls_peer_name_mismatch" if client == "wrong name" else "tls_handshake_failures"
    before = env.count(counter)
    try:
        s = tls_connect(client_context(env.pki, me), CUSTOMER_IP)
    except (ssl.SSLError, ConnectionError):
        s = None  # refused inside the handshake (TLS 1.2 style): as good
    if s is not None:
        with s:
            # TLS 1.3: the client's side of the handshake may finish before the server judged its certificate;
            # the server's verdict arrives as an alert or a close. Nothing SIP comes back.
            try:
                options_over(s, s.getsockname())
            except (ssl.SSLError, ConnectionError):
                pass
            assert read_response(s) is None
            assert closed_by_peer(s)
    harness.wait_until(lambda: env.count(counter) >= before + 1, f"{counter} to count the refusal")


def test_refused_handshakes_leave_nothing_for_the_gc_pass(env: Env) -> None:
    """stirgate runs with the automatic cyclic GC off and a periodic full pass: a refused handshake's exception
    chain must not be left for the pass (before: a cycle per refusal), or a peer retrying with a bad certificate
    would keep every pass busy."""
    def passes() -> list[dict[str, object]]:
        return env.sg.log_events("gc_full")

    harness.wait_until(lambda: len(passes()) >= 1, "a first GC pass (start-up's leftovers)", attempts=500)
    start = len(passes())
    before = env.count("tls_handshake_failures")
    for _ in range(10):
        try:
            s = tls_connect(client_context(env.pki, env.untrusted), CUSTOMER_IP)
        except (ssl.SSLError, ConnectionError):
            continue
        with s:
            assert read_response(s) is None
    harness.wait_until(lambda: env.count("tls_handshake_failures") >= before + 10, "the refusals to be counted")
    counted = len(passes())
    harness.wait_until(lambda: len(passes()) >= counted + 2, "two GC passes after the refusals", attempts=500)
    found = [e["unreachable"] for e in passes()[start:]]
    assert all(n == 0 for n in found), found


def test_tls_from_an_address_no_tls_trunk_owns_is_refused_before_any_handshake(env: Env) -> None:
    before = env.count("tls_refused")
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind((UNKNOWN_IP, 0))
    raw.settimeout(10)
    raw.connect((STIRGATE_IP, TLS_PORT))
    with raw:
        assert closed_by_peer(raw)
    harness.wait_until(lambda: env.count("tls_refused") >= before + 1, "tls_refused to count it")


def test_a_tls_trunks_address_over_udp_is_not_that_trunk(env: Env) -> None:
    # The customer trunk is identified by its certificate as well as its address: plain UDP from its address
    # is an unknown source (403), while the UDP probe trunk is answered.
    assert harness.send_options((STIRGATE_IP, SIP_PORT), src_ip=CUSTOMER_IP, timeout=2.0) == 403
    assert harness.send_options((STIRGATE_IP, SIP_PORT), src_ip=PROBE_IP, timeout=2.0) == 200


def test_connections_per_source_are_capped(env: Env) -> None:
    ctx = client_context(env.pki, env.pbx)
    before = env.count("tcp_refused")
    held = []
    try:
        for _ in range(CAP):
            s = tls_connect(ctx, CUSTOMER_IP)
            options_over(s, s.getsockname())
            reply = read_response(s)
            assert reply is not None and reply.startswith(b"SIP/2.0 200 "), reply
            held.append(s)
        extra = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        extra.bind((CUSTOMER_IP, 0))
        extra.settimeout(10)
        extra.connect((STIRGATE_IP, TLS_PORT))
        with extra:
            assert closed_by_peer(extra)
        assert env.count("tcp_refused") == before + 1
    finally:
        for s in held:
            s.close()
    # The slots come back once those connections are gone.
    harness.wait_until(lambda: _served(env), "a new TLS connection to be served again", attempts=100, interval=0.1)


def _served(env: Env) -> bool:
    try:
        with tls_connect(client_context(env.pki, env.pbx), CUSTOMER_IP) as s:
            options_over(s, s.getsockname())
            reply = read_response(s, timeout=2.0)
            return reply is not None and reply.startswith(b"SIP/2.0 200 ")
    except (OSError, ssl.SSLError):
        return False


def test_a_peer_stalling_mid_handshake_is_cut_while_other_calls_flow(env: Env, sipp_bin: str) -> None:
    before = env.count("tls_handshake_timeouts")
    stalled = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((CUSTOMER_IP, 0))
        s.settimeout(10)
        s.connect((STIRGATE_IP, TLS_PORT))
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
        stalled.append(s)
    try:
        # Meanwhile: a TLS client completes its handshake and is answered, and SIPp calls flow over UDP.
        assert _served(env)
        with harness.running(Sipp("uas_basic.xml", CARRIER_IP, env.workdir, name="stall-uas", calls=5)) as (uas,), \
                harness.running(Sipp("uac_basic.xml", CARRIER2_IP, env.workdir, name="stall-uac",
                                     remote=(STIRGATE_IP, SIP_PORT), calls=5)) as (uac,):  # fmt: skip
            r = uac.wait()
            assert r.returncode == 0 and r.successful == 5, r.summary()
            uas.wait(timeout=20)
        for s in stalled:
            assert closed_by_peer(s), "a stalled handshake was never cut"
    finally:
        for s in stalled:
            s.close()
    assert env.count("tls_handshake_timeouts") == before + 2
