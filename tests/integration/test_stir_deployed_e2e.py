"""Issue 17 end to end through live stirgate processes, SIPp peers and https servers on 127.0.0.x:

- a revoked SP certificate (CRL at its distribution point) is rejected 437 with an RFC 9410 Reason;
- a forwarded call from the customer keeps the caller's shaken PASSporT and gets a div one (RFC 8946): the
  verifying stirgate passes the chain, secsipidx verifies the div PASSporT; without div it is 438;
- RCD signed from YAML and verified (rcdi against the served logo), the verified name shown to the customer;
- the STI-PA trust list as the only trust anchors: fetched at start, refreshed on SIGHUP, a bad download kept out.
The topology and helpers are test_stir_e2e.py's (TOPOLOGY.md addresses).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from proxy.stir.demo_certs import key_pem
from tests.integration import harness
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, STIRGATE_IP
from tests.integration.stir_env import (
    CALLER,
    DIALLED,
    OTHER_CALLER,
    SECSIPIDX,
    TERM_IP,
    CountingX5u,
    StirgateAt,
    StirPki,
    X5uServer,
    jws_parts,
    param,
    secsipidx_check,
    sign_identity,
    signing_config,
    verifying_config,
)
from tests.integration.test_stir_e2e import (
    PHRASES,
    GateFactory,
    _gate_factory,
    _stop_all,
    assert_clean,
    callee,
    caller,
    carrier_call,
    explain,
    final_response,
    finals,
    only_invite,
    run_call,
    verifier_cfg,
    verstat_of,
)
from tests.integration.test_stir_e2e import pki as pki
from tests.integration.test_stir_e2e import x5u as x5u
from tests.unit.stir.crl_helpers import make_crl, sp_with_cdp
from tests.unit.stir.helpers import make_pki as make_unit_pki

PASSED = "TN-Validation-Passed"
FAILED = "TN-Validation-Failed"
FORWARDER = "+15551230005"  # a number the customer owns (prefix 1555): it forwarded the call
FORWARDER_TN = FORWARDER.lstrip("+")


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[GateFactory]:
    start, started = _gate_factory(tmp_path)
    yield start
    _stop_all(started)


def _assert_reason(resp: harness.TracedMessage, code: int) -> None:
    assert resp.first_line == f"SIP/2.0 {code} {PHRASES[code]}", resp.raw.decode()
    reasons = resp.headers("Reason")
    assert len(reasons) == 1 and param(reasons[0], "cause") == str(code), resp.raw.decode()


# ----------------------------------------------------------------------------------------------- CRL
@pytest.mark.usefixtures("sipp_bin")
def test_revoked_sp_certificate_is_437(gates: GateFactory, tmp_path: Path) -> None:
    """Two SP certificates whose distribution point is the same CRL, served over https: the revoked one's calls
    get 437 Unsupported Credential, the other's pass."""
    now = time.time()
    d = tmp_path / "pki"
    unit = make_unit_pki(d, now=now)  # the demo set, with the intermediate's key in memory to sign the CRL
    spki = StirPki(d, d)
    server = X5uServer(spki, tmp_path)  # the shipped x5u server serves .pem and .der files of the folder
    crl_url = server.url("sti.der")
    revoked = sp_with_cdp(unit.demo, [crl_url], now, spc="7001")
    good = sp_with_cdp(unit.demo, [crl_url], now, spc="7002")
    for name, cdp in (("revoked", revoked), ("good", good)):
        (d / f"{name}.pem").write_bytes(cdp.body)
        (d / f"{name}.key").write_bytes(key_pem(cdp.sp.key))
    (d / "sti.der").write_bytes(make_crl(unit.demo.intermediate, now, revoked=[revoked.sp.cert]))
    server.start()
    try:
        cfg = verifier_cfg(spki, server.url("good.pem"), "reject", "reject")
        cfg["stir"]["crl_unavailable"] = "fail"
        gate = gates(cfg)
        resp = final_response(carrier_call(tmp_path, "uac-revoked",
                                           sign_identity(d / "revoked.key", server.url("revoked.pem")),
                                           with_uas=False)[0])  # fmt: skip
        _assert_reason(resp, 437)
        uac_r, uas_r = carrier_call(tmp_path, "uac-good", sign_identity(d / "good.key", server.url("good.pem")),
                                    with_uas=True)  # fmt: skip
        assert finals(uac_r) == [200], explain(gate, r=uac_r)
        assert uas_r is not None and verstat_of(only_invite(uas_r)) == (None, PASSED)
        assert list((gate.workdir / "var" / "crl-cache").glob("*.crl")), "the CRL was not kept on disk"
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- div
def _forwarding_chain(gates: GateFactory, pki: StirPki, x5u_url: str, *, div: str = "owned",
                      b_mode: str = "tag") -> tuple[StirgateAt, StirgateAt]:  # fmt: skip
    b = gates(verifying_config(pki, x5u_url, ip=TERM_IP, upstream_ip=STIRGATE_IP, downstream_ip=CARRIER_IP,
                               verify={"mode": b_mode}), ip=TERM_IP, probe_from=CARRIER_IP)  # fmt: skip
    a_cfg = signing_config(pki, x5u_url, attestation={"prefixes": ["1555"]}, to_ip=TERM_IP)
    a_cfg["trunks"][0]["sign"]["div"] = div
    return gates(a_cfg), b


