"""Policy chains end to end through a live stirgate (issue 4, Tests: "End to end with SIPp").

Topology (../shared/TOPOLOGY.md, examples/loopback.yaml), real processes and UDP sockets on 127.0.0.x only:

    SIPp carrier 127.0.0.20 -> stirgate 127.0.0.1 (verifies in tag mode, runs the carrier's policy chain)
        -> SIPp customer UAS 127.0.0.10        (the routing table's choice)
        -> SIPp second carrier UAS 127.0.0.21  (a policy's `route` to trunk carrier2)

Each test writes its own policy file and points the config's `policies:` key at it. Identity values are signed
in the test just before the call (iat within 60 s) with the session's demo PKI (the one the harness points the
config's trust anchor at) and their certificate is served by the shipped x5u server. The SIPp UACs
(sipp_scenarios/stir_uac*.xml) accept any final response; the tests read the exact one from the trace.

Everything waits on something observed (a bound socket, a SIPp exit, a log event, a metric), bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import harness
from tests.integration.conftest import StirgateFactory, log_problems
from tests.integration.harness import (
    CARRIER2_IP,
    CARRIER_IP,
    CUSTOMER_IP,
    SIP_PORT,
    Sipp,
    SippResult,
    Stirgate,
    TracedMessage,
)
from tests.integration.stir_env import (
    CALLER,
    OTHER_CALLER,
    StirPki,
    X5uServer,
    demo_stir_pki,
    inf_file,
    param,
    serve_x5u,
    sign_identity,
    tamper_signature,
)

pytestmark = pytest.mark.usefixtures("sipp_bin")

PASSED = "TN-Validation-Passed"
FAILED = "TN-Validation-Failed"
OTHER_CALLER_TN = OTHER_CALLER.lstrip("+")  # 12125550100: not the customer's, signed with attest B below
Row = tuple[str, str, str | None]  # (From user part, extra header line, Identity value or None)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def pki() -> StirPki:
    """The session's demo PKI: make_config points the trust anchor and x5u CA of every stirgate at it."""
    return demo_stir_pki()


