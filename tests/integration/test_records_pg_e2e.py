"""Central records end to end (issue 11): live stirgate processes, real SIPp, a real PostgreSQL (tests/services.py).

- Two stirgate nodes, 127.0.0.1 and 127.0.0.2 (../shared/TOPOLOGY.md), write to one database: every call of
  either lands there, and `stirgate traceback` (CLI with either node's config or the DSN, and /traceback of
  either node) finds every call whichever node carried it.
- PostgreSQL stopped in the middle of a load: calls keep completing, the records spill to the node's file, and
  once the server is back every call SIPp counts as successful is in the database, exactly once.
- stirgate stopped while PostgreSQL is down: the records stay in the spill and the next run replays them.

What is observed: SIPp's statistics and traces (Call-IDs of the calls made and completed), the rows in
PostgreSQL, /metrics, the CLI's JSON, stirgate's JSON log (`records_closed`). Waits poll a bounded number of times.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.conftest import QUICK_TIMERS, log_problems
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, DIALLED, SIP_PORT, STIRGATE_IP, Sipp, api_listen
from tests.integration.stir_env import TERM_IP, StirgateAt
from tests.integration.test_records_e2e import (
    CALLER,
    CALLER_TN,
    PLAIN,
    assert_passed,
    completed_ids,
    http_get,
    invite_ids,
    log_events,
    run_pair,
    sample,
    stop_and_reap,
    wait_metric,
)
from tests.services import Postgres

pytestmark = pytest.mark.usefixtures("sipp_bin")

NODE_B_IP = TERM_IP  # 127.0.0.2


def pg_records(dsn: str, spill: Path, **more: Any) -> dict[str, Any]:
    """`records:` for a node writing to PostgreSQL: a short flush and retry so the tests wait little."""
    return {"backend": "postgresql", "dsn": dsn, "spill_path": str(spill), "flush_interval": 0.1,
            "retry_interval": 0.2, "connect_timeout": 2, **more}  # fmt: skip


Node = StirgateAt
NodeFactory = Callable[..., Node]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    """start(ip, dsn, name) -> a ready stirgate on `ip` (loopback topology, customer trunk not signing) whose
    records go to PostgreSQL `dsn`. At the end: exit 0 on SIGTERM, no error in its log."""
    started: list[Node] = []

    def start(ip: str, records: dict[str, Any], name: str) -> Node:
        d = tmp_path / name
        d.mkdir()
        extra: dict[str, Any] = {"records": records}
        if ip != STIRGATE_IP:
            extra["listen"] = [f"udp:{ip}:{SIP_PORT}", f"tcp:{ip}:{SIP_PORT}"]
        config = harness.make_config(d / "stirgate.yaml", sip=QUICK_TIMERS, trunks=PLAIN, extra=extra)
        node = StirgateAt(config, d, ip, CUSTOMER_IP)
        started.append(node)
        return node.start()

    yield start
    problems = []
    for node in started:
        crashed = not node.alive() and not node.terminated
        rc = node.stop()
        if crashed:
            problems.append(f"stirgate {node.ip} died during the test (exit {rc}):\n{node.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate {node.ip} exited {rc} on SIGTERM:\n{node.log_tail()}")
        problems += log_problems(node)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def call_through(tmp: Path, ip: str, name: str, calls: int, *extra: str) -> tuple[Any, Any]:
    """`calls` held calls from the customer (127.0.0.10) through the node at `ip` to the carrier (127.0.0.20)."""
    return run_pair(
        Sipp("uas_answer.xml", CARRIER_IP, tmp, name=f"uas-{name}", calls=calls),
        Sipp("rec_uac_hold.xml", CUSTOMER_IP, tmp, name=f"uac-{name}", remote=(ip, SIP_PORT), calls=calls,
             extra=("-r", "20", "-l", "10", "-d", "100", *extra)),
    )  # fmt: skip


def db_ids(pg: Postgres, dbname: str) -> list[str]:
    return [r[0] for r in pg.execute("SELECT a_call_id FROM calls", dbname=dbname)]


def cli_traceback(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run([*harness.stirgate_command(), "traceback", "--orig", CALLER, "--dest", DIALLED,
                        "--at", "now", "--json", *args], capture_output=True, text=True, timeout=60)  # fmt: skip
    calls = json.loads(p.stdout)["calls"] if p.stdout.strip().startswith("{") else []
    return p.returncode, calls, p.stdout[-2000:] + p.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- two nodes
def test_two_nodes_one_database_traceback_finds_every_call(nodes: NodeFactory, pg_server: Postgres, pg_dsn: str,
                                                           tmp_path: Path) -> None:  # fmt: skip
    per_node = 8
    a = nodes(STIRGATE_IP, pg_records(pg_dsn, tmp_path / "a.spill"), "node-a")
    b = nodes(NODE_B_IP, pg_records(pg_dsn, tmp_path / "b.spill"), "node-b")
    made: dict[str, set[str]] = {}
    for node, name in ((a, "a"), (b, "b")):
        caller, callee = call_through(tmp_path, node.ip, name, per_node)
        assert_passed(caller, callee, calls=per_node)
        made[name] = set(invite_ids(caller, "sent"))
        assert len(made[name]) == per_node
    for node in (a, b):
        wait_metric(api_listen(node.config)[1], "stirgate_records_written_total", lambda v: v >= per_node,
                    f"{node.ip}'s records written", sg=node)  # fmt: skip
    everything = made["a"] | made["b"]
    dbname = pg_dsn.rsplit("/", 1)[1]
    ids = db_ids(pg_server, dbname)
    assert len(ids) == 2 * per_node and set(ids) == everything

    # The CLI with either node's config, or the DSN itself: the calls of both nodes.
    for args in (("-c", str(a.config)), ("-c", str(b.config)), ("--db", pg_dsn)):
        rc, calls, out = cli_traceback(*args)
        assert rc == 0, out
        assert {c["a_call_id"] for c in calls} == everything, (args, out)
        for c in calls:
            assert (c["ingress"], c["source_ip"], c["orig"], c["dest"]) == ("customer", CUSTOMER_IP, CALLER_TN,
                                                                            DIALLED), c  # fmt: skip
    # Node B's API answers for the calls node A carried, and the other way round.
    query = urllib.parse.urlencode({"orig": CALLER, "dest": DIALLED, "at": "now"})
    for node in (a, b):
        status, body = http_get(api_listen(node.config)[1], f"/traceback?{query}")
        assert status == 200, body
        assert {c["a_call_id"] for c in json.loads(body)["calls"]} == everything
        health = json.loads(http_get(api_listen(node.config)[1], "/healthz")[1])
        assert (health["records_backend"], health["records_db"], health["records_spill_bytes"]) == (
            "postgresql", "up", 0), health
    # The table report over both nodes' calls.
    report = subprocess.run([*harness.stirgate_command(), "report", "-c", str(b.config), "--since", "1h", "--json"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["calls"] == 2 * per_node
    for node in (a, b):
        closed = stop_and_reap(node)
        assert (closed["backend"], closed["written"], closed["spilled"], closed["lost"]) == (
            "postgresql", per_node, 0, 0), closed


# ----------------------------------------------------------------------------------------------- outage
def test_database_stopped_mid_load_every_completed_call_is_recorded(nodes: NodeFactory, pg_private: Postgres,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    """300 calls at 50/s; PostgreSQL is stopped once 40 records are in, and started again once at least 40
    more have been spilled. Calls never notice; afterwards the database holds every completed call once."""
    calls = 300
    dsn = pg_private.create_database("records")
    node = nodes(STIRGATE_IP, pg_records(dsn, tmp_path / "records.spill"), "node")
    port = api_listen(node.config)[1]
    callee = Sipp("uas_answer.xml", CARRIER_IP, tmp_path, name="uas", calls=calls)
    caller = Sipp("rec_uac_hold.xml", CUSTOMER_IP, tmp_path, name="uac", remote=(STIRGATE_IP, SIP_PORT),
                  calls=calls, extra=("-r", "50", "-l", "40", "-d", "200"))  # fmt: skip
    with harness.running(callee, caller):
        wait_metric(port, "stirgate_records_written_total", lambda v: v >= 40, "40 records written", sg=node)
        with pg_private.stopped():
            down = wait_metric(port, "stirgate_records_spilled_total", lambda v: v >= 40, "40 records spilled",
                               sg=node)  # fmt: skip
            assert sample(down, "stirgate_records_db_up") == 0
            assert (sample(down, "stirgate_records_spill_bytes") or 0) > 0
        result = caller.wait()
        callee.wait()
    assert result.returncode == 0 and result.failed == 0 and result.successful == calls, result.summary()
    done = completed_ids(result)
    assert len(done) == calls
    after = wait_metric(port, "stirgate_records_written_total", lambda v: v >= calls, "every record written",
                        sg=node, seconds=30)  # fmt: skip
    spilled = sample(after, "stirgate_records_spilled_total") or 0
    assert spilled >= 40 and sample(after, "stirgate_records_replayed_total") == spilled
    assert sample(after, "stirgate_records_spill_dropped_total") == 0
    assert sample(after, "stirgate_records_spill_bytes") == 0 and sample(after, "stirgate_records_db_up") == 1
    closed = stop_and_reap(node)
    assert (closed["written"], closed["dropped"], closed["lost"], closed["spill_dropped"]) == (calls, 0, 0, 0), closed
    ids = db_ids(pg_private, "records")
    assert len(ids) == len(set(ids)) == result.successful, "each completed call exactly once"
    assert set(ids) == done
    # The outage was logged as a warning (the records were safe in the spill), and so was the way back.
    assert all(e["level"] == "warning" for e in log_events(node, "records_write_failed")), node.log_tail()
    assert log_events(node, "records_db_reachable") and log_events(node, "records_spill_replayed")


def test_records_spilled_at_shutdown_are_replayed_by_the_next_run(nodes: NodeFactory, pg_private: Postgres,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    calls = 12
    dsn = pg_private.create_database("records")
    spill = tmp_path / "records.spill"
    pg_private.stop()
    first = nodes(STIRGATE_IP, pg_records(dsn, spill), "first")
    caller, callee = call_through(tmp_path, STIRGATE_IP, "first", calls)
    assert_passed(caller, callee, calls=calls)
    wait_metric(api_listen(first.config)[1], "stirgate_records_spilled_total", lambda v: v >= calls,
                "the records spilled", sg=first)  # fmt: skip
    closed = stop_and_reap(first)
    assert (closed["written"], closed["spilled"], closed["lost"], closed["spill_dropped"]) == (0, calls, 0, 0), closed
    assert closed["spill_bytes"] == spill.stat().st_size > 0
    assert log_events(first, "records_db_unreachable") or log_events(first, "records_write_failed")

    pg_private.start()
    second = nodes(STIRGATE_IP, pg_records(dsn, spill), "second")
    m = wait_metric(api_listen(second.config)[1], "stirgate_records_replayed_total", lambda v: v >= calls,
                    "the first run's records replayed", sg=second)  # fmt: skip
    assert sample(m, "stirgate_records_spill_bytes") == 0
    stop_and_reap(second)
    assert sorted(db_ids(pg_private, "records")) == sorted(invite_ids(caller, "sent"))
    assert spill.stat().st_size == 0
