"""Redirect mode end to end: SIPp as the SBC sends INVITEs to a live stirgate and gets 302 with the Identity in
the Contact (signing), 302 with the verstat-tagged identity (verification), or the reject code (438 with its
Reason, 608 with a jCard); over a trunk in redirect mode and over a redirect listener (UDP and TCP).
Nothing is relayed: the test topology has no UAS at all."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.integration.harness import (
    CARRIER_IP,
    CUSTOMER_IP,
    DIALLED,
    SIP_PORT,
    STIRGATE_IP,
    Sipp,
    SippResult,
    api_listen,
)
from tests.integration.sti_env import BLOCKED, JCARD, REDIRECT_PORT, TAG_IP, get_json, start_stirgate, sti_config
from tests.integration.sti_env import traceback_calls as records_for
from tests.integration.stir_env import (
    SECSIPIDX,
    StirgateAt,
    StirPki,
    X5uServer,
    inf_file,
    jws_parts,
    secsipidx_check,
    sign_identity,
    tamper_signature,
)

CALLER_A = "+15551230001"  # owned prefix 1555: attest A
CALLER_B = "+12125550100"  # not owned: attest B


@pytest.fixture(scope="module")
def gate(sti_pki: StirPki, sti_x5u: X5uServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[StirgateAt, dict[str, Any]]]:
    workdir = tmp_path_factory.mktemp("redirect-gate")
    cfg = sti_config(sti_pki, sti_x5u.url(), workdir, redirect=True)
    g = start_stirgate(cfg, workdir / "run")
    yield g, cfg
    rc = g.stop()
    assert rc == 0, g.log_tail()
    errors = [e for e in g.log_events("call") if e.get("level") == "error"]
    assert not errors, errors


def run_uac(sipp_bin: str, workdir: Path, name: str, rows: list[tuple[str, str, str | None]], *, ip: str,
            port: int = SIP_PORT, transport: str = "u1") -> SippResult:
    with_identity = rows[0][2] is not None
    inf = inf_file(workdir / f"{name}.csv", rows)
    scenario = "sti_redirect_uac_identity.xml" if with_identity else "sti_redirect_uac.xml"
    uac = Sipp(scenario, ip, workdir, name=name, remote=(STIRGATE_IP, port), calls=len(rows), transport=transport,
               extra=("-inf", str(inf)))
    result = uac.start().wait()
    assert result.returncode == 0 and result.successful == len(rows), result.summary()
    return result


def finals(result: SippResult) -> list[Any]:
    """The final answers to the INVITEs, in call order."""
    return [m for m in result.responses() if m.method == "INVITE" and (m.status or 0) >= 200]


def contacts(msg: Any) -> list[tuple[str, dict[str, list[str]], str]]:
    """(URI, {URI header: [unescaped values]}, params) of every Contact of a traced response."""
    out = []
    for value in msg.headers("Contact"):
        for one in re.findall(r"<[^>]*>[^,]*", value):
            uri = one[1:one.index(">")]
            params = one[one.index(">") + 1:]
            base, _, query = uri.partition("?")
            hs: dict[str, list[str]] = {}
            for part in query.split("&") if query else []:
                k, _, v = part.partition("=")
                hs.setdefault(k, []).append(unquote(v))
            out.append((base, hs, params.strip()))
    return out


def test_signing_redirect_302_carries_the_identity(sipp_bin: str, gate: tuple[StirgateAt, dict[str, Any]],
                                                   sti_pki: StirPki, sti_x5u: X5uServer, tmp_path: Path) -> None:
    _, cfg = gate
    rows: list[tuple[str, str, str | None]] = [(CALLER_A, "", None), (CALLER_B, "", None), (BLOCKED, "", None)]
    result = run_uac(sipp_bin, tmp_path, "sign", rows, ip=CUSTOMER_IP)
    got = finals(result)
    assert [m.status for m in got] == [302, 302, 608], result.summary()
    assert [m.first_line for m in got[:2]] == ["SIP/2.0 302 Moved Temporarily"] * 2
    seen = set()
    for msg, attest, caller in zip(got[:2], "AB", (CALLER_A, CALLER_B), strict=True):
        ((uri, hs, params),) = contacts(msg)  # one route: customer -> carrier
        assert uri == f"sip:{DIALLED}@{CARRIER_IP}:{SIP_PORT}" and params == ""
        assert list(hs) == ["Identity"]
        (identity,) = hs["Identity"]
        assert identity not in seen
        seen.add(identity)
        _, claims, _ = jws_parts(identity)
        assert (claims["attest"], claims["orig"], claims["dest"]) == (attest, {"tn": caller.lstrip("+")},
                                                                      {"tn": [DIALLED]})
        assert identity.endswith(f";info=<{sti_x5u.url()}>;alg=ES256;ppt=shaken")
        if SECSIPIDX is not None:
            check = secsipidx_check(identity, sti_pki.pub)
            assert check.returncode == 0, check.stdout + check.stderr
    # The Contact is escaped as RFC 3261 wants: no raw ';', '<', '>' or '=' inside the URI header value.
    raw = got[0].header("Contact")
    assert "?Identity=eyJ" in raw and "%3Binfo%3D%3Chttps://" in raw and "%3E%3Balg%3DES256%3Bppt%3Dshaken>" in raw
    blocked = got[2]
    assert blocked.first_line == "SIP/2.0 608 Rejected"
    assert blocked.header("Call-Info") == f"<{JCARD}>;purpose=jcard" and not blocked.header("Contact")
    # ACKed, nothing relayed: no request left stirgate towards a trunk
    assert len(result.requests("ACK", direction="sent")) == 3
    recs = records_for(cfg, CALLER_A, DIALLED, want=1)
    assert [(r["ingress"], r["status"], r["end_reason"], r["signed"], r["attest"], r["egress"]) for r in recs] == [
        ("customer", 302, "redirected", True, "A", "carrier")]


def test_verification_redirect_and_reject_codes(sipp_bin: str, gate: tuple[StirgateAt, dict[str, Any]],
                                                sti_pki: StirPki, sti_x5u: X5uServer, tmp_path: Path) -> None:
    good = sign_identity(sti_pki.key, sti_x5u.url(), orig=CALLER_A.lstrip("+"), dest=DIALLED)
    blocked = sign_identity(sti_pki.key, sti_x5u.url(), orig=BLOCKED.lstrip("+"), dest=DIALLED)
    pai = f"P-Asserted-Identity: <sip:{CALLER_A}@{CARRIER_IP}>"
    rows: list[tuple[str, str, str | None]] = [
        (CALLER_A, pai, good),                       # valid: 302, PAI tagged Passed
        (CALLER_A, pai, tamper_signature(good)),     # bad signature on a `mode: reject` trunk: 438
        (BLOCKED, "", blocked),                      # valid, but the policy chain blocks the caller: 608
    ]
    result = run_uac(sipp_bin, tmp_path, "verify", rows, ip=CARRIER_IP)
    got = finals(result)
    assert [m.status for m in got] == [302, 438, 608], result.summary()
    ((uri, hs, _),) = contacts(got[0])
    assert uri == f"sip:{DIALLED}@{CUSTOMER_IP}:{SIP_PORT}"
    assert hs == {"P-Asserted-Identity": [f"<sip:{CALLER_A}@{CARRIER_IP};verstat=TN-Validation-Passed>"]}
    assert got[1].first_line == "SIP/2.0 438 Invalid Identity Header"
    assert got[1].header("Reason") == 'STIR;cause=438;text="Invalid Identity Header"'
    assert got[2].header("Call-Info") == f"<{JCARD}>;purpose=jcard"
    # Without an Identity the carrier trunk tags (on_missing: tag): From carries No-TN-Validation.
    unsigned = run_uac(sipp_bin, tmp_path, "verify-none", [(CALLER_B, "", None)], ip=CARRIER_IP)
    ((_, hs, _),) = contacts(finals(unsigned)[0])
    (from_value,) = hs["From"]
    assert from_value.startswith('"Alice" <sip:+12125550100@127.0.0.20:') and \
        from_value.endswith(";verstat=No-TN-Validation>")


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_redirect_listener(sipp_bin: str, gate: tuple[StirgateAt, dict[str, Any]], sti_pki: StirPki,
                           sti_x5u: X5uServer, tmp_path: Path, transport: str) -> None:
    """carrier-tag is an inline trunk; its INVITEs to the redirect listener (5062) are answered there."""
    _, cfg = gate
    good = sign_identity(sti_pki.key, sti_x5u.url(), orig=CALLER_A.lstrip("+"), dest=DIALLED)
    rows: list[tuple[str, str, str | None]] = [(CALLER_A, "", good), (CALLER_A, "", tamper_signature(good))]
    result = run_uac(sipp_bin, tmp_path, f"listener-{transport}", rows, ip=TAG_IP, port=REDIRECT_PORT,
                     transport=transport)
    got = finals(result)
    assert [m.status for m in got] == [302, 302], result.summary()  # a tagging trunk: failures tagged, not refused
    verstats = [contacts(m)[0][1]["From"][0].rsplit("verstat=", 1)[1] for m in got]
    assert verstats == ["TN-Validation-Passed>", "TN-Validation-Failed>"]
    assert contacts(got[0])[0][0] == f"sip:{DIALLED}@{CUSTOMER_IP}:{SIP_PORT}"
    _, metrics = get_json(api_listen(cfg), "/metrics")
    redirected = re.search(r'stirgate_sip_events_total\{event="redirected"\} (\d+)', metrics)
    assert redirected is not None and int(redirected.group(1)) >= 2
    assert re.search(r'stirgate_calls_total\{attest="A",outcome="redirected",trunk="carrier-tag",'
                     r'verstat="TN-Validation-Passed"\} ', metrics)
    assert re.search(r'stirgate_sip_events_total\{event="calls_ended"\} 0', metrics)
