"""TLS trunks and HEP in the config: located errors, contexts that check what they should, and the router
telling a TLS trunk from the same address over UDP. Also: a transport failure fails a call over at once."""

from __future__ import annotations

import ssl

import pytest

from proxy.config import ConfigError, load_config_text
from proxy.routing import Router
from proxy.transport import cert_names_match
from tests.integration.tls_env import TlsPki

from .sipfake import B2, B, Harness, b_invite, loopback_config, make_engine, start_call


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return TlsPki(tmp_path_factory.mktemp("pki"))


def config(pki: TlsPki, tls: str, listen: str = "[udp:127.0.0.1:5060, tls:127.0.0.1:5061]", extra: str = "") -> str:
    me = pki.leaf("me", dns="sbc.test", ip="127.0.0.1")
    tls = tls.replace("CA", str(pki.ca)).replace("CERT", str(me.cert)).replace("KEY", str(me.key))
    return f"""\
listen: {listen}
trunks:
  - name: carrier
    role: carrier
    sources: [127.0.0.20]
    destination: 127.0.0.20:5061
    transport: tls
{tls}
{extra}"""


GOOD = """\
    tls:
      ca_file: CA
      cert_file: CERT
      key_file: KEY
      server_name: carrier.test
      min_version: TLSv1.3"""


def test_a_tls_trunk_loads_with_contexts_that_check_the_peer(pki: TlsPki) -> None:
    cfg = load_config_text(config(pki, GOOD), "t.yaml")
    assert [x.transport for x in cfg.listen] == ["udp", "tls"]
    tls = cfg.trunks[0].tls
    assert tls is not None and tls.server_name == "carrier.test"
    client = tls.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert client.minimum_version == ssl.TLSVersion.TLSv1_3
    server = tls.server_context()
    assert server.verify_mode == ssl.CERT_REQUIRED  # mutual TLS: a client without a certificate fails


@pytest.mark.parametrize(("tls", "key", "problem"), [
    ("", "trunks[0].transport", "needs a `tls:` block"),
    ("    tls: {cert_file: CERT, key_file: KEY}", "trunks[0].tls.ca_file", "check the peer"),
    ("    tls: {ca_file: CA, cert_file: CERT}", "trunks[0].tls.cert_file", "go together"),
    ("    tls: {ca_file: CA}", "trunks[0].tls.cert_file", "accept TLS connections"),
    ("    tls: {ca_file: /nonexistent.pem, cert_file: CERT, key_file: KEY}", "trunks[0].tls.ca_file", "no such file"),
    ("    tls: {ca_file: CA, cert_file: KEY, key_file: KEY}", "trunks[0].tls", "cannot use"),
    ("    tls: {ca_file: CA, cert_file: CERT, key_file: KEY, ciphers: NO-SUCH-CIPHER}", "trunks[0].tls", "cannot use"),
    ("    tls: {ca_file: CA, cert_file: CERT, key_file: KEY, min_version: SSLv3}", "trunks[0].tls.min_version",
     "Invalid enum value"),
])  # fmt: skip
def test_tls_settings_errors_are_located(pki: TlsPki, tls: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config_text(config(pki, tls), "t.yaml")
    assert e.value.key == key and problem in e.value.problem and e.value.line is not None, str(e.value)


def test_tls_settings_on_a_udp_trunk_are_an_error(pki: TlsPki) -> None:
    text = config(pki, GOOD).replace("transport: tls", "transport: udp")
    with pytest.raises(ConfigError, match=r"trunks\[0\]\.tls: tls settings need `transport: tls`"):
        load_config_text(text, "t.yaml")


def test_listen_tls_parses_and_unknown_transports_do_not(pki: TlsPki) -> None:
    with pytest.raises(ConfigError, match=r"listen\[1\]: expected transport:host:port \(udp, tcp or tls\)"):
        load_config_text(config(pki, GOOD, listen="[udp:127.0.0.1:5060, sctp:127.0.0.1:5061]"), "t.yaml")


@pytest.mark.parametrize(("hep", "ok"), [
    ("hep: {address: 127.0.0.1:9060, capture_id: 7, auth_key: k, transport: tcp}", True),
    ("hep: {address: '[::1]:9060'}", True),
    ("hep: {address: capture.example:9060}", False),
    ("hep: {address: 127.0.0.1}", False),
    ("hep: {address: 127.0.0.1:9060, transport: sctp}", False),
    ("hep: {address: 127.0.0.1:9060, capture_id: -1}", False),
])  # fmt: skip
def test_hep_settings(pki: TlsPki, hep: str, ok: bool) -> None:
    text = config(pki, GOOD, extra=hep)
    if ok:
        assert load_config_text(text, "t.yaml").hep is not None
    else:
        with pytest.raises(ConfigError, match=r"hep"):
            load_config_text(text, "t.yaml")


def test_a_tls_trunk_is_not_its_address_over_udp_or_tcp(pki: TlsPki) -> None:
    router = Router(load_config_text(config(pki, GOOD), "t.yaml"))
    assert router.trunk_for(("tls", "127.0.0.20", 40000)) is not None
    assert router.trunk_for(("udp", "127.0.0.20", 5060)) is None
    assert router.trunk_for(("tcp", "127.0.0.20", 40000)) is None
    assert router.trunk_for_target("127.0.0.20", 5061) is router.trunk_for_source("127.0.0.20")


def test_cert_names_match() -> None:
    cert = {"subject": ((("commonName", "ignored.test"),),),
            "subjectAltName": (("DNS", "carrier.test"), ("DNS", "*.pool.carrier.test"), ("IP Address", "10.0.0.1"))}
    assert cert_names_match(cert, "carrier.test")
    assert cert_names_match(cert, "CARRIER.test.")
    assert cert_names_match(cert, "sbc1.pool.carrier.test")
    assert not cert_names_match(cert, "a.b.pool.carrier.test")
    assert cert_names_match(cert, "10.0.0.1")
    assert not cert_names_match(cert, "ignored.test")  # a SAN is present: the CN does not count
    assert cert_names_match({"subject": ((("commonName", "old.test"),),)}, "old.test")
    assert not cert_names_match(None, "carrier.test")


def test_a_transport_failure_fails_the_call_over_at_once() -> None:
    h = Harness(make_engine(loopback_config()))
    _caller, outs = start_call(h)
    b_invite(outs)
    h.engine.transport_failed(B, h.now)  # e.g. the carrier's TLS certificate was refused
    outs = h.drain()
    assert b_invite(outs, B2) is not None  # the next trunk, without waiting for failover_timeout
    assert h.engine.stats["failovers"] == 1
    # Another failure on the same target changes nothing now.
    h.engine.transport_failed(B, h.now)
    assert h.drain() == []


def test_default_port_for_tls_contact(pki: TlsPki) -> None:
    from proxy.b2bua import resolve_target

    fallback = ("udp", "192.0.2.1", 5060)
    assert resolve_target("sip:a@127.0.0.10;transport=TLS", "udp", fallback) == ("tls", "127.0.0.10", 5061)
    assert resolve_target("sips:a@127.0.0.10", "tcp", fallback) == ("tls", "127.0.0.10", 5061)
    assert resolve_target("sip:a@127.0.0.10:5070", "tls", fallback) == ("tls", "127.0.0.10", 5070)
    assert resolve_target("sip:a@127.0.0.10;transport=ws", "udp", fallback) == ("udp", "127.0.0.10", 5060)

