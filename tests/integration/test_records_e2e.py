"""Call records, /metrics and traceback end to end (issue 5, Tests): live stirgate processes, real SIPp, real SQLite.

Topology (../shared/TOPOLOGY.md), 127.0.0.x only: SIPp UAC as the customer trunk on 127.0.0.10, stirgate on
127.0.0.1, SIPp UAS as the carrier on 127.0.0.20; for STIR, the chain customer -> stirgate A 127.0.0.1 (signs)
-> stirgate B 127.0.0.2 (verifies) -> UAS 127.0.0.20 of tests/integration/stir_env.py. Each stirgate gets its
own records database (under the test's tmp dir) and its own HTTP API port.

What is observed, never assumed after a sleep: SIPp's own statistics and message traces, the rows of the SQLite
file once stirgate has exited, `/metrics` parsed with prometheus-client's parser, `/traceback`, the CLI, and
stirgate's JSON log (`draining`, `records_closed`). Waits poll a condition a bounded number of times.

harness.py, conftest.py and stir_env.py are reused as they are. sipp_scenarios/rec_uac_hold.xml is this file's
own UAC: a call held for `-d` ms, and a 503 from a draining stirgate ACKed and counted as a failed call.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import harness
from tests.integration.conftest import QUICK_TIMERS, StirgateFactory, log_problems
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, DIALLED, SIP_PORT, STIRGATE_IP, Sipp, SippResult
from tests.integration.stir_env import (
    TERM_IP,
    StirgateAt,
    StirPki,
    X5uServer,
    inf_file,
    jws_parts,
    serve_x5u,
    signing_config,
    verifying_config,
    write_config,
)

pytestmark = pytest.mark.usefixtures("sipp_bin")  # skip, saying why, where SIPp is not installed

STIRGATE = (STIRGATE_IP, SIP_PORT)
CALLER = "+15551230001"  # From user part of rec_uac_hold.xml, uac_basic.xml, uac_busy.xml
CALLER_TN = "15551230001"
OTHER_TN = "+12125550100"  # a number no call of these tests used
SIGNER_SPC = "4321"  # SPC of the demo PKI made here (not the default 9999: the value must come from the cert)
PASSED = "TN-Validation-Passed"
# The plain-call tests pin "no signing" on the customer trunk whatever examples/loopback.yaml says (it may sign
# customer calls): their records must show no STIR fields. STIR fields are the chain test's subject.
PLAIN = {"customer": {"sign": None}}


# ----------------------------------------------------------------------------------------------- helpers
def api_port() -> int:
    return harness.free_port(STIRGATE_IP, kind=socket.SOCK_STREAM)


def records_extra(db: Path, port: int, **records: Any) -> dict[str, Any]:
    """`records:` and `api:` for one stirgate: its own database file and API port."""
    return {"records": {"path": str(db), **records}, "api": {"listen": f"{STIRGATE_IP}:{port}"}}


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through an http_proxy


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _HTTP.open(f"http://{STIRGATE_IP}:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """GET /metrics, parsed by prometheus-client's own text parser: {(sample name, labels): value}."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body[:500]
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def calls_by_label(samples: Samples) -> dict[tuple[str, str, str, str], float]:
    """stirgate_calls_total as {(trunk, outcome, verstat, attest): count}."""
    out = {}
    for (name, labels), v in samples.items():
        if name == "stirgate_calls_total":
            d = dict(labels)
            out[(d["trunk"], d["outcome"], d["verstat"], d["attest"])] = v
    return out


def wait_metric(port: int, name: str, want: Callable[[float], bool], what: str, seconds: float = 15.0,
                sg: harness.Stirgate | None = None) -> Samples:  # fmt: skip
    """Scrape until `want(value of name)` holds (bounded); the last scrape."""
    last: Samples = {}

    def check() -> bool:
        nonlocal last
        last = scrape(port)
        return want(sample(last, name) or 0.0)

    try:
        harness.wait_until(check, what, attempts=int(seconds / 0.05), interval=0.05)
    except TimeoutError:
        tail = f"\n--- stirgate log:\n{sg.log_tail(20)}" if sg is not None else ""
        raise AssertionError(f"timed out waiting for {what}: {name} = {sample(last, name)}{tail}") from None
    return last