@pytest.fixture(scope="session")
def x5u(pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    yield from serve_x5u(pki, tmp_path_factory.mktemp("x5u"))


def write_policies(path: Path, carrier: list[dict[str, Any]]) -> Path:
    """A policy file with `carrier` as the carrier trunk's chain (the other trunks have none)."""
    path.write_text(yaml.safe_dump({"trunks": {"carrier": carrier}}, sort_keys=False))
    return path


def gate_overrides(policy_file: Path) -> dict[str, Any]:
    """stirgate_factory keywords: the loopback config plus `policies:`, and an x5u server on any port."""
    return {
        "sip": {"failover_timeout": 1.0, "no_answer_timeout": 5.0},
        "extra": {"policies": str(policy_file), "stir": {"verify": {"x5u_allow_any_port": True}}},
    }


@pytest.fixture
def gate_expecting_errors(tmp_path: Path) -> Iterator[Any]:
    """Like conftest's stirgate_factory, for a test that provokes an error-level event on purpose (a bad policy
    file on reload logs `reload_failed` at error level): start(expected_events, **overrides). At teardown each
    stirgate gets SIGTERM and must exit 0; any other problem in its log fails the test as in conftest."""
    started: list[tuple[Stirgate, frozenset[str]]] = []

    def start(expected_events: set[str], **overrides: Any) -> Stirgate:
        workdir = tmp_path / f"stirgate{len(started)}"
        workdir.mkdir()
        sg = Stirgate(harness.make_config(workdir / "stirgate.yaml", **overrides), workdir)
        started.append((sg, frozenset(expected_events)))
        return sg.start()

    yield start
    problems = []
    for sg, expected in started:
        crashed = not sg.alive()
        rc = sg.stop()
        if crashed:
            problems.append(f"stirgate died during the test (exit {rc}):\n{sg.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate exited {rc} on SIGTERM (expected 0):\n{sg.log_tail()}")
        problems += [p for p in log_problems(sg) if not any(harness.names_event(p, e) for e in expected)]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# ----------------------------------------------------------------------------------------------- SIPp helpers
def uac(workdir: Path, name: str, rows: list[Row], *, calls: int | None = None, port: int = SIP_PORT,
        extra: tuple[str, ...] = ()) -> Sipp:  # fmt: skip
    """A carrier SIPp UAC on 127.0.0.20: stir_uac_identity.xml (rows carry an Identity) or stir_uac.xml."""
    signed = [r[2] is not None for r in rows]
    assert all(signed) or not any(signed), "one scenario per run"
    inf = inf_file(workdir / f"{name}.csv", rows)
    scenario = "stir_uac_identity.xml" if all(signed) else "stir_uac.xml"
    return Sipp(scenario, CARRIER_IP, workdir, name=name, remote=(harness.STIRGATE_IP, SIP_PORT),
                calls=calls or len(rows), port=port, extra=("-inf", str(inf), *extra))  # fmt: skip


def uas(workdir: Path, name: str, ip: str, calls: int = 1) -> Sipp:
    return Sipp("stir_uas.xml", ip, workdir, name=name, calls=calls)


def call_ids(r: SippResult) -> list[str]:
    return list(dict.fromkeys(m.header("Call-ID") for m in r.requests("INVITE", "sent")))


def final_of(r: SippResult, call_id: str) -> TracedMessage | None:
    return next((m for m in r.responses() if m.method == "INVITE" and (m.status or 0) >= 200
                 and m.header("Call-ID") == call_id), None)  # fmt: skip


def finals(r: SippResult) -> list[int | None]:
    """The first final response to each INVITE, in the order the INVITEs were sent (None: no answer)."""
    out = []
    for cid in call_ids(r):
        m = final_of(r, cid)
        out.append(m.status if m is not None else None)
    return out


def assert_clean(r: SippResult, calls: int) -> None:
    """SIPp ran every call to the end of its scenario (any final response is a clean end for the UACs)."""
    assert r.returncode == 0 and r.failed in (0, None), r.summary()
    assert r.successful == calls, r.summary()


def collect(peer: Sipp, calls_expected: int) -> SippResult:
    """A UAS: wait for it when it should have got calls (it exits after -m calls), else stop it now."""
    if calls_expected:
        return peer.wait()
    peer.kill()
    return peer.result()


def explain(sg: Stirgate, *results: SippResult | None) -> str:
    parts = [f"--- stirgate log:\n{sg.log_tail(30)}"]
    parts += [r.summary(40) for r in results if r is not None]
    return "\n".join(parts)


def display_name(value: str) -> str | None:
    """The display name of a name-addr header value, quotes removed."""
    head = value.split("<", 1)[0].strip()
    if not head:
        return None
    return head[1:-1] if head.startswith('"') and head.endswith('"') else head


def uri_user(value: str) -> str:
    """The user part of a name-addr's URI."""
    uri = value.split("<", 1)[1].split(">", 1)[0]
    return uri.split(":", 1)[1].split("@", 1)[0]


# ----------------------------------------------------------------------------------------------- stirgate helpers
def events(sg: Stirgate, name: str) -> list[dict[str, Any]]:
    return sg.log_events(name)


def count_events(sg: Stirgate, name: str) -> int:
    """How many log lines carry this event (a cheap count, for polling under load)."""
    data = sg.log_path.read_bytes() if sg.log_path.exists() else b""
    return harness.count_event_lines(data, name)


def policy_hits(sg: Stirgate) -> dict[tuple[str, str, str], float]:
    """/metrics stirgate_policy_hits: (policy, mode, action) -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{sg.api_base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stirgate_policy_hits_total":
                out[(s.labels["policy"], s.labels["mode"], s.labels["action"])] = s.value
    return out


def wait_hits(sg: Stirgate, key: tuple[str, str, str], at_least: int) -> dict[tuple[str, str, str], float]:
    """Metrics are counted when a call's record is built (at its end): poll /metrics, bounded."""
    seen: dict[tuple[str, str, str], float] = {}

    def enough() -> bool:
        nonlocal seen
        seen = policy_hits(sg)
        return seen.get(key, 0) >= at_least

    try:
        harness.wait_until(enough, f"stirgate_policy_hits{key} >= {at_least}", attempts=100, interval=0.05)
    except TimeoutError:
        pytest.fail(f"stirgate_policy_hits{key} never reached {at_least}: {seen}\n{sg.log_tail(20)}")
    return seen


def wait_event(sg: Stirgate, name: str, count: int) -> None:
    try:
        harness.wait_until(lambda: count_events(sg, name) >= count, f"{count} '{name}' log events",
                           attempts=250, interval=0.02)  # fmt: skip
    except TimeoutError:
        pytest.fail(f"stirgate never logged {count} '{name}' event(s):\n{sg.log_tail(20)}")


def pid_file_for(sg: Stirgate) -> Path:
    """What `stirgate run --pid-file` writes (the harness starts stirgate without it): the server's pid."""
    assert sg.proc is not None
    path = sg.workdir / "stirgate.pid"
    path.write_text(f"{sg.proc.pid}\n")
    return path


def stirgate_reload(sg: Stirgate, *, validate: bool = True) -> subprocess.CompletedProcess[str]:
    """`stirgate reload --pid-file ... [-c config]`: validates the files first, then SIGHUP."""
    cmd = [*harness.stirgate_command(), "reload", "--pid-file", str(pid_file_for(sg))]
    if validate:
        cmd += ["-c", str(sg.config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=sg.workdir)


@contextlib.contextmanager
def udp_listener(ip: str) -> Iterator[socket.socket]:
    """A bare UDP socket on ip:SIP_PORT: a trunk that must receive nothing."""
    harness.wait_port_free(ip, SIP_PORT, "udp")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, SIP_PORT))
        yield s
    finally:
        s.close()