def _forwarded_row(pki: StirPki, x5u_url: str) -> tuple[str, str, str]:
    """The customer's PBX forwards a call from OTHER_CALLER that was placed to FORWARDER (and signed so by the
    caller's provider) on to DIALLED."""
    original = sign_identity(pki.key, x5u_url, orig=OTHER_CALLER.lstrip("+"), dest=FORWARDER_TN)
    return OTHER_CALLER, f"Diversion: <sip:{FORWARDER}@{CUSTOMER_IP}>", original


@pytest.mark.usefixtures("sipp_bin")
def test_forwarded_call_carries_shaken_then_div(gates: GateFactory, pki: StirPki, x5u: X5uServer,
                                                tmp_path: Path) -> None:  # fmt: skip
    a, b = _forwarding_chain(gates, pki, x5u.url())
    row = _forwarded_row(pki, x5u.url())
    uac_r, uas_r = run_call(callee(tmp_path, "uas", ip=CARRIER_IP), caller(tmp_path, "uac", [row], ip=CUSTOMER_IP))
    assert finals(uac_r) == [200], explain(a, b, r=uac_r)
    assert_clean(uac_r, uas_r)
    assert uas_r is not None
    invite = only_invite(uas_r)
    identities = invite.headers("Identity")
    assert [jws_parts(v)[0]["ppt"] for v in identities] == ["shaken", "div"], invite.raw.decode()
    assert identities[0].split(";")[0] == row[2].split(";")[0]  # the caller's own PASSporT, untouched
    _head, claims, _sig = jws_parts(identities[1])
    assert {k: claims[k] for k in ("orig", "dest", "div")} == {
        "orig": {"tn": OTHER_CALLER.lstrip("+")}, "dest": {"tn": [DIALLED]}, "div": {"tn": FORWARDER_TN}}
    assert verstat_of(invite) == (None, PASSED), invite.raw.decode()  # B verified shaken + div as a chain
    # Independent checks: secsipidx (v1.2) verifies the shaken PASSporT but refuses any ppt but shaken
    # ("invalid value for ppt header parameter"), so the div PASSporT's ES256 signature is checked with PyJWT.
    div_claims = jwt.decode(identities[1].split(";")[0], pki.pub.read_bytes(), algorithms=["ES256"],
                            options={"verify_iat": False})  # fmt: skip
    assert div_claims["div"] == {"tn": FORWARDER_TN}
    if SECSIPIDX is not None:
        proc = secsipidx_check(identities[0], pki.pub)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
        refused = secsipidx_check(identities[1], pki.pub)
        assert "invalid value for ppt" in refused.stdout, "secsipidx verifies div now: check it there instead"


