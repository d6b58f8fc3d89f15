"""A stirgate cluster behind Kamailio's dispatcher, end to end (issue 12): real Kamailio, SIPp, Redis, PostgreSQL.

    SIPp customer 127.0.0.10 --\\                     /-> stirgate node A 127.0.0.1 --\\
                                +-> Kamailio front ---+                               +-> SIPp carrier 127.0.0.20
    SIPp carrier  127.0.0.20 --/    127.0.0.3:5060    \\-> stirgate node B 127.0.0.2 --/   (or customer 127.0.0.10)
                                    (examples/cluster/kamailio.cfg: hash over Call-ID, OPTIONS probes every 1 s,
                                     next node on no answer / 408 / 5xx before 100 Trying, record-route)

- Calls from one source address are spread over every worker of both nodes, signed and verified as on one node,
  in-dialog requests in both directions follow the call; every record lands in PostgreSQL, named by the worker
  that carried it (a record's b_call_id starts with the worker's instance id).
- SIGKILL of a node under load: once the dispatcher marks it down, every new call completes through the other;
  what the node said it had written is in the database; restarted, it is back in rotation.
- SIGTERM of a node under load: no call lost, and none refused by the draining node (sip.drain_probe_delay:
  the probes fail first, the dispatcher moves new calls away, then the node refuses).
- A PASSporT replayed through the front is rejected whichever nodes the two calls land on (Redis state).

Which node carried a call is observed (the Via of the INVITE the UAS got, a node's per-call log line, the
b_call_id of a record), and where the hash sends a Call-ID is asked of Kamailio itself (dispatcher.hash).
"""

from __future__ import annotations

import collections
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.cluster import (
    CUSTOMERS_IP,
    FRONT_IP,
    Addr,
    Front,
    destinations,
    instance_of,
    interleave,
    kamailio_binary,
    node_config,
    uri,
    wait_workers,
)
from tests.integration.conftest import log_problems
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, Sipp, SippResult, Stirgate
from tests.integration.stir_env import (
    SECSIPIDX,
    StirPki,
    X5uServer,
    demo_stir_pki,
    inf_file,
    secsipidx_check,
    serve_x5u,
    sign_identity,
)
from tests.integration.test_policies_e2e import finals, write_policies

pytestmark = pytest.mark.usefixtures("sipp_bin")

NODE_IPS = ("127.0.0.1", "127.0.0.2")
PING_INTERVAL = 1  # s: the dispatcher's probe interval in these tests
PROBE_DELAY = 2.5  # s: sip.drain_probe_delay, comfortably above it
FAILOVER_MS = 2000  # no answer at all within this: the next node (generous: this machine is shared and busy)


@pytest.fixture(scope="module")
def pki() -> StirPki:
    return demo_stir_pki()