def assert_silent(s: socket.socket, what: str) -> None:
    """Nothing arrived on `s` (checked after the calls ended; a short bounded read catches late sends)."""
    s.settimeout(0.3)
    with contextlib.suppress(TimeoutError):
        data = s.recv(65535)
        pytest.fail(f"{what} received a message:\n{data.decode(errors='replace')[:1500]}")


# ----------------------------------------------------------------------------------------------- 1. require_identity
def test_unsigned_call_from_carrier_gets_428(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    pol = write_policies(tmp_path / "policies.yaml", [{"policy": "require_identity"}])
    sg = stirgate_factory(**gate_overrides(pol))
    with udp_listener(CUSTOMER_IP) as customer:
        r = uac(tmp_path, "uac", [(CALLER, "", None)] * 2, extra=("-r", "10")).start().wait()
        assert finals(r) == [428, 428], explain(sg, r)
        assert_clean(r, 2)
        assert_silent(customer, "the customer trunk")
    resp = final_of(r, call_ids(r)[0])
    assert resp is not None
    assert resp.first_line == "SIP/2.0 428 Use Identity Header", resp.raw.decode()
    reasons = resp.headers("Reason")
    assert len(reasons) == 1 and reasons[0].startswith("STIR"), resp.raw.decode()
    assert param(reasons[0], "cause") == "428", reasons[0]


# ----------------------------------------------------------------------------------------------- 2. display_tag
def test_b_attested_call_reaches_customer_tagged(stirgate_factory: StirgateFactory, pki: StirPki, x5u: X5uServer,
                                                 tmp_path: Path) -> None:  # fmt: skip
    chain: list[dict[str, Any]] = [
        {"policy": "require_identity"},
        {"policy": "verification", "params": {"action": "route", "trunks": ["carrier2"]}},
        {"policy": "display_tag", "params": {"prefix": "SPAM? ", "attest": ["B"]}},
    ]
    sg = stirgate_factory(**gate_overrides(write_policies(tmp_path / "policies.yaml", chain)))
    rows: list[Row] = [
        (OTHER_CALLER, "", sign_identity(pki.key, x5u.url(), orig=OTHER_CALLER_TN, attest="B")),
        (CALLER, "", sign_identity(pki.key, x5u.url(), attest="A")),  # the control: not tagged
    ]
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=2)) as (customer,):
        r = uac(tmp_path, "uac", rows, extra=("-r", "10")).start().wait()
        assert finals(r) == [200, 200], explain(sg, r)
        customer_r = collect(customer, 2)
    assert_clean(r, 2)
    assert_clean(customer_r, 2)
    invites = customer_r.requests("INVITE")
    assert len(invites) == 2, customer_r.summary()
    seen = {uri_user(m.header("From")): m for m in invites}
    b_call, a_call = seen[OTHER_CALLER], seen[CALLER]
    assert param(b_call.header("From"), "verstat") == PASSED, b_call.raw.decode()
    assert display_name(b_call.header("From")) == "SPAM? Alice", b_call.raw.decode()
    assert param(a_call.header("From"), "verstat") == PASSED, a_call.raw.decode()
    assert display_name(a_call.header("From")) == "Alice", a_call.raw.decode()


