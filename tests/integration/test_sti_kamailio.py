"""A real SBC-style client: Kamailio (http_client + jansson) relays SIPp calls and asks stirgate's ATIS-1000082 API
to sign or verify each INVITE on the way, the way carrier cores call out to an STI-AS/VS service.

    sign:    SIPp UAC 127.0.0.10 -> Kamailio 127.0.0.1:K (POST /stir/v1/signing, adds Identity) -> SIPp UAS 127.0.0.20
    verify:  SIPp UAC 127.0.0.20 (Identity) -> Kamailio (POST /stir/v1/verification: X-Verstat, or the decision's
             reject code) -> SIPp UAS 127.0.0.10

stirgate runs on 127.0.0.1:5060 for its API only; the UAS checks nothing itself, the test reads its trace.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, DIALLED, STIRGATE_IP, Sipp, SippResult
from tests.integration.kamailio import Kamailio, kamailio_binary, module_dir
from tests.integration.sti_env import BLOCKED, SBC_TOKEN, api_address, start_stirgate, sti_config, traceback_calls
from tests.integration.stir_env import (
    ORIGID,
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

TEMPLATE = Path(__file__).with_name("kamailio_sti.cfg")
MODULES = ("tm.so", "http_client.so", "jansson.so")
CALLERS = ["+15551230001", "+15551230003", "+12125550100"]

pytestmark = pytest.mark.skipif(kamailio_binary() is None or module_dir(*MODULES) is None,
                                reason="kamailio with http_client/jansson not installed (kamailio-utils-modules, "
                                       "kamailio-extra-modules)")


@pytest.fixture(scope="module")
def gate(sti_pki: StirPki, sti_x5u: X5uServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[StirgateAt, dict[str, Any]]]:
    workdir = tmp_path_factory.mktemp("kam-gate")
    cfg = sti_config(sti_pki, sti_x5u.url(), workdir)
    g = start_stirgate(cfg, workdir / "run")
    yield g, cfg
    assert g.stop() == 0, g.log_tail()


def kamailio(tmp_path: Path, cfg: dict[str, Any], define: str, nexthop: str) -> Kamailio:
    host, port = api_address(cfg)
    kport = harness.free_port(STIRGATE_IP)
    return Kamailio(TEMPLATE, tmp_path, listen=(STIRGATE_IP, kport), defines=(define,), modules=MODULES,
                    values={"NEXTHOP": f"sip:{nexthop}:{harness.SIP_PORT}", "STI_URL": f"http://{host}:{port}",
                            "TOKEN": SBC_TOKEN, "ORIGID": ORIGID})


def calls_through(k: Kamailio, tmp_path: Path, name: str, rows: list[tuple[str, str, str | None]], *, uac_ip: str,
                  uas_ip: str, answered: int) -> tuple[SippResult, SippResult]:
    """SIPp UAC -> Kamailio -> SIPp UAS; `answered` calls are expected to reach the UAS."""
    with_identity = rows[0][2] is not None
    inf = inf_file(tmp_path / f"{name}.csv", rows)
    uas = Sipp("stir_uas.xml", uas_ip, tmp_path, name=f"{name}-uas", calls=answered)
    uac = Sipp("stir_uac_identity.xml" if with_identity else "stir_uac.xml", uac_ip, tmp_path, name=f"{name}-uac",
               remote=k.listen, calls=len(rows), extra=("-inf", str(inf)))
    with harness.running(uas):
        uac_result = uac.start().wait()
        uas_result = uas.wait() if answered else uas.result()
    return uac_result, uas_result


def test_kamailio_signs_through_the_api(sipp_bin: str, gate: tuple[StirgateAt, dict[str, Any]], sti_pki: StirPki,
                                        sti_x5u: X5uServer, tmp_path: Path) -> None:
    _, cfg = gate
    k = kamailio(tmp_path, cfg, "STI_SIGN", CARRIER_IP)
    assert k.check().returncode == 0, k.check().stderr
    rows: list[tuple[str, str, str | None]] = [(c, "", None) for c in CALLERS]
    with k:
        uac, uas = calls_through(k, tmp_path, "sign", rows, uac_ip=CUSTOMER_IP, uas_ip=CARRIER_IP,
                                 answered=len(rows))
        assert uac.returncode == 0 and uac.successful == len(rows), uac.summary() + "\n" + k.log_tail()
    invites = uas.requests("INVITE")
    assert len(invites) == len(rows), uas.summary()
    for invite, caller in zip(invites, CALLERS, strict=True):
        (identity,) = invite.headers("Identity")
        _, claims, _ = jws_parts(identity)
        assert (claims["orig"], claims["dest"], claims["attest"], claims["origid"]) == (
            {"tn": caller.lstrip("+")}, {"tn": [DIALLED]}, "A", ORIGID)
        assert identity.endswith(f";info=<{sti_x5u.url()}>;alg=ES256;ppt=shaken")
        if SECSIPIDX is not None:
            check = secsipidx_check(identity, sti_pki.pub)
            assert check.returncode == 0, check.stdout + check.stderr
    # One record per request, named by the Call-ID Kamailio sent as X-RequestID.
    recs = traceback_calls(cfg, CALLERS[0], DIALLED, want=1)
    sent_ids = {m.header("Call-ID") for m in uac.requests("INVITE", direction="sent")}
    assert recs and {r["a_call_id"] for r in recs} <= sent_ids
    assert all(r["ingress"] == "sbc" and r["signed"] for r in recs)


def test_kamailio_verifies_through_the_api(sipp_bin: str, gate: tuple[StirgateAt, dict[str, Any]],
                                           sti_pki: StirPki, sti_x5u: X5uServer, tmp_path: Path) -> None:
    _, cfg = gate
    good = sign_identity(sti_pki.key, sti_x5u.url(), orig="15551230001", dest=DIALLED)
    blocked = sign_identity(sti_pki.key, sti_x5u.url(), orig=BLOCKED.lstrip("+"), dest=DIALLED)
    rows: list[tuple[str, str, str | None]] = [
        ("+15551230001", "", good),                    # valid -> relayed with X-Verstat: TN-Validation-Passed
        ("+15551230001", "", tamper_signature(good)),  # the API's decision: 438 (carrier trunk, mode reject)
        (BLOCKED, "", blocked),                        # the carrier trunk's policy chain: 608
    ]
    k = kamailio(tmp_path, cfg, "STI_VERIFY", CUSTOMER_IP)
    with k:
        uac, uas = calls_through(k, tmp_path, "verify", rows, uac_ip=CARRIER_IP, uas_ip=CUSTOMER_IP, answered=1)
    finals = [m.status for m in uac.responses() if m.method == "INVITE" and (m.status or 0) >= 200]
    assert finals == [200, 438, 608], uac.summary() + "\n" + k.log_tail()
    (invite,) = uas.requests("INVITE")
    assert invite.headers("X-Verstat") == ["TN-Validation-Passed"]
    assert invite.headers("Identity") == [good]
    _ = socket  # (kept for readers: every address here is loopback)
