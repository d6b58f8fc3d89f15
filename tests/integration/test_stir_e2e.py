"""STIR/SHAKEN end to end through live stirgate processes (issue 3, Tests: "End to end", "Cache", negative cases).

Topology (../shared/TOPOLOGY.md), real processes and UDP sockets on 127.0.0.x only:

    chain:   SIPp/pjsua2 customer 127.0.0.10 -> stirgate A 127.0.0.1 (signs) -> stirgate B 127.0.0.2 (verifies)
             -> SIPp/pjsua2 UAS 127.0.0.20
    verify:  SIPp carrier 127.0.0.20 (Identity from an -inf file) -> stirgate 127.0.0.1 (verifies) -> 127.0.0.10
    sign:    SIPp customer 127.0.0.10 -> stirgate 127.0.0.1 (signs) -> SIPp UAS 127.0.0.20 (secsipidx checks)

Identity values are signed in the test just before the call (iat must be within 60 s). The x5u certificate is
served over https by the shipped x5u server (a subprocess) or, where requests are counted, by an https server in
a thread of this process. The SIPp UACs accept any final response; the tests read the exact one from the trace.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, Sipp, SippResult
from tests.integration.stir_env import (
    CALLER,
    CALLER_TN,
    DIALLED,
    OTHER_CALLER,
    SECSIPIDX,
    TERM_IP,
    CountingX5u,
    SilentServer,
    StirgateAt,
    StirPki,
    X5uServer,
    dead_url,
    inf_file,
    jws_parts,
    make_pki,
    param,
    secsipidx_check,
    secsipidx_sign,
    sent_invite_times,
    serve_x5u,
    sign_identity,
    signing_config,
    tamper_signature,
    trace_events,
    verifying_config,
    write_config,
)

PASSED = "TN-Validation-Passed"
FAILED = "TN-Validation-Failed"
NO_VALIDATION = "No-TN-Validation"
PAI_LINE = f"P-Asserted-Identity: <sip:{CALLER}@{CUSTOMER_IP}>"
PHRASES = {
    403: "Stale Date",
    428: "Use Identity Header",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
}
CARRIER_PAI_LINE = f"P-Asserted-Identity: <sip:{CALLER}@{CARRIER_IP}>"

needs_secsipidx = pytest.mark.skipif(SECSIPIDX is None, reason="secsipidx not installed (apt-get install secsipidx)")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> StirPki:
    return make_pki(tmp_path_factory.mktemp("stir-pki"))


@pytest.fixture(scope="session")
def x5u(pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    yield from serve_x5u(pki, tmp_path_factory.mktemp("x5u"))


GateFactory = Callable[..., StirgateAt]


def _gate_factory(workdir: Path) -> tuple[GateFactory, list[StirgateAt]]:
    started: list[StirgateAt] = []

    def start(cfg: dict[str, Any], *, ip: str = STIRGATE_IP, probe_from: str = CUSTOMER_IP) -> StirgateAt:
        d = workdir / f"stirgate-{ip}-{len(started)}"
        d.mkdir(parents=True)
        gate = StirgateAt(write_config(d / "stirgate.yaml", cfg), d, ip, probe_from)
        started.append(gate)
        return gate.start()

    return start, started


def _stop_all(started: list[StirgateAt]) -> None:
    """Each stirgate gets SIGTERM and must exit 0 (and must not have died during the test)."""
    problems = []
    for gate in reversed(started):
        crashed = not gate.alive()
        rc = gate.stop()
        if crashed:
            problems.append(f"stirgate {gate.ip} died during the test (exit {rc}):\n{gate.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate {gate.ip} exited {rc} on SIGTERM:\n{gate.log_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[GateFactory]:
    start, started = _gate_factory(tmp_path)
    yield start
    _stop_all(started)


# ----------------------------------------------------------------------------------------------- call helpers
def caller(workdir: Path, name: str, rows: list[tuple[str, str, str | None]], *, ip: str,
           remote_ip: str = STIRGATE_IP, calls: int | None = None, extra: tuple[str, ...] = ()) -> Sipp:  # fmt: skip
    """A SIPp UAC running stir_uac_identity.xml (rows carry an Identity) or stir_uac.xml (none)."""
    with_identity = any(r[2] is not None for r in rows)
    assert all((r[2] is not None) == with_identity for r in rows), "one scenario per run"
    inf = inf_file(workdir / f"{name}.csv", rows)
    scenario = "stir_uac_identity.xml" if with_identity else "stir_uac.xml"
    return Sipp(scenario, ip, workdir, name=name, remote=(remote_ip, SIP_PORT), calls=calls or len(rows),
                extra=("-inf", str(inf), *extra))  # fmt: skip


def callee(workdir: Path, name: str, *, ip: str, calls: int = 1) -> Sipp:
    return Sipp("stir_uas.xml", ip, workdir, name=name, calls=calls)


def run_call(uas: Sipp | None, uac: Sipp) -> tuple[SippResult, SippResult | None]:
    """Start the UAS (bound before anything is sent), run the UAC to its end, then collect the UAS."""
    if uas is None:
        return uac.start().wait(), None
    with harness.running(uas):
        uac_result = uac.start().wait()
        if all(_final(uac_result, cid) == 200 for cid in _call_ids(uac_result)):
            uas_result = uas.wait()
        else:  # some call never reached the UAS: don't wait for its timeout
            uas.kill()
            uas_result = uas.result()
    return uac_result, uas_result


def _call_ids(r: SippResult) -> list[str]:
    return list(dict.fromkeys(m.header("Call-ID") for m in r.requests("INVITE", "sent")))


def _final(r: SippResult, call_id: str) -> int | None:
    finals = [m.status for m in r.responses()
              if m.method == "INVITE" and (m.status or 0) >= 200 and m.header("Call-ID") == call_id]  # fmt: skip
    return finals[0] if finals else None


def finals(r: SippResult) -> list[int | None]:
    return [_final(r, cid) for cid in _call_ids(r)]


def final_response(r: SippResult) -> harness.TracedMessage:
    msgs = [m for m in r.responses() if m.method == "INVITE" and (m.status or 0) >= 200]
    assert msgs, f"no final response to the INVITE\n{r.summary()}"
    return msgs[0]


def assert_clean(*results: SippResult | None, calls: int = 1) -> None:
    for r in results:
        if r is None:
            continue
        assert r.returncode == 0 and r.failed in (0, None), r.summary()
        assert r.successful == calls, r.summary()


def verstat_of(invite: harness.TracedMessage) -> tuple[str | None, str | None]:
    """(verstat on the P-Asserted-Identity, verstat on From) of an INVITE the UAS received."""
    pai = invite.header("P-Asserted-Identity")
    return (param(pai, "verstat") if pai else None), param(invite.header("From"), "verstat")


def only_invite(r: SippResult) -> harness.TracedMessage:
    invites = r.requests("INVITE")
    assert len(invites) == 1, f"expected one INVITE at the UAS, got {len(invites)}\n{r.summary()}"
    return invites[0]


def explain(*gates: StirgateAt, r: SippResult | None = None) -> str:
    parts = [f"--- stirgate {g.ip} log:\n{g.log_tail(30)}" for g in gates]
    if r is not None:
        parts.append(r.summary(40))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- 1. the chain
def start_chain(gates: GateFactory, pki: StirPki, x5u_url: str) -> tuple[StirgateAt, StirgateAt]:
    """B (127.0.0.2, verifies calls from A, tags) first, then A (127.0.0.1, signs customer calls towards B)."""
    b = gates(verifying_config(pki, x5u_url, ip=TERM_IP, upstream_ip=STIRGATE_IP, downstream_ip=CARRIER_IP,
                               verify={"mode": "tag"}), ip=TERM_IP, probe_from=CARRIER_IP)  # fmt: skip
    a = gates(signing_config(pki, x5u_url, attestation={"prefixes": ["1555"]}, to_ip=TERM_IP))
    return a, b


@pytest.mark.usefixtures("sipp_bin")
@pytest.mark.parametrize("with_pai", [False, True], ids=["from", "pai"])
def test_chain_sign_then_verify(gates: GateFactory, pki: StirPki, x5u: X5uServer, tmp_path: Path,
                                with_pai: bool) -> None:  # fmt: skip
    a, b = start_chain(gates, pki, x5u.url())
    uac_r, uas_r = run_call(
        callee(tmp_path, "uas", ip=CARRIER_IP),
        caller(tmp_path, "uac", [(CALLER, PAI_LINE if with_pai else "", None)], ip=CUSTOMER_IP),
    )
    assert uac_r.requests("INVITE", "sent")[0].headers("Identity") == []  # the customer sent none
    assert finals(uac_r) == [200], explain(a, b, r=uac_r)
    assert_clean(uac_r, uas_r)
    assert uas_r is not None
    invite = only_invite(uas_r)
    identities = invite.headers("Identity")
    assert len(identities) == 1, f"the UAS should see A's Identity header\n{invite.raw.decode()}"
    head, claims, sig = jws_parts(identities[0])
    assert head == {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u.url()}
    assert (claims["attest"], claims["orig"], claims["dest"]) == ("A", {"tn": CALLER_TN}, {"tn": [DIALLED]})
    assert len(sig) == 64 and abs(claims["iat"] - time.time()) < 60
    pai_verstat, from_verstat = verstat_of(invite)
    if with_pai:
        assert (pai_verstat, from_verstat) == (PASSED, None), invite.raw.decode()
    else:
        assert (pai_verstat, from_verstat) == (None, PASSED), invite.raw.decode()


# ----------------------------------------------------------------------------------------------- 2. verification
def verifier_cfg(pki: StirPki, x5u_url: str, mode: str, on_missing: str = "tag", **stir_verify: Any) -> dict[str, Any]:
    """stirgate 127.0.0.1 verifying calls from the carrier (127.0.0.20), delivering to the customer (127.0.0.10)."""
    return verifying_config(pki, x5u_url, ip=STIRGATE_IP, upstream_ip=CARRIER_IP, downstream_ip=CUSTOMER_IP,
                            verify={"mode": mode, "on_missing": on_missing}, **stir_verify)  # fmt: skip


def carrier_call(tmp_path: Path, name: str, identity: str | None, *, with_uas: bool,
                 extra_line: str = "") -> tuple[SippResult, SippResult | None]:  # fmt: skip
    uas = callee(tmp_path, f"{name}-uas", ip=CUSTOMER_IP) if with_uas else None
    return run_call(uas, caller(tmp_path, name, [(CALLER, extra_line, identity)], ip=CARRIER_IP))


@pytest.fixture(scope="class")
def tag_gate(tmp_path_factory: pytest.TempPathFactory, pki: StirPki, x5u: X5uServer) -> Iterator[StirgateAt]:
    """One verifying stirgate in tag mode for the whole TestTagMode class."""
    start, started = _gate_factory(tmp_path_factory.mktemp("tag-mode"))
    yield start(verifier_cfg(pki, x5u.url(), "tag"))
    _stop_all(started)


@pytest.fixture(scope="class")
def reject_gate(tmp_path_factory: pytest.TempPathFactory, pki: StirPki, x5u: X5uServer) -> Iterator[StirgateAt]:
    """One verifying stirgate in reject mode (428 on a missing Identity) for the whole TestRejectMode class.

    Short fetch bounds (0.5 s per fetch, 1 s wait) keep the 436 cases quick."""
    start, started = _gate_factory(tmp_path_factory.mktemp("reject-mode"))
    yield start(verifier_cfg(pki, x5u.url(), "reject", "reject", fetch_timeout=0.5, wait_timeout=1.0))
    _stop_all(started)


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> StirgateAt:
    """The class's stirgate (tag_gate or reject_gate, named by the class's GATE attribute)."""
    gate: StirgateAt = request.getfixturevalue(request.cls.GATE)
    return gate


@pytest.mark.usefixtures("sipp_bin")
class TestTagMode:
    """One stirgate, `verify: {mode: tag}`: every call is forwarded, the customer sees the verdict."""

    GATE = "tag_gate"

    def _call(self, gate: StirgateAt, tmp_path: Path, identity: str | None,
              extra_line: str = "") -> harness.TracedMessage:  # fmt: skip
        uac_r, uas_r = carrier_call(tmp_path, "uac", identity, with_uas=True, extra_line=extra_line)
        assert finals(uac_r) == [200], explain(gate, r=uac_r)
        assert_clean(uac_r, uas_r)
        assert uas_r is not None
        return only_invite(uas_r)

    def test_valid_identity_passes(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        invite = self._call(gate, tmp_path, sign_identity(pki.key, x5u.url()))
        assert verstat_of(invite) == (None, PASSED), invite.raw.decode()

    def test_valid_identity_passes_verstat_on_pai(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer,
                                                  tmp_path: Path) -> None:  # fmt: skip
        invite = self._call(gate, tmp_path, sign_identity(pki.key, x5u.url()), extra_line=CARRIER_PAI_LINE)
        assert verstat_of(invite) == (PASSED, None), invite.raw.decode()

    def test_tampered_signature_fails(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        invite = self._call(gate, tmp_path, tamper_signature(sign_identity(pki.key, x5u.url())))
        assert verstat_of(invite) == (None, FAILED), invite.raw.decode()

    def test_no_identity_is_no_validation(self, gate: StirgateAt, tmp_path: Path) -> None:
        invite = self._call(gate, tmp_path, None)
        assert verstat_of(invite) == (None, NO_VALIDATION), invite.raw.decode()

    @needs_secsipidx
    @pytest.mark.parametrize("attest", ["A", "B", "C"])
    def test_secsipidx_signed_identity_passes(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer,
                                              tmp_path: Path, attest: str) -> None:  # fmt: skip
        """Cross-implementation: an Identity made by secsipidx (libsecsipid) verifies in stirgate."""
        value = secsipidx_sign(pki.key, x5u.url(), attest=attest)
        invite = self._call(gate, tmp_path, value)
        assert verstat_of(invite) == (None, PASSED), invite.raw.decode()


@pytest.mark.usefixtures("sipp_bin")
class TestRejectMode:
    """One stirgate, `verify: {mode: reject, on_missing: reject}`: failures get REFERENCE.md codes and Reason."""

    GATE = "reject_gate"

    def _rejected(self, gate: StirgateAt, tmp_path: Path, identity: str | None) -> harness.TracedMessage:
        uac_r, _ = carrier_call(tmp_path, "uac", identity, with_uas=False)
        assert_clean(uac_r)
        return final_response(uac_r)

    def _assert_reason(self, resp: harness.TracedMessage, code: int) -> None:
        """Status line and RFC 9410 `Reason: STIR;cause=N;text="..."` with the REFERENCE.md phrase."""
        phrase = PHRASES[code]
        assert resp.first_line == f"SIP/2.0 {code} {phrase}", resp.first_line
        reasons = resp.headers("Reason")
        assert len(reasons) == 1, resp.raw.decode()
        assert reasons[0].split(";")[0].strip() == "STIR", reasons[0]
        assert param(reasons[0], "cause") == str(code), reasons[0]
        assert param(reasons[0], "text") == f'"{phrase}"', reasons[0]

    def test_valid_identity_is_forwarded(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer,
                                         tmp_path: Path) -> None:  # fmt: skip
        uac_r, uas_r = carrier_call(tmp_path, "uac", sign_identity(pki.key, x5u.url()), with_uas=True)
        assert finals(uac_r) == [200], explain(gate, r=uac_r)
        assert_clean(uac_r, uas_r)
        assert uas_r is not None and verstat_of(only_invite(uas_r)) == (None, PASSED)

    def test_tampered_signature_438(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, tamper_signature(sign_identity(pki.key, x5u.url())))
        assert resp.status == 438, resp.raw.decode()
        self._assert_reason(resp, 438)

    def test_missing_identity_428(self, gate: StirgateAt, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, None)
        assert resp.first_line == "SIP/2.0 428 Use Identity Header", resp.raw.decode()

    def test_stale_iat_403(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, sign_identity(pki.key, x5u.url(), iat=time.time() - 600))
        assert resp.status == 403, resp.raw.decode()
        self._assert_reason(resp, 403)

    def test_x5u_nothing_listening_436(self, gate: StirgateAt, pki: StirPki, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, sign_identity(pki.key, dead_url()))
        assert resp.status == 436, resp.raw.decode()
        self._assert_reason(resp, 436)

    def test_x5u_server_never_answers_436(self, gate: StirgateAt, pki: StirPki, tmp_path: Path) -> None:
        """The server accepts the TCP connection and says nothing: the call is answered after the bounded wait."""
        silent = SilentServer()
        try:
            resp = self._rejected(gate, tmp_path, sign_identity(pki.key, silent.url()))
        finally:
            silent.close()
        assert resp.status == 436, resp.raw.decode()
        self._assert_reason(resp, 436)

    def test_future_iat_403(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, sign_identity(pki.key, x5u.url(), iat=time.time() + 600))
        assert resp.status == 403, resp.raw.decode()
        self._assert_reason(resp, 403)

    def test_waiting_call_does_not_hold_others(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer,
                                               tmp_path: Path) -> None:  # fmt: skip
        """Call 1 waits for an x5u server that never answers; call 2 (sent 20 ms later) completes meanwhile."""
        silent = SilentServer()
        rows: list[tuple[str, str, str | None]] = [(CALLER, "", sign_identity(pki.key, silent.url())),
                                                   (CALLER, "", sign_identity(pki.key, x5u.url()))]  # fmt: skip
        try:
            uac_r, _uas_r = run_call(
                callee(tmp_path, "uas", ip=CUSTOMER_IP),
                caller(tmp_path, "uac", rows, ip=CARRIER_IP, extra=("-r", "50", "-l", "2")),
            )
        finally:
            silent.close()
        assert finals(uac_r) == [436, 200], explain(gate, r=uac_r)
        assert_clean(uac_r, calls=2)
        slow_id, fast_id = _call_ids(uac_r)
        events = trace_events(uac_r.workdir / "messages.log")
        slow_final = next(e.at for e in events if e.call_id == slow_id and e.first_line.startswith("SIP/2.0 436"))
        fast_final = next(e.at for e in events if e.call_id == fast_id and e.first_line.startswith("SIP/2.0 200"))
        assert fast_final < slow_final, "the second call waited behind the first one's x5u fetch"

    def test_cancel_while_waiting_for_x5u(self, gate: StirgateAt, pki: StirPki, tmp_path: Path) -> None:
        """CANCEL while the call waits for its certificate: 200 + 487, and when the fetch ends the dead call is
        not resumed (nothing reaches the customer trunk)."""
        silent = SilentServer()
        harness.wait_port_free(CUSTOMER_IP, SIP_PORT, "udp")
        customer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            customer.bind((CUSTOMER_IP, SIP_PORT))
            inf = inf_file(tmp_path / "cancel.csv", [(CALLER, "", sign_identity(pki.key, silent.url()))])
            uac_r = Sipp("stir_uac_cancel.xml", CARRIER_IP, tmp_path, name="uac", remote=(STIRGATE_IP, SIP_PORT),
                         extra=("-inf", str(inf))).start().wait()  # fmt: skip
            assert finals(uac_r) == [487], explain(gate, r=uac_r)
            assert [m.status for m in uac_r.responses() if m.method == "CANCEL"] == [200], uac_r.summary()
            assert_clean(uac_r)
            # The fetcher closes its connection when it gives up; the engine resumes the call right after.
            assert silent.wait_client_gone(10), "the x5u fetch never ended"
            customer.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                stray = customer.recv(65535)
                pytest.fail(f"a cancelled call reached the customer trunk:\n{stray.decode(errors='replace')}")
        finally:
            customer.close()
            silent.close()

    def test_untrusted_ca_437(self, gate: StirgateAt, pki: StirPki, x5u: X5uServer, tmp_path: Path) -> None:
        resp = self._rejected(gate, tmp_path, sign_identity(pki.untrusted_key, x5u.url("untrusted.pem")))
        assert resp.status == 437, resp.raw.decode()
        self._assert_reason(resp, 437)


# ----------------------------------------------------------------------------------------------- 3. secsipidx
@needs_secsipidx
@pytest.mark.usefixtures("sipp_bin")
@pytest.mark.parametrize(
    ("attest", "caller_number", "attestation"),
    [("A", CALLER, {"prefixes": ["1555"]}), ("B", OTHER_CALLER, {"prefixes": ["1555"]}), ("C", CALLER, None)],
    ids=["A-owned-prefix", "B-known-customer", "C-gateway"],
)
def test_stirgate_signed_call_verifies_in_secsipidx(gates: GateFactory, pki: StirPki, x5u: X5uServer, tmp_path: Path,
                                                    attest: str, caller_number: str,
                                                    attestation: dict[str, Any] | None) -> None:  # fmt: skip
    gate = gates(signing_config(pki, x5u.url(), attestation=attestation, to_ip=CARRIER_IP))
    uac_r, uas_r = run_call(callee(tmp_path, "uas", ip=CARRIER_IP),
                            caller(tmp_path, "uac", [(caller_number, "", None)], ip=CUSTOMER_IP))  # fmt: skip
    assert finals(uac_r) == [200], explain(gate, r=uac_r)
    assert_clean(uac_r, uas_r)
    assert uas_r is not None
    identities = only_invite(uas_r).headers("Identity")
    assert len(identities) == 1, uas_r.summary()
    _head, claims, _sig = jws_parts(identities[0])
    assert claims["attest"] == attest
    assert claims["orig"] == {"tn": caller_number.lstrip("+")}
    proc = secsipidx_check(identities[0], pki.pub)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- 4. cache
def cache_run(gates: GateFactory, pki: StirPki, tmp_path: Path, server: CountingX5u, calls: int,
              sipp_extra: tuple[str, ...],
              mode: str = "tag") -> tuple[StirgateAt, SippResult, SippResult | None]:  # fmt: skip
    gate = gates(verifier_cfg(pki, server.url(), mode, fetch_timeout=2.0, wait_timeout=3.0))
    value = sign_identity(pki.key, server.url())  # one certificate, one PASSporT for every call
    rows: list[tuple[str, str, str | None]] = [(CALLER, "", value)] * calls
    uac = caller(tmp_path, "uac", rows, ip=CARRIER_IP, extra=sipp_extra)
    uac_r, uas_r = run_call(callee(tmp_path, "uas", ip=CUSTOMER_IP, calls=calls), uac)
    return gate, uac_r, uas_r


def _assert_all_passed(gate: StirgateAt, uac_r: SippResult, uas_r: SippResult | None, calls: int) -> None:
    assert finals(uac_r) == [200] * calls, explain(gate, r=uac_r)
    assert_clean(uac_r, uas_r, calls=calls)
    assert uas_r is not None
    invites = uas_r.requests("INVITE")
    assert len({m.header("Call-ID") for m in invites}) == calls
    assert [verstat_of(m)[1] for m in invites] == [PASSED] * calls, uas_r.summary()


@pytest.mark.usefixtures("sipp_bin")
def test_cache_many_calls_one_fetch(gates: GateFactory, pki: StirPki, tmp_path: Path) -> None:
    calls = 20
    server = CountingX5u(pki, (pki.dir / "sp.pem").read_bytes(), cache_control="max-age=3600").start()
    try:
        gate, uac_r, uas_r = cache_run(gates, pki, tmp_path, server, calls, ("-r", "20", "-l", "1"))
    finally:
        server.stop()
    _assert_all_passed(gate, uac_r, uas_r, calls)
    assert server.count == 1, server.requests


@pytest.mark.usefixtures("sipp_bin")
def test_cache_concurrent_first_calls_one_fetch(gates: GateFactory, pki: StirPki, tmp_path: Path) -> None:
    """The first answer is held 0.8 s; calls arrive at 100/s, so many wait on the same fetch."""
    calls = 20
    server = CountingX5u(pki, (pki.dir / "sp.pem").read_bytes(), hold_max=0.8).start()
    try:
        gate, uac_r, uas_r = cache_run(gates, pki, tmp_path, server, calls, ("-r", "100", "-l", str(calls)))
    finally:
        server.stop()
    _assert_all_passed(gate, uac_r, uas_r, calls)
    assert server.count == 1, server.requests
    # The premise: several INVITEs were sent before the (only) certificate answer left the server.
    sent = sent_invite_times(uac_r.workdir / "messages.log")
    assert len(sent) >= calls and server.answered_at
    in_flight = sum(1 for t in sent if t < server.answered_at[0])
    assert in_flight >= 5, f"only {in_flight} INVITEs before the fetch returned (premise of the test)"


@pytest.mark.usefixtures("sipp_bin")
def test_uncacheable_certificate_still_verifies_and_is_refetched(gates: GateFactory, pki: StirPki,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """max-age honoured the other way: `no-store` -> each sequential call fetches again, and still passes.

    In reject mode, so that a failure shows the SIP code the caller got."""
    calls = 3
    server = CountingX5u(pki, (pki.dir / "sp.pem").read_bytes(), cache_control="no-store").start()
    try:
        gate, uac_r, uas_r = cache_run(gates, pki, tmp_path, server, calls, ("-r", "10", "-l", "1"), mode="reject")
    finally:
        server.stop()
    assert finals(uac_r) == [200] * calls, [m.raw.decode() for m in uac_r.responses() if (m.status or 0) >= 400][:1]
    assert server.count == calls, server.requests
    _assert_all_passed(gate, uac_r, uas_r, calls)


# ----------------------------------------------------------------------------------------------- 5. pjsua2
def test_pjsua2_call_through_chain(gates: GateFactory, pki: StirPki, x5u: X5uServer, tmp_path: Path,
                                   pjsua2_available: None) -> None:  # fmt: skip
    """tests/integration/pjsua2_agent.py (read-only reuse): caller 127.0.0.10 (15551230001) -> A -> B -> callee
    127.0.0.20, both UAs in one subprocess (one Endpoint per process)."""
    from tests.integration.test_pjsua2_call import describe, run_agent

    a, b = start_chain(gates, pki, x5u.url())
    r = run_agent((STIRGATE_IP, SIP_PORT), tmp_path)
    assert r["both_confirmed"] and r["both_ended"], describe(r) + "\n" + explain(a, b)
    sent = r["caller_invite_sent"] or ""
    assert "\r\nIdentity:" not in sent.split("\r\n\r\n")[0], sent  # the caller sent none
    invite = harness.TracedMessage("received", "UDP", (r["callee_invite_received"] or "").encode())
    identities = invite.headers("Identity")
    assert len(identities) == 1, invite.raw.decode()
    head, claims, _sig = jws_parts(identities[0])
    assert head["x5u"] == x5u.url()
    assert (claims["attest"], claims["orig"], claims["dest"]) == ("A", {"tn": CALLER_TN}, {"tn": [DIALLED]})
    assert verstat_of(invite) == (None, PASSED), invite.raw.decode()