# ----------------------------------------------------------------------------------------------- 3. verification route
def test_failed_verification_is_routed_to_second_carrier(stirgate_factory: StirgateFactory, pki: StirPki,
                                                         x5u: X5uServer, tmp_path: Path) -> None:  # fmt: skip
    chain: list[dict[str, Any]] = [
        {"policy": "require_identity"},
        {"policy": "verification", "params": {"action": "route", "trunks": ["carrier2"]}},
    ]
    sg = stirgate_factory(**gate_overrides(write_policies(tmp_path / "policies.yaml", chain)))
    tampered = tamper_signature(sign_identity(pki.key, x5u.url()))
    with udp_listener(CUSTOMER_IP) as customer, harness.running(uas(tmp_path, "carrier2", CARRIER2_IP)) as (c2,):
        r = uac(tmp_path, "uac", [(CALLER, "", tampered)]).start().wait()
        assert finals(r) == [200], explain(sg, r)
        c2_r = collect(c2, 1)
        assert_silent(customer, "the customer trunk")
    assert_clean(r, 1)
    assert_clean(c2_r, 1)
    invites = c2_r.requests("INVITE")
    assert len(invites) == 1, c2_r.summary()
    wait_event(sg, "call", 1)  # per-call lines are batched: written within 250 ms
    calls = events(sg, "call")
    assert [(e.get("egress"), e.get("verstat"), e.get("status")) for e in calls] == [("carrier2", FAILED, 200)], calls


# ----------------------------------------------------------------------------------------------- 4. velocity
def test_velocity_flood_is_throttled_while_others_pass(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """UAC A (one From number) calls 15 times, UAC B (five other numbers) 5 times, both at once from the carrier
    (127.0.0.20, two ports): velocity {orig_tn, 10 s, 5 calls, throttle} lets A's first 5 through and answers
    the other 10 with 503 + Retry-After; B's 5 all pass."""
    chain: list[dict[str, Any]] = [
        {
            "policy": "velocity",
            "params": {"key": "orig_tn", "window": 10, "max_calls": 5, "action": "throttle", "retry_after": 30},
        }
    ]
    sg = stirgate_factory(**gate_overrides(write_policies(tmp_path / "policies.yaml", chain)))
    flood_rows: list[Row] = [(CALLER, "", None)] * 15
    other_rows: list[Row] = [(f"+1212555{n:04d}", "", None) for n in range(101, 106)]
    a = uac(tmp_path, "uac-a", flood_rows, extra=("-r", "20"))
    b = uac(tmp_path, "uac-b", other_rows, port=harness.free_port(CARRIER_IP), extra=("-r", "10"))
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=10)) as (customer,):
        with harness.running(a, b):
            a_r, b_r = a.wait(), b.wait()
        customer_r = collect(customer, 10 if finals(a_r).count(200) + finals(b_r).count(200) == 10 else 0)
    assert Counter(finals(a_r)) == {200: 5, 503: 10}, explain(sg, a_r)
    assert finals(a_r) == [200] * 5 + [503] * 10, explain(sg, a_r)
    assert finals(b_r) == [200] * 5, explain(sg, b_r)
    assert_clean(a_r, 15)
    assert_clean(b_r, 5)
    assert_clean(customer_r, 10)
    for cid in call_ids(a_r)[5:]:
        resp = final_of(a_r, cid)
        assert resp is not None and resp.first_line == "SIP/2.0 503 Service Unavailable", resp and resp.raw.decode()
        assert resp.headers("Retry-After") == ["30"], resp.raw.decode()
    callers = sorted(uri_user(m.header("From")) for m in customer_r.requests("INVITE"))
    assert callers == sorted([CALLER] * 5 + [row[0] for row in other_rows]), customer_r.summary()