@pytest.fixture(scope="module")
def x5u(pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    yield from serve_x5u(pki, tmp_path_factory.mktemp("x5u"))


# ----------------------------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    tmp: Path
    front: Front
    configs: list[Path]
    workers: int
    nodes: list[Stirgate] = field(default_factory=list)

    def dests(self, i: int) -> list[Addr]:
        return destinations(NODE_IPS[i], self.workers)

    @property
    def all_dests(self) -> list[Addr]:
        return [d for i in range(len(self.configs)) for d in self.dests(i)]

    def start_node(self, i: int, run: int = 0) -> Stirgate:
        """Node i (again, for run > 0: a new process on the same config, its own log)."""
        workdir = self.tmp / f"node{i}-run{run}"
        workdir.mkdir()
        sg = Stirgate(self.configs[i], workdir, run_args=["--workers", str(self.workers)], probe_from=CUSTOMERS_IP)
        if run:
            self.nodes[i] = sg
        else:
            self.nodes.append(sg)
        sg.start()
        wait_workers(self.dests(i))
        return sg

    def explain(self, *results: SippResult) -> str:
        parts = [f"--- dispatcher: {self.front.flags()}", f"--- kamailio log:\n{self.front.log_tail(15)}"]
        parts += [f"--- node {NODE_IPS[i]} log:\n{n.log_tail(12)}" for i, n in enumerate(self.nodes)]
        parts += [r.summary(30) for r in results]
        return "\n".join(parts)


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster(tmp_path: Path, pki: StirPki, x5u: X5uServer, redis_url: str, pg_dsn: str) -> Iterator[ClusterFactory]:
    """make(workers=1, policies=None, sip={}) -> a started Cluster of two nodes (Redis and a fresh PostgreSQL
    database shared) behind a Kamailio front that holds every worker up. At the end: each node still running
    exits 0 on SIGTERM and logged no error."""
    if kamailio_binary() is None:
        pytest.skip("kamailio not installed (Debian package kamailio; `make test` installs it)")
    made: list[Cluster] = []

    def make(workers: int = 1, policies: Path | None = None, sip: dict[str, Any] | None = None) -> Cluster:
        configs = []
        for i, ip in enumerate(NODE_IPS):
            d = tmp_path / f"node{i}"
            d.mkdir()
            records = {"backend": "postgresql", "dsn": pg_dsn, "spill_path": str(d / "records.spill"),
                       "flush_interval": 0.1, "retry_interval": 0.2, "connect_timeout": 2}  # fmt: skip
            configs.append(node_config(d / "node.yaml", ip=ip, redis_url=redis_url, records=records, x5u=x5u.url(),
                                       pki_dir=pki.dir, policies=policies, sip=sip))  # fmt: skip
        dests = interleave([destinations(ip, workers) for ip in NODE_IPS])
        front = Front(tmp_path / "front", dests, ping_interval=PING_INTERVAL, failover_ms=FAILOVER_MS)
        c = Cluster(tmp_path, front, configs, workers)
        made.append(c)
        for i in range(len(NODE_IPS)):
            c.start_node(i)
        c.front.start()
        c.front.wait_state(dests, active=True)
        return c

    yield make
    problems = []
    for c in made:
        c.front.stop()
        for n in c.nodes:
            crashed = not n.alive() and not n.terminated
            rc = n.stop()
            if crashed:
                problems.append(f"stirgate died during the test (exit {rc}):\n{n.log_tail()}")
            elif rc != 0:
                problems.append(f"stirgate exited {rc} on SIGTERM (expected 0):\n{n.log_tail()}")
            problems += log_problems(n)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# ----------------------------------------------------------------------------------------------- helpers
def caller(tmp: Path, name: str, calls: int, *, rate: int = 20, hold_ms: int = 100,
           scenario: str = "rec_uac_hold.xml") -> Sipp:  # fmt: skip
    """The customer (127.0.0.10, a port of its own) calling through the front; each call held `hold_ms`."""
    return Sipp(scenario, CUSTOMER_IP, tmp, name=name, remote=(FRONT_IP, 5060), calls=calls,
                port=harness.free_port(CUSTOMER_IP), timeout_s=60,
                extra=("-r", str(rate), "-d", str(hold_ms)))  # fmt: skip


def callee(tmp: Path, name: str, calls: int, scenario: str = "uas_answer.xml", ip: str = CARRIER_IP) -> Sipp:
    return Sipp(scenario, ip, tmp, name=name, calls=calls, timeout_s=120)


def sent_by(m: harness.TracedMessage) -> Addr:
    """Where a B-leg INVITE came from: its top Via's sent-by (the node's worker port)."""
    host, _, port = m.header("Via").split()[1].split(";")[0].partition(":")
    return host, int(port or 5060)


def from_port(m: harness.TracedMessage) -> int:
    """The caller's SIPp port, carried through the front and stirgate in the From URI: which UAC made the call."""
    found = re.search(r"@[\d.]+:(\d+)>", m.header("From"))
    assert found, m.header("From")
    return int(found.group(1))


def carried_by(uas: SippResult, uac: Sipp | None = None) -> collections.Counter[Addr]:
    """INVITEs the UAS got (first transmissions), counted by the worker that sent them; only `uac`'s calls."""
    seen: dict[str, Addr] = {}
    for m in uas.requests("INVITE"):
        if uac is None or from_port(m) == uac.port:
            seen.setdefault(m.header("Call-ID"), sent_by(m))
    return collections.Counter(seen.values())


def metric(sg: Stirgate, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{sg.api_base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_metric(sg: Stirgate, name: str, at_least: float, **labels: str) -> float:
    last = 0.0

    def enough() -> bool:
        nonlocal last
        last = metric(sg, name, **labels)
        return last >= at_least

    try:
        harness.wait_until(enough, f"{name}{labels} >= {at_least}", attempts=600, interval=0.05)
    except TimeoutError:
        pytest.fail(f"{name}{labels} stayed at {last} < {at_least}:\n{sg.log_tail(20)}")
    return last


def records_by_instance(dsn: str) -> dict[str, int]:
    """Records in PostgreSQL per worker instance id (the b_call_id prefix; calls never forwarded have none)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT split_part(b_call_id, '-', 1), count(*) FROM calls GROUP BY 1")
        return {str(k): int(n) for k, n in cur.fetchall()}


def log_events(sg: Stirgate, name: str) -> list[dict[str, Any]]:
    return [e for e in sg.log_events() if e.get("event") == name]


# ----------------------------------------------------------------------------------------------- spread
def test_one_peer_spread_over_every_worker_of_both_nodes_signed_and_verified(
        cluster: ClusterFactory, tmp_path: Path, pki: StirPki, x5u: X5uServer, pg_dsn: str) -> None:
    c = cluster(workers=2)  # 4 destinations: 127.0.0.1:5100/5101, 127.0.0.2:5100/5101
    # Customer -> front -> stirgate (signs) -> carrier; the caller hangs up through the front.
    signed = 40
    with harness.running(uas := callee(tmp_path, "carrier", signed)):
        out = caller(tmp_path, "customer", signed).start().wait()
        at_carrier = uas.wait()
    assert (out.successful, out.failed) == (signed, 0), c.explain(out, at_carrier)
    by_worker = carried_by(at_carrier)
    assert set(by_worker) == set(c.all_dests), by_worker  # one source address, every worker of both nodes
    invites = {m.header("Call-ID"): m for m in at_carrier.requests("INVITE")}
    assert len(invites) == signed
    for m in invites.values():
        _head, claims = _jws(m.header("Identity"))
        assert (claims["attest"], claims["orig"]["tn"]) == ("A", "15551230001"), m.raw.decode()
    if SECSIPIDX is not None:  # an independent implementation checks one signature of each node
        pub = public_key_file(pki.dir / "sp.pem", tmp_path / "sp.pub")
        for ip in NODE_IPS:
            one = next(m for m in invites.values() if sent_by(m)[0] == ip)
            check = secsipidx_check(one.header("Identity"), pub)
            assert check.returncode == 0, check.stdout + check.stderr

    # Carrier -> front -> stirgate (verifies) -> customer, tagged TN-Validation-Passed.
    verified = 16
    identity = sign_identity(pki.key, x5u.url())
    rows = [("+15551230001", "", identity)] * verified
    with harness.running(uas := callee(tmp_path, "customer", verified, "stir_uas.xml", CUSTOMER_IP)):
        out = Sipp("stir_uac_identity.xml", CARRIER_IP, tmp_path, name="carrier-calls", remote=(FRONT_IP, 5060),
                   calls=verified, port=harness.free_port(CARRIER_IP),
                   extra=("-inf", str(inf_file(tmp_path / "carrier.csv", rows)), "-r", "20")).start().wait()
        at_customer = uas.wait()
    assert finals(out) == [200] * verified, c.explain(out, at_customer)
    passed = [m for m in at_customer.requests("INVITE") if "verstat=TN-Validation-Passed" in m.header("From")]
    assert len({m.header("Call-ID") for m in passed}) == verified, at_customer.summary()
    assert {sent_by(m)[0] for m in passed} == set(NODE_IPS)

    # The called side hangs up: stirgate's BYE goes back through the front (Record-Route) to the caller.
    bye = 4
    with harness.running(uas := callee(tmp_path, "carrier-bye", bye, "uas_callee_bye.xml")):
        out = caller(tmp_path, "customer-bye", bye, scenario="uac_callee_bye.xml").start().wait()
        uas.wait()
    assert (out.successful, out.failed) == (bye, 0), c.explain(out)
    assert all(m.header("Via").startswith(f"SIP/2.0/UDP {FRONT_IP}") for m in out.requests("BYE")), out.summary()

    # Every call's record is in the one database, named by the worker that carried it.
    total = signed + verified + bye
    instances = {instance_of(d): d for d in c.all_dests}
    for n in c.nodes:
        wait_metric(n, "stirgate_records_written_total", 1)
    harness.wait_until(lambda: sum(records_by_instance(pg_dsn).values()) >= total, f"{total} records",
                       attempts=200, interval=0.05)  # fmt: skip
    per_instance = records_by_instance(pg_dsn)
    assert set(per_instance) == set(instances), (per_instance, instances)
    assert sum(per_instance.values()) == total


def public_key_file(cert: Path, out: Path) -> Path:
    """The SP certificate's public key as PEM (what `secsipidx -check -p` reads)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    out.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return out


def _jws(value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import base64

    head, payload, _sig = value.split(";", 1)[0].strip().split(".")

    def dec(seg: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
        return out

    return dec(head), dec(payload)


# ----------------------------------------------------------------------------------------------- node failure
def test_sigkill_new_calls_complete_after_detection_records_kept_restart_rejoins(
        cluster: ClusterFactory, tmp_path: Path, pg_dsn: str) -> None:
    c = cluster()
    a = c.nodes[0]
    a_dests, b_dests = c.dests(0), c.dests(1)
    a_instance = instance_of(a_dests[0])
    load = caller(tmp_path, "load", 300, hold_ms=500)  # 15 s at 20 calls/s
    with harness.running(uas := callee(tmp_path, "carrier", 10_000)):
        with harness.running(load):
            wait_metric(a, "stirgate_sip_events_total", 30, event="calls_ended")
            written = wait_metric(a, "stirgate_records_written_total", 20)
            a.terminated = True
            a.kill()  # SIGKILL
            c.front.wait_state(a_dests, active=False)  # detected: by a probe, or by a call that timed out on it
            after_uac = caller(tmp_path, "after", 100, hold_ms=200)
            after = after_uac.start().wait()
            load_r = load.wait()
        # Every call started after detection completes, through B.
        assert after.successful is not None and after.successful >= 99, c.explain(after)
        assert after.successful == 100, c.explain(after)  # in practice: all of them
        at_carrier = uas.result()
        assert set(carried_by(at_carrier, load)) == set(a_dests) | set(b_dests), carried_by(at_carrier, load)
        assert set(carried_by(at_carrier, after_uac)) == set(b_dests)
        # What A said it had written before it died is in the database.
        assert records_by_instance(pg_dsn).get(a_instance or "?", 0) >= written, (a_instance, written)

        # Restarted, A is probed up again and takes its share of new calls.
        a2 = c.start_node(0, run=1)
        c.front.wait_state(a_dests, active=True)
        again_uac = caller(tmp_path, "again", 40)
        again = again_uac.start().wait()
        at_carrier = uas.result()
    assert (again.successful, again.failed) == (40, 0), c.explain(again)
    assert set(carried_by(at_carrier, again_uac)) == set(a_dests) | set(b_dests), carried_by(at_carrier, again_uac)
    assert metric(a2, "stirgate_sip_events_total", event="answered") > 0
    assert load_r.successful is not None and load_r.successful > 0  # calls on A at the kill are the ones lost
    assert f"stirgate node down: {uri(a_dests[0])}" in c.front.log_text()
    assert f"stirgate node up: {uri(a_dests[0])}" in c.front.log_text()


def test_sigterm_under_load_loses_no_call_and_the_node_refuses_none(cluster: ClusterFactory, tmp_path: Path) -> None:
    c = cluster(sip={"drain_probe_delay": PROBE_DELAY})
    a, _b = c.nodes
    calls = 200
    load = caller(tmp_path, "load", calls, hold_ms=1000)  # 10 s; ~10 calls up on each node at any time
    with harness.running(uas := callee(tmp_path, "carrier", calls), load):
        wait_metric(a, "stirgate_sip_events_total", 20, event="calls_ended")
        a.calls_active_at_drain = True
        a.terminate()  # SIGTERM
        assert a.proc is not None
        rc = a.proc.wait(timeout=30)
        out = load.wait()
        uas.wait()
    assert (out.successful, out.failed) == (calls, 0), c.explain(out)
    assert rc == 0, a.log_tail()
    (stopped,) = log_events(a, "stopped")
    assert stopped["invites"] > 0 and stopped["not_accepting"] == 0, stopped  # the dispatcher moved first
    names = [e["event"] for e in a.log_events() if e.get("event") in ("drain_probes", "draining")]
    assert names == ["drain_probes", "draining"], names
    assert f"stirgate node down: {uri(c.dests(0)[0])}" in c.front.log_text()


# ----------------------------------------------------------------------------------------------- shared state
def call_id_to(front: Front, dest: Addr, tag: str) -> str:
    """A Call-ID the dispatcher's hash sends to `dest` (asked of Kamailio: dispatcher.hash)."""
    for i in range(200):
        cid = f"{tag}-{i}@{CARRIER_IP}"
        if front.slot(cid) == dest:
            return cid
    raise AssertionError(f"no Call-ID hashing to {dest} among 200")


def node_of(c: Cluster, call_id: str) -> str:
    """Which node carried a call: the one whose per-call log line names it."""
    found: list[str] = []

    def look() -> bool:
        found[:] = [NODE_IPS[i] for i, n in enumerate(c.nodes) if f'"call_id":"{call_id}"' in
                    n.log_path.read_text(errors="replace").replace(" ", "")]  # fmt: skip
        return bool(found)

    harness.wait_until(look, f"a node's log line for {call_id}", attempts=200, interval=0.05)
    assert len(found) == 1, found
    return found[0]


def test_replayed_passport_is_rejected_whichever_nodes_the_calls_land_on(
        cluster: ClusterFactory, tmp_path: Path, pki: StirPki, x5u: X5uServer) -> None:
    c = cluster(policies=write_policies(tmp_path / "policies.yaml", [{"policy": "replay"}]))
    a, b = c.dests(0)[0], c.dests(1)[0]
    pairs = [(a, a), (a, b), (b, a), (b, b)]
    seen: list[tuple[str, str]] = []
    with harness.running(callee(tmp_path, "customer", len(pairs), "stir_uas.xml", CUSTOMER_IP)):
        for k, (first_at, again_at) in enumerate(pairs):
            tn = f"1555123{k:04d}"  # one PASSporT per pair
            identity = sign_identity(pki.key, x5u.url(), orig=tn)
            results = []
            for name, dest in (("first", first_at), ("again", again_at)):
                cid = call_id_to(c.front, dest, f"pair{k}-{name}")
                r = Sipp("stir_uac_identity.xml", CARRIER_IP, tmp_path, name=f"pair{k}-{name}",
                         remote=(FRONT_IP, 5060), port=harness.free_port(CARRIER_IP),
                         extra=("-inf", str(inf_file(tmp_path / f"pair{k}-{name}.csv", [(f"+{tn}", "", identity)])),
                                "-cid_str", cid)).start().wait()  # fmt: skip
                results.append((r, cid, dest))
            (first, cid1, d1), (again, cid2, d2) = results
            assert finals(first) == [200], c.explain(first)
            assert finals(again) == [438], c.explain(again)
            assert (node_of(c, cid1), node_of(c, cid2)) == (d1[0], d2[0])
            seen.append((d1[0], d2[0]))
    assert len(set(seen)) == 4, seen  # same node, A then B, B then A