def db_rows(db: Path) -> list[dict[str, Any]]:
    """Every row of the `calls` table, read with plain sqlite3 (read-only) after stirgate has exited."""
    assert db.exists(), f"no records database at {db}"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        conn.close()


def log_events(sg: harness.Stirgate, event: str) -> list[dict[str, Any]]:
    out = []
    for line in sg.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("event") == event:
                out.append(rec)
    return out


def stop_and_reap(sg: harness.Stirgate, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM, wait for the exit (must be 0); the `records_closed` log line the writer leaves."""
    sg.terminate()
    assert sg.proc is not None
    try:
        rc = sg.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        sg.kill()
        raise AssertionError(f"stirgate did not exit within {timeout}s of SIGTERM:\n{sg.log_tail()}") from None
    assert rc == 0, f"stirgate exited {rc} on SIGTERM:\n{sg.log_tail()}"
    closed = log_events(sg, "records_closed")
    assert len(closed) == 1, f"expected one records_closed line:\n{sg.log_tail()}"
    return closed[0]


def uac(workdir: Path, scenario: str, *, ip: str = CUSTOMER_IP, **kw: Any) -> Sipp:
    return Sipp(scenario, ip, workdir, remote=STIRGATE, **kw)


def uas(workdir: Path, scenario: str, *, ip: str = CARRIER_IP, **kw: Any) -> Sipp:
    return Sipp(scenario, ip, workdir, **kw)


def run_pair(callee: Sipp, caller: Sipp) -> tuple[SippResult, SippResult]:
    """Start the UAS (bound before anything is sent), run the UAC to its end, then collect the UAS."""
    with harness.running(callee):
        caller_result = caller.start().wait()
        callee_result = callee.wait()
    return caller_result, callee_result


def assert_passed(*results: SippResult, calls: int) -> None:
    for r in results:
        assert r.returncode == 0 and r.failed in (0, None), r.summary()
        assert r.successful == calls, r.summary()


def invite_ids(r: SippResult, direction: str) -> list[str]:
    """Call-IDs of the initial INVITEs a SIPp sent or received, in order, each once."""
    return list(dict.fromkeys(m.header("Call-ID") for m in r.requests("INVITE", direction)
                              if not _to_tag(m.header("To"))))  # fmt: skip


def completed_ids(r: SippResult) -> set[str]:
    """Call-IDs of the calls a UAC saw complete: its BYE answered 200."""
    return {m.header("Call-ID") for m in r.responses() if m.method == "BYE" and m.status == 200}


def _to_tag(value: str) -> str:
    for p in value.split(";")[1:]:
        key, _, val = p.strip().partition("=")
        if key.lower() == "tag":
            return val
    return ""


@contextlib.contextmanager
def own_stirgate(workdir: Path, *, expected_errors: tuple[str, ...] = (), **overrides: Any
                 ) -> Iterator[harness.Stirgate]:  # fmt: skip
    """conftest's stirgate_factory for a stirgate outside a test function (module scope) or one whose error log
    lines are the point of the test: the same checks at the end (exit 0 on SIGTERM, no crash, conftest's
    log_problems), minus error lines of the `expected_errors` events."""
    workdir.mkdir(parents=True)
    sg = harness.Stirgate(harness.make_config(workdir / "stirgate.yaml", **overrides), workdir)
    try:
        sg.start()
        yield sg
    except BaseException:
        sg.stop()
        raise
    crashed = not sg.alive() and not sg.terminated
    rc = sg.stop()
    problems = []
    if crashed:
        problems.append(f"stirgate died during the test (exit {rc}):\n{sg.log_tail()}")
    elif rc != 0:
        problems.append(f"stirgate exited {rc} on SIGTERM (expected 0):\n{sg.log_tail()}")
    problems += [p for p in log_problems(sg) if not any(harness.names_event(p, e) for e in expected_errors)]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# ----------------------------------------------------------------------------------------------- 1-3. N calls
N_CALLS = 20
HOLD_MS = 300  # rec_uac_hold.xml -d: each call is up this long


@dataclass
class RecordedRun:
    """N answered calls and one rejected (486) through one stirgate, then a clean stop; what was observed."""

    db: Path
    config: Path
    t0: float
    t1: float
    answered: SippResult
    answered_uas: SippResult
    busy: SippResult
    busy_uas: SippResult
    metrics: Samples  # scraped once every record was written, before the stop
    api_hit: tuple[int, dict[str, Any]]  # /traceback?orig=CALLER&dest=DIALLED&at=now
    api_other: tuple[int, dict[str, Any]]  # /traceback for OTHER_TN
    closed: dict[str, Any]  # records_closed log line
    rows: list[dict[str, Any]]

    def rows_for(self, call_ids: set[str] | list[str]) -> list[dict[str, Any]]:
        ids = set(call_ids)
        return [r for r in self.rows if r["a_call_id"] in ids]


def _api_traceback(port: int, orig: str) -> tuple[int, dict[str, Any]]:
    query = urllib.parse.urlencode({"orig": orig, "dest": DIALLED, "at": "now"})
    status, body = http_get(port, f"/traceback?{query}")
    return status, json.loads(body)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, sipp_bin: str) -> Iterator[RecordedRun]:
    tmp = tmp_path_factory.mktemp("records-run")
    db = tmp / "records" / "calls.sqlite3"
    port = api_port()
    with own_stirgate(tmp / "stirgate", sip=QUICK_TIMERS, trunks=PLAIN, extra=records_extra(db, port)) as sg:
        t0 = time.time()
        answered, answered_uas = run_pair(
            uas(tmp, "uas_answer.xml", calls=N_CALLS),
            uac(tmp, "rec_uac_hold.xml", calls=N_CALLS, extra=("-r", "20", "-l", "10", "-d", str(HOLD_MS))),
        )
        busy, busy_uas = run_pair(uas(tmp, "uas_busy.xml", name="busy_uas"), uac(tmp, "uac_busy.xml", name="busy_uac"))
        t1 = time.time()
        assert_passed(answered, answered_uas, calls=N_CALLS)
        assert_passed(busy, busy_uas, calls=1)
        # The records reach the disk off the SIP path (flush_interval 0.5 s): wait for the writer's count.
        metrics = wait_metric(port, "stirgate_records_written_total", lambda v: v >= N_CALLS + 1,
                              f"{N_CALLS + 1} records written", sg=sg)  # fmt: skip
        api_hit = _api_traceback(port, CALLER)
        api_other = _api_traceback(port, OTHER_TN)
        closed = stop_and_reap(sg)
    yield RecordedRun(db, sg.config, t0, t1, answered, answered_uas, busy, busy_uas, metrics, api_hit, api_other,
                      closed, db_rows(db))  # fmt: skip


def test_n_calls_n_records_with_their_fields(recorded: RecordedRun) -> None:
    r = recorded
    a_ids = invite_ids(r.answered, "sent")
    assert len(a_ids) == N_CALLS
    assert len(r.rows) == N_CALLS + 1, [row["a_call_id"] for row in r.rows]
    rows = r.rows_for(a_ids)
    assert sorted(row["a_call_id"] for row in rows) == sorted(a_ids)
    # The B-leg Call-IDs are the ones the carrier saw (stirgate's own, not the caller's).
    assert {row["b_call_id"] for row in rows} == set(invite_ids(r.answered_uas, "received"))
    for row in rows:
        where = f"record {row}"
        assert (row["ingress"], row["egress"], row["source_ip"], row["source_port"], row["transport"]) == (
            "customer", "carrier", CUSTOMER_IP, SIP_PORT, "udp"), where
        assert (row["status"], row["end_reason"]) == (200, "bye-a"), where  # the caller hung up
        assert (row["orig_signaled"], row["orig"], row["dest_signaled"], row["dest"], row["display_name"]) == (
            CALLER, CALLER_TN, DIALLED, DIALLED, "Alice"), where
        assert r.t0 - 0.5 <= row["invite_at"] <= row["answered_at"] <= row["ended_at"] <= r.t1 + 0.5, where
        assert row["duration"] == pytest.approx(row["ended_at"] - row["answered_at"], abs=1e-3), where
        assert HOLD_MS / 1000 - 0.05 <= row["duration"] <= HOLD_MS / 1000 + 5, where
        # No STIR on this stirgate (loopback.yaml): nothing verified, nothing signed.
        assert (row["verification"], row["verstat"], row["attest"], row["spc"], row["signed"]) == (
            None, None, None, None, 0), where


def test_rejected_call_records_its_code(recorded: RecordedRun) -> None:
    r = recorded
    busy_ids = invite_ids(r.busy, "sent")
    rows = r.rows_for(busy_ids)
    assert len(busy_ids) == 1 and len(rows) == 1, r.rows
    row = rows[0]
    assert row["status"] == 486, row
    assert row["end_reason"] == "rejected:486", row
    assert (row["ingress"], row["egress"], row["source_ip"]) == ("customer", "carrier", CUSTOMER_IP), row
    assert row["b_call_id"] == invite_ids(r.busy_uas, "received")[0], row
    assert row["answered_at"] is None and row["duration"] == 0, row
    assert r.t0 - 0.5 <= row["invite_at"] <= row["ended_at"] <= r.t1 + 0.5, row


def test_clean_stop_flushes_every_record(recorded: RecordedRun) -> None:
    c = recorded.closed
    assert (c["written"], c["dropped"], c["lost"], c["write_errors"]) == (N_CALLS + 1, 0, 0, 0), c
    assert len(recorded.rows) == c["written"]


def test_metrics_match_the_calls_made(recorded: RecordedRun) -> None:
    m = recorded.metrics
    assert calls_by_label(m) == {
        ("customer", "answered", "none", "none"): N_CALLS,
        ("customer", "rejected", "none", "none"): 1,
    }, calls_by_label(m)
    assert sample(m, "stirgate_sip_events_total", event="invites") == N_CALLS + 1
    assert sample(m, "stirgate_sip_events_total", event="answered") == N_CALLS
    assert sample(m, "stirgate_records_written_total") == N_CALLS + 1
    for name in ("stirgate_records_dropped_total", "stirgate_records_lost_total", "stirgate_record_write_errors_total",
                 "stirgate_record_queue_depth", "stirgate_active_calls"):  # fmt: skip
        assert sample(m, name) == 0, name
    assert sample(m, "stirgate_records_writer_up") == 1
    # Every INVITE forwarded was timed once.
    assert sample(m, "stirgate_invite_forward_delay_seconds_count") == N_CALLS + 1


def test_api_traceback_returns_exactly_the_calls_made(recorded: RecordedRun) -> None:
    r = recorded
    status, body = r.api_hit
    assert status == 200, body
    made = set(invite_ids(r.answered, "sent")) | set(invite_ids(r.busy, "sent"))
    got = [c["a_call_id"] for c in body["calls"]]
    assert len(got) == len(made) and set(got) == made, body
    for call in body["calls"]:  # what a traceback answer needs
        assert (call["ingress"], call["source_ip"], call["source_port"]) == ("customer", CUSTOMER_IP, SIP_PORT)
        assert (call["orig"], call["dest"]) == (CALLER_TN, DIALLED)
    status, body = r.api_other
    assert status == 200 and body["calls"] == [], body


def test_cli_traceback_returns_exactly_the_calls_made(recorded: RecordedRun) -> None:
    r = recorded

    def cli(orig: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*harness.stirgate_command(), "traceback", "--db", str(r.db), "--orig", orig,
                               "--dest", DIALLED, "--at", "now", "--json"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    hit = cli(CALLER)
    assert hit.returncode == 0, hit.stdout + hit.stderr
    made = set(invite_ids(r.answered, "sent")) | set(invite_ids(r.busy, "sent"))
    calls = json.loads(hit.stdout)["calls"]
    assert sorted(c["a_call_id"] for c in calls) == sorted(made), hit.stdout[:2000]
    by_id = {c["a_call_id"]: c for c in calls}
    for row in r.rows:  # the CLI returns the stored record, field for field
        c = by_id[row["a_call_id"]]
        for key in ("b_call_id", "ingress", "egress", "source_ip", "source_port", "status", "end_reason",
                    "invite_at", "answered_at", "ended_at"):  # fmt: skip
            assert c[key] == row[key], (key, c, row)
    other = cli(OTHER_TN)
    assert other.returncode == 1, other.stdout + other.stderr  # 1: no call found
    assert json.loads(other.stdout)["calls"] == []
    # The human table names the calls too.
    table = subprocess.run([*harness.stirgate_command(), "traceback", "--db", str(r.db), "--orig", CALLER,
                            "--dest", DIALLED, "--at", "now"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert table.returncode == 0 and f": {len(made)}" in table.stdout.splitlines()[0], table.stdout + table.stderr


# ----------------------------------------------------------------------------------------------- 1. STIR chain
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> StirPki:
    """A demo PKI (`stirgate certs init`) whose SP certificate carries SPC 4321 (the records must show it)."""
    d = tmp_path_factory.mktemp("rec-pki")
    proc = subprocess.run([*harness.stirgate_command(), "certs", "init", str(d), "--spc", SIGNER_SPC],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return StirPki(d, d)


@pytest.fixture(scope="module")
def x5u(pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    yield from serve_x5u(pki, tmp_path_factory.mktemp("rec-x5u"))


GateFactory = Callable[..., StirgateAt]


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[GateFactory]:
    """stirgates on any loopback address (stir_env.StirgateAt); at the end: exit 0 on SIGTERM, clean logs."""
    started: list[StirgateAt] = []

    def start(cfg: dict[str, Any], *, ip: str = STIRGATE_IP, probe_from: str = CUSTOMER_IP) -> StirgateAt:
        d = tmp_path / f"stirgate-{ip}-{len(started)}"
        d.mkdir(parents=True)
        gate = StirgateAt(write_config(d / "stirgate.yaml", cfg), d, ip, probe_from)
        started.append(gate)
        return gate.start()

    yield start
    problems = []
    for gate in reversed(started):
        crashed = not gate.alive() and not gate.terminated
        rc = gate.stop()
        if crashed:
            problems.append(f"stirgate {gate.ip} died during the test (exit {rc}):\n{gate.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate {gate.ip} exited {rc} on SIGTERM:\n{gate.log_tail()}")
        problems += log_problems(gate)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def test_signed_and_verified_calls_carry_stir_fields(gates: GateFactory, pki: StirPki, x5u: X5uServer,
                                                     tmp_path: Path) -> None:  # fmt: skip
    """customer -> A (signs, records attest) -> B (verifies, records verstat, attest, SPC of the signer) -> UAS."""
    calls = 3
    db_a, db_b = tmp_path / "a" / "records.sqlite3", tmp_path / "b" / "records.sqlite3"
    port_a, port_b = api_port(), api_port()
    cfg_b = verifying_config(pki, x5u.url(), ip=TERM_IP, upstream_ip=STIRGATE_IP, downstream_ip=CARRIER_IP,
                             verify={"mode": "tag"}) | records_extra(db_b, port_b)  # fmt: skip
    cfg_a = signing_config(pki, x5u.url(), attestation={"prefixes": ["1555"]}, to_ip=TERM_IP) | records_extra(
        db_a, port_a)
    b = gates(cfg_b, ip=TERM_IP, probe_from=CARRIER_IP)
    a = gates(cfg_a)
    inf = inf_file(tmp_path / "callers.csv", [(CALLER, "", None)] * calls)
    t0 = time.time()
    caller, callee = run_pair(
        Sipp("stir_uas.xml", CARRIER_IP, tmp_path, name="uas", calls=calls),
        Sipp("stir_uac.xml", CUSTOMER_IP, tmp_path, name="uac", remote=STIRGATE, calls=calls,
             extra=("-inf", str(inf), "-r", "10", "-l", "1")),
    )  # fmt: skip
    t1 = time.time()
    assert_passed(caller, callee, calls=calls)
    invites = [m for m in callee.requests("INVITE") if not _to_tag(m.header("To"))]
    assert len(invites) == calls and all(len(m.headers("Identity")) == 1 for m in invites), callee.summary()
    origids = {jws_parts(m.header("Identity"))[1]["origid"] for m in invites}
    assert len(origids) == 1, origids
    origid = origids.pop()

    m_a = wait_metric(port_a, "stirgate_records_written_total", lambda v: v >= calls, "A's records", sg=a)
    m_b = wait_metric(port_b, "stirgate_records_written_total", lambda v: v >= calls, "B's records", sg=b)
    assert calls_by_label(m_a) == {("customer", "answered", "none", "A"): calls}, calls_by_label(m_a)
    assert calls_by_label(m_b) == {("carrier", "answered", PASSED, "A"): calls}, calls_by_label(m_b)
    assert sample(m_b, "stirgate_x5u_cache_misses_total") == 1  # one fetch, then the cache
    assert sample(m_b, "stirgate_x5u_cache_hits_total") == calls - 1
    # The traceback on the verifying side names the upstream signer.
    query = urllib.parse.urlencode({"orig": CALLER, "dest": DIALLED, "at": "now"})
    status, body = http_get(port_b, f"/traceback?{query}")
    assert status == 200, body
    assert [(c["ingress"], c["source_ip"], c["spc"], c["attest"], c["origid"]) for c in json.loads(body)["calls"]] \
        == [("carrier", STIRGATE_IP, SIGNER_SPC, "A", origid)] * calls, body

    for gate in (b, a):
        closed = stop_and_reap(gate)
        assert (closed["written"], closed["dropped"], closed["lost"]) == (calls, 0, 0), closed
    rows_a, rows_b = db_rows(db_a), db_rows(db_b)
    assert sorted(r["a_call_id"] for r in rows_a) == sorted(invite_ids(caller, "sent"))
    # A's B-leg is B's A-leg; B's B-leg is what the UAS received.
    assert sorted(r["b_call_id"] for r in rows_a) == sorted(r["a_call_id"] for r in rows_b)
    assert sorted(r["b_call_id"] for r in rows_b) == sorted(m.header("Call-ID") for m in invites)
    for row in rows_a:
        assert (row["ingress"], row["egress"], row["source_ip"], row["status"]) == (
            "customer", "carrier", CUSTOMER_IP, 200), row
        assert (row["signed"], row["attest"], row["origid"]) == (1, "A", origid), row
        assert (row["verification"], row["verstat"]) == (None, None), row
        assert t0 - 0.5 <= row["invite_at"] <= t1 + 0.5, row
    for row in rows_b:
        assert (row["ingress"], row["egress"], row["source_ip"], row["status"]) == (
            "carrier", "customer", STIRGATE_IP, 200), row
        assert (row["identity_present"], row["verification"], row["verstat"]) == (1, "passed", PASSED), row
        assert (row["attest"], row["spc"], row["origid"], row["signed"]) == ("A", SIGNER_SPC, origid, 0), row
        assert row["cert_subject"] and SIGNER_SPC in row["cert_subject"], row
        assert row["failures"] is None, row
        assert (row["orig"], row["dest"]) == (CALLER_TN, DIALLED), row


# ----------------------------------------------------------------------------------------------- 4. SIGTERM
def test_sigterm_mid_load_loses_no_completed_call(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """Calls at 50/s, each up 3 s; SIGTERM once at least 20 are up. stirgate refuses new calls (503: failed at
    SIPp), lets the calls in progress end, exits 0, and every call SIPp saw complete is in the database."""
    calls, rate, hold_ms = 100, 50, 3000
    db = tmp_path / "drain.sqlite3"
    port = api_port()
    sg = stirgate_factory(sip={**QUICK_TIMERS, "drain_grace": 20.0}, trunks=PLAIN, extra=records_extra(db, port))
    sg.calls_active_at_drain = True
    callee = uas(tmp_path, "uas_answer.xml", calls=calls)
    # Every INVITE is sent within calls/rate = 2 s; the calls up at SIGTERM keep stirgate serving for 3 s more, so
    # each INVITE gets its 200 or 503 before stirgate closes. -recv_timeout bounds a call if that ever fails;
    # -nd: a refused call ends silently (no BYE for a dialog that never existed).
    load = ("-r", str(rate), "-l", str(calls), "-d", str(hold_ms), "-recv_timeout", "10000", "-nd")
    caller = uac(tmp_path, "rec_uac_hold.xml", calls=calls, extra=load)
    with harness.running(callee, caller):
        assert caller.proc is not None
        wait_metric(port, "stirgate_active_calls", lambda v: v >= 20, "20 calls up", sg=sg)
        closed = stop_and_reap(sg)
        result = caller.wait()
    draining = log_events(sg, "draining")
    assert len(draining) == 1 and draining[0]["active_calls"] > 0, draining
    assert result.successful is not None and result.failed is not None, result.summary()
    assert result.successful + result.failed == calls, result.summary()
    done = completed_ids(result)
    assert len(done) == result.successful >= 20, result.summary()
    refused = {m.header("Call-ID") for m in result.responses() if m.method == "INVITE" and m.status == 503}
    assert len(refused) == result.failed, f"every failed call must be a 503 from the drain\n{result.summary()}"

    rows = db_rows(db)
    recorded = {r["a_call_id"] for r in rows}
    assert done <= recorded, f"completed calls missing from the database: {sorted(done - recorded)[:5]}"
    assert {r["a_call_id"] for r in rows if r["status"] == 200 and r["end_reason"] == "bye-a"} == done
    assert not recorded & refused, "a refused INVITE (503 while draining) was recorded as a call"
    assert len(rows) == len(recorded) == closed["written"], closed
    assert (closed["dropped"], closed["lost"], closed["write_errors"]) == (0, 0, 0), closed


# ----------------------------------------------------------------------------------------------- 5. overflow
OVERFLOW = {"queue_size": 1, "batch_size": 1, "flush_interval": 5, "retention_days": 0}


def test_queue_overflow_under_a_burst(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """records: {queue_size: 1, batch_size: 1, flush_interval: 5} and 200 calls at 500/s: whether the writer thread
    keeps up one record at a time depends on thread scheduling (on a 2-core machine about 10 % are dropped, on a
    quiet one none), so this test holds the books, not the count: every call completes, every record is either
    written or dropped and counted, none lost. The next test makes the overflow certain."""
    calls = 200
    db = tmp_path / "burst.sqlite3"
    port = api_port()
    sg = stirgate_factory(sip=QUICK_TIMERS, trunks=PLAIN, extra=records_extra(db, port, **OVERFLOW))
    caller, callee = run_pair(uas(tmp_path, "uas_answer.xml", calls=calls),
                              uac(tmp_path, "uac_basic.xml", calls=calls, extra=("-r", "500", "-l", str(calls))))
    assert_passed(caller, callee, calls=calls)
    m = scrape(port)
    assert calls_by_label(m) == {("customer", "answered", "none", "none"): calls}
    dropped = sample(m, "stirgate_records_dropped_total") or 0
    closed = stop_and_reap(sg)
    assert closed["dropped"] == dropped and closed["lost"] == 0, closed
    assert closed["written"] + closed["dropped"] == calls, closed
    assert len(db_rows(db)) == closed["written"]


def test_queue_overflow_with_the_writer_blocked(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """The same settings, the overflow made certain: batch_size 1 wakes the writer for every record, so how many
    a burst drops depends on thread scheduling. Here the test holds the database's write lock from a second
    connection (as a backup job or another worker could) while 30 calls run: the writer's first commit waits on
    it (busy timeout 5 s), one record waits in the queue, the rest are dropped. Every call completes all the
    same; once the lock is released the kept records are written."""
    calls = 30
    db = tmp_path / "overflow.sqlite3"
    port = api_port()
    sg = stirgate_factory(sip=QUICK_TIMERS, trunks=PLAIN, extra=records_extra(db, port, **OVERFLOW))
    lock = sqlite3.connect(str(db), isolation_level=None)
    try:
        lock.execute("PRAGMA journal_mode = WAL")
        lock.execute("BEGIN IMMEDIATE")  # the write lock, held during the burst
        caller, callee = run_pair(uas(tmp_path, "uas_answer.xml", calls=calls),
                                  uac(tmp_path, "uac_basic.xml", calls=calls, extra=("-r", "200", "-l", "30")))
        # Each call's record was offered to the queue when the call ended, before SIPp saw its BYE answered.
        during = scrape(port)
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert_passed(caller, callee, calls=calls)
    assert calls_by_label(during) == {("customer", "answered", "none", "none"): calls}
    dropped = sample(during, "stirgate_records_dropped_total") or 0
    # One record in the writer's hands (waiting for the lock), at most one in the queue: the rest dropped.
    assert calls - 2 <= dropped <= calls - 1, during
    assert sample(during, "stirgate_records_written_total") == 0
    after = wait_metric(port, "stirgate_records_written_total", lambda v: v >= calls - dropped,
                        "the kept records written", sg=sg)  # fmt: skip
    assert sample(after, "stirgate_record_write_errors_total") == 0
    closed = stop_and_reap(sg)
    assert (closed["written"], closed["dropped"], closed["lost"]) == (calls - dropped, dropped, 0), closed
    rows = db_rows(db)
    assert len(rows) == calls - dropped and {r["a_call_id"] for r in rows} <= set(invite_ids(caller, "sent"))


# ----------------------------------------------------------------------------------------------- 6. unwritable
def test_unwritable_database_calls_complete_and_failure_is_visible(tmp_path: Path) -> None:
    """records.path under a regular file (fails for root too: no chmod involved). Calls complete; the write
    errors show in /metrics, /healthz and the log; on SIGTERM the records are counted lost and stirgate exits 0.
    retention_days 0: no pruning pass, so the failure logged is the records' write itself."""
    calls = 10
    not_a_dir = tmp_path / "not-a-directory"
    not_a_dir.write_text("a regular file where the records folder should be\n")
    db = not_a_dir / "records.sqlite3"
    port = api_port()
    extra = records_extra(db, port, flush_interval=0.2, retention_days=0)
    with own_stirgate(tmp_path / "stirgate", expected_errors=("records_write_failed",), sip=QUICK_TIMERS,
                      trunks=PLAIN, extra=extra) as sg:  # fmt: skip
        caller, callee = run_pair(uas(tmp_path, "uas_answer.xml", calls=calls),
                                  uac(tmp_path, "uac_basic.xml", calls=calls, extra=("-r", "50", "-l", "10")))
        assert_passed(caller, callee, calls=calls)
        # Retried a few flush cycles, then given up: every record counted lost, none written.
        m = wait_metric(port, "stirgate_records_lost_total", lambda v: v >= calls, "the records counted lost", sg=sg)
        assert (sample(m, "stirgate_record_write_errors_total") or 0) >= 1
        assert sample(m, "stirgate_records_written_total") == 0
        assert sample(m, "stirgate_records_writer_up") == 1
        assert calls_by_label(m) == {("customer", "answered", "none", "none"): calls}
        status, body = http_get(port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["record_write_errors"] >= 1, health
        closed = stop_and_reap(sg)
    assert (closed["written"], closed["lost"]) == (0, calls), closed
    assert closed["write_errors"] >= 1, closed
    failed = log_events(sg, "records_write_failed")
    assert failed and failed[0]["level"] == "error" and failed[0]["path"] == str(db), failed
    assert not_a_dir.is_file()  # nothing was created in its place