# ----------------------------------------------------------------------------------------------- 5. dry-run
def test_dry_run_changes_nothing_but_is_counted(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    pol = write_policies(tmp_path / "policies.yaml", [{"policy": "require_identity", "mode": "dry-run"}])
    sg = stirgate_factory(**gate_overrides(pol))
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=3)) as (customer,):
        r = uac(tmp_path, "uac", [(CALLER, "", None)] * 3, extra=("-r", "10")).start().wait()
        assert finals(r) == [200] * 3, explain(sg, r)
        customer_r = collect(customer, 3)
    assert_clean(r, 3)
    assert_clean(customer_r, 3)
    assert len(customer_r.requests("INVITE")) == 3
    hits = wait_hits(sg, ("require_identity", "dry-run", "reject"), 3)
    assert hits[("require_identity", "dry-run", "reject")] == 3, hits
    assert not [k for k in hits if k[1] == "enforce"], hits


# ----------------------------------------------------------------------------------------------- 6. hot reload
RELOAD_CPS = 100
RELOAD_CALLS = 500  # ~5 s at 100 calls/s
LIST_NUMBERS = 300_000


def test_reload_under_load_fails_no_call(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    """SIPp places 500 calls at 100/s; after ~1.5 s and ~3 s the policy file is rewritten (a dry-run entry added,
    then a deny list of 300 000 numbers) and stirgate is told to reload (`stirgate reload --pid-file`, then
    SIGHUP). Every call must get its 200, both reloads must be logged, and the dry-run entry must have counted
    the calls after the first reload only."""
    base = [{"policy": "lists", "params": {"deny": {"orig_numbers": ["13125550123"]}}}]
    pol = write_policies(tmp_path / "policies.yaml", base)
    list_file = tmp_path / "deny.txt"  # sorted, none of them the caller's
    list_file.write_text("".join(f"1312{n:07d}\n" for n in range(LIST_NUMBERS)))
    sg = stirgate_factory(**gate_overrides(pol))
    assert sg.proc is not None
    caller_r = uac(tmp_path, "uac", [(CALLER, "", None)], calls=RELOAD_CALLS,
                   extra=("-r", str(RELOAD_CPS), "-l", "200"))  # fmt: skip
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=RELOAD_CALLS)) as (customer,):
        with harness.running(caller_r):
            # 1st reload after ~150 ended calls, by the CLI (validates the file, then signals the pid).
            wait_event_or_end(sg, caller_r, "call", 150)
            write_policies(pol, [*base, {"policy": "require_identity", "mode": "dry-run"}])
            proc = stirgate_reload(sg)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            wait_event(sg, "reloaded", 1)
            calls_at_first_reload = count_events(sg, "call")
            # 2nd reload after ~300 ended calls, by SIGHUP straight to the process; its new deny list of
            # LIST_NUMBERS numbers is loaded (in a thread) while the calls go on.
            wait_event_or_end(sg, caller_r, "call", 300)
            big = {"policy": "lists", "name": "big-list",
                   "params": {"deny": {"orig_numbers_file": str(list_file)}}}  # fmt: skip
            write_policies(pol, [*base, {"policy": "require_identity", "mode": "dry-run"}, big])
            os.kill(sg.proc.pid, signal.SIGHUP)
            wait_event(sg, "reloaded", 1 + 1)
            calls_at_second_reload = count_events(sg, "call")
            uac_r = caller_r.wait()
        customer_r = collect(customer, RELOAD_CALLS)
    got = Counter(finals(uac_r))
    assert got == {200: RELOAD_CALLS}, f"{got}\n{explain(sg, uac_r)}"
    assert_clean(uac_r, RELOAD_CALLS)
    assert_clean(customer_r, RELOAD_CALLS)
    # The reloads happened mid-run, not before or after it.
    assert 0 < calls_at_first_reload < calls_at_second_reload < RELOAD_CALLS, (
        calls_at_first_reload,
        calls_at_second_reload,
    )
    reloaded = events(sg, "reloaded")
    assert len(reloaded) == 2 and all(e.get("policies") == str(pol) for e in reloaded), reloaded
    assert not events(sg, "reload_failed")
    # The new chain took over mid-run: the dry-run entry saw the calls after the first reload, not all 500.
    key = ("require_identity", "dry-run", "reject")
    hits = wait_hits(sg, key, 1)
    assert RELOAD_CALLS - calls_at_first_reload - RELOAD_CPS <= hits[key] < RELOAD_CALLS, (hits, calls_at_first_reload)