@pytest.mark.usefixtures("sipp_bin")
def test_forwarded_call_without_div_is_438(gates: GateFactory, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
    _forwarding_chain(gates, pki, x5u.url(), div="off", b_mode="reject")
    uac_r, _ = run_call(None, caller(tmp_path, "uac", [_forwarded_row(pki, x5u.url())], ip=CUSTOMER_IP))
    assert_clean(uac_r)
    _assert_reason(final_response(uac_r), 438)


# ----------------------------------------------------------------------------------------------- RCD
@pytest.mark.usefixtures("sipp_bin")
@pytest.mark.parametrize("logo_matches", [True, False], ids=["rcdi-ok", "rcdi-mismatch"])
def test_rcd_signed_verified_and_shown(gates: GateFactory, pki: StirPki, tmp_path: Path,
                                       logo_matches: bool) -> None:  # fmt: skip
    d = tmp_path / "site"
    d.mkdir()
    for name in ("ca.pem", "sp.pem", "x5u-server.pem", "x5u-server.key"):
        shutil.copy(pki.dir / name, d / name)
    logo = b"\x89PNG\r\n\x1a\nacme"
    (d / "logo.der").write_bytes(logo if logo_matches else logo + b" (replaced)")  # what the URL serves
    (tmp_path / "logo-local.png").write_bytes(logo)  # what the customer's config digests
    server = X5uServer(StirPki(d, d), tmp_path).start()
    try:
        b = gates(verifying_config(pki, server.url(), ip=TERM_IP, upstream_ip=STIRGATE_IP, downstream_ip=CARRIER_IP,
                                   verify={"mode": "tag", "rcd_display_name": True}), ip=TERM_IP,
                  probe_from=CARRIER_IP)  # fmt: skip
        a_cfg = signing_config(pki, server.url(), attestation={"prefixes": ["1555"]}, to_ip=TERM_IP)
        a_cfg["trunks"][0]["sign"]["rcd"] = {"nam": "Acme Corp", "icn": server.url("logo.der"),
                                             "icn_file": str(tmp_path / "logo-local.png"), "crn": "Delivery"}
        a = gates(a_cfg)
        uac_r, uas_r = run_call(callee(tmp_path, "uas", ip=CARRIER_IP),
                                caller(tmp_path, "uac", [(CALLER, "", None)], ip=CUSTOMER_IP))  # fmt: skip
        assert finals(uac_r) == [200], explain(a, b, r=uac_r)
        assert uas_r is not None
        invite = only_invite(uas_r)
        assert [jws_parts(v)[0]["ppt"] for v in invite.headers("Identity")] == ["shaken", "rcd"]
        from_ = invite.header("From")
        assert verstat_of(invite) == (None, PASSED), invite.raw.decode()  # the shaken PASSporT passes either way
        if logo_matches:
            assert from_.startswith('"Acme Corp" <'), from_
        else:  # an rcd PASSporT whose logo does not match is not shown
            assert from_.startswith('"Alice" <'), from_
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- trust list
def _log_events(gate: StirgateAt, event: str) -> list[dict[str, Any]]:
    return gate.log_events(event)


@pytest.mark.usefixtures("sipp_bin")
def test_trust_list_is_the_anchor_set_and_follows_sighup(gates: GateFactory, pki: StirPki, x5u: X5uServer,
                                                         tmp_path: Path) -> None:  # fmt: skip
    trust = CountingX5u(pki, (pki.dir / "ca.pem").read_bytes()).start()
    try:
        cfg = verifier_cfg(pki, x5u.url(), "reject", "reject")
        cfg["stir"]["trust_anchors"] = []
        cfg["stir"]["trust_list_url"] = trust.url("trust-list")
        cfg["stir"]["trust_list_token"] = "t0ken"
        gate = gates(cfg)
        harness.wait_until(lambda: _log_events(gate, "trust_list_updated"), "the trust list download", attempts=500)
        uac_r, _ = carrier_call(tmp_path, "uac1", sign_identity(pki.key, x5u.url()), with_uas=True)
        assert finals(uac_r) == [200], explain(gate, r=uac_r)
        assert (gate.workdir / "var" / "sti-trust-list.pem").read_bytes() == (pki.dir / "ca.pem").read_bytes()
        # a bad download on SIGHUP is reported and the good list stays
        trust.body = b"<html>maintenance</html>"
        before = trust.count
        assert gate.proc is not None
        os.kill(gate.proc.pid, signal.SIGHUP)
        harness.wait_until(lambda: _log_events(gate, "trust_list_refresh_failed"), "the failed refresh", attempts=500)
        assert trust.count == before + 1
        uac_r, _ = carrier_call(tmp_path, "uac2", sign_identity(pki.key, x5u.url()), with_uas=True)
        assert finals(uac_r) == [200], explain(gate, r=uac_r)
        # a good list without the demo root: its certificates are no longer trusted
        trust.body = (pki.other / "ca.pem").read_bytes()
        os.kill(gate.proc.pid, signal.SIGHUP)
        harness.wait_until(lambda: len(_log_events(gate, "trust_list_updated")) == 2, "the new list", attempts=500)
        resp = final_response(carrier_call(tmp_path, "uac3", sign_identity(pki.key, x5u.url()), with_uas=False)[0])
        _assert_reason(resp, 437)
    finally:
        trust.stop()


@pytest.mark.usefixtures("sipp_bin")
def test_no_trust_list_yet_is_437(gates: GateFactory, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
    """The STI-PA answers garbage from the start and nothing is cached: nothing is trusted, calls get 437."""
    trust = CountingX5u(pki, b"").start()
    try:
        cfg = verifier_cfg(pki, x5u.url(), "reject", "reject")
        cfg["stir"]["trust_anchors"] = []
        cfg["stir"]["trust_list_url"] = trust.url("trust-list")
        gate = gates(cfg)
        harness.wait_until(lambda: _log_events(gate, "trust_list_refresh_failed"), "the failed download",
                           attempts=500)  # fmt: skip
        resp = final_response(carrier_call(tmp_path, "uac", sign_identity(pki.key, x5u.url()), with_uas=False)[0])
        _assert_reason(resp, 437)
    finally:
        trust.stop()