def wait_event_or_end(sg: Stirgate, peer: Sipp, name: str, count: int) -> None:
    """Until stirgate logged `count` `name` events (bounded: SIPp's run at 100/s takes ~5 s)."""
    assert peer.proc is not None
    proc = peer.proc
    try:
        harness.wait_until(lambda: count_events(sg, name) >= count or proc.poll() is not None,
                           f"{count} '{name}' events", attempts=1000, interval=0.01)  # fmt: skip
    except TimeoutError:
        pytest.fail(f"only {count_events(sg, name)} '{name}' events after 10 s:\n{sg.log_tail(20)}")
    assert proc.poll() is None, f"SIPp ended before {count} '{name}' events:\n{peer.result().summary()}"


def test_bad_policy_file_on_reload_keeps_the_old_chain(gate_expecting_errors: Any, tmp_path: Path) -> None:
    """The running chain rejects unsigned calls with 428. A reload with a broken policy file logs reload_failed
    (file, line, key) and the 428 stays; `stirgate reload -c` refuses the same file before signalling; a good
    file then reloads (dry-run: the next unsigned call passes)."""
    pol = write_policies(tmp_path / "policies.yaml", [{"policy": "require_identity"}])
    sg = gate_expecting_errors({"reload_failed"}, **gate_overrides(pol))
    assert sg.proc is not None

    def one_call(name: str, expect: int) -> None:
        calls = 1 if expect == 200 else 0
        with harness.running(uas(tmp_path, f"customer-{name}", CUSTOMER_IP)) as (customer,):
            r = uac(tmp_path, name, [(CALLER, "", None)]).start().wait()
            customer_r = collect(customer, calls if finals(r) == [200] else 0)
        assert finals(r) == [expect], explain(sg, r)
        assert_clean(r, 1)
        if calls:
            assert_clean(customer_r, 1)

    one_call("before", 428)
    # An unknown key in the entry: a located error, and the old chain stays.
    pol.write_text("trunks:\n  carrier:\n    - policy: require_identity\n      mood: dry-run\n")
    os.kill(sg.proc.pid, signal.SIGHUP)
    wait_event(sg, "reload_failed", 1)
    failed = events(sg, "reload_failed")
    assert len(failed) == 1 and not events(sg, "reloaded"), failed
    error = str(failed[0].get("error"))
    assert "policies.yaml:4" in error and "mood" in error, failed[0]
    one_call("after-bad-sighup", 428)
    # The CLI validates first: it names the problem and does not signal.
    proc = stirgate_reload(sg)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "policies.yaml:4" in proc.stderr and "mood" in proc.stderr, proc.stderr
    one_call("after-bad-cli", 428)
    assert count_events(sg, "reload_failed") == 1 and not events(sg, "reloaded"), sg.log_tail(10)
    # A good file reloads: require_identity in dry-run lets the unsigned call through.
    write_policies(pol, [{"policy": "require_identity", "mode": "dry-run"}])
    proc = stirgate_reload(sg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_event(sg, "reloaded", 1)
    one_call("after-good", 200)
