"""A trunk's contract held by the processes that take its calls together (state.trunk_limits: shared,
proxy.limit_shares): two nodes sharing Redis, and the two workers of one node.

    SIPp customer 127.0.0.10 --(50 calls/s)--> stirgate node A 127.0.0.1 --\\
                             --(50 calls/s)--> stirgate node B 127.0.0.2 ---+-> SIPp carrier UAS 127.0.0.20
                                   both: customer limits max_cps 20, one real redis-server

As a dispatcher front spreading calls by Call-ID would, the customer's calls arrive at both nodes. Each node
alone would take its own 20 calls/s, 40 in all; together they hold the contract: what both take is what one
bucket of 20/s would give over the time SIPp sent for (plus what each took at once before their first
exchange).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.conftest import StirgateFactory, log_problems
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, Sipp, SippResult, Stirgate
from tests.integration.test_fair_overload import QuietSipp, shed_counts

pytestmark = pytest.mark.usefixtures("sipp_bin")

NODE_A = "127.0.0.1"
NODE_B = "127.0.0.2"
MAX_CPS = 20
CALLS = 400     # per node
RATE = 50       # calls/s per node


def node(factory: StirgateFactory, ip: str, redis_url: str) -> Stirgate:
    api_port = harness.free_port(ip, kind=socket.SOCK_STREAM)
    return factory(
        trunks={"customer": {"limits": {"max_cps": MAX_CPS, "burst": MAX_CPS}}},
        extra={"listen": [f"udp:{ip}:{SIP_PORT}"], "api": {"listen": f"{ip}:{api_port}"},
               "logging": {"level": "info"}, "state": {"backend": "redis", "url": redis_url}})


def taken_and_refused(r: SippResult, calls: int = CALLS) -> tuple[int, int]:
    finals = [m.status for m in r.responses() if m.method == "INVITE" and (m.status or 0) >= 200]
    assert len(finals) == calls and r.returncode == 0, r.summary()
    return finals.count(200), finals.count(503)


def play(uacs: list[Sipp], workdir: Path) -> tuple[list[SippResult], float]:
    """The UACs at once, towards a carrier that answers every call: their results, and how long they sent for."""
    carrier = QuietSipp("uas_answer.xml", CARRIER_IP, workdir, calls=10**5, name="carrier")
    with harness.running(carrier):
        t0 = time.monotonic()
        for uac in uacs:
            uac.start()
        results = [uac.wait() for uac in uacs]
        return results, time.monotonic() - t0


def assert_one_contract(taken: int, spent: float, detail: str) -> None:
    """One bucket (burst 20, 20/s) over the time SIPp sent for, plus each process's whole bucket before its
    first exchange told it of the other. Each process holding the contract alone would take about twice that."""
    assert taken <= MAX_CPS + MAX_CPS * spent + 2 * MAX_CPS, f"{taken} taken in {spent:.1f} s ({detail})"
    assert taken >= MAX_CPS * spent / 2, f"{taken} taken in {spent:.1f} s ({detail}): the contract starved"


def share(sg: Stirgate) -> float:
    return sg.metrics()['stirgate_trunk_limit_share{trunk="customer"}']


def test_two_nodes_hold_one_contract_together(stirgate_factory: StirgateFactory, tmp_path: Path,
                                              redis_url: str) -> None:
    a = node(stirgate_factory, NODE_A, redis_url)
    b = node(stirgate_factory, NODE_B, redis_url)
    uacs = [Sipp("rob_uac_flood.xml", CUSTOMER_IP, tmp_path, remote=(ip, SIP_PORT), calls=CALLS, name=f"to-{ip}",
                 port=harness.free_port(CUSTOMER_IP), extra=["-r", str(RATE), "-rp", "1000"])
            for ip in (NODE_A, NODE_B)]
    results, spent = play(uacs, tmp_path)
    (taken_a, refused_a), (taken_b, refused_b) = (taken_and_refused(r) for r in results)
    assert_one_contract(taken_a + taken_b, spent, f"{taken_a} + {taken_b}")
    assert taken_a > 0 and taken_b > 0
    for sg, refused in ((a, refused_a), (b, refused_b)):
        assert shed_counts(sg.metrics()) == {("customer", "max-cps"): refused}
        assert 0.0 < share(sg) < 1.0


def test_the_workers_of_one_node_hold_one_contract_together(tmp_path: Path) -> None:
    """`--workers 2`, state in memory: SO_REUSEPORT spreads the customer's source ports over the two workers
    (by a hash: with six ports, all on one worker is a 1-in-32 chance, and the contract then holds trivially)."""
    config = harness.make_config(tmp_path / "stirgate.yaml",
                                 trunks={"customer": {"limits": {"max_cps": MAX_CPS, "burst": MAX_CPS}}},
                                 extra={"logging": {"level": "info"}})
    sg = Stirgate(config, tmp_path, run_args=["--workers", "2"])
    host, port = sg.api_address
    calls = 120
    uacs = [Sipp("rob_uac_flood.xml", CUSTOMER_IP, tmp_path, remote=(STIRGATE_IP, SIP_PORT), calls=calls,
                 name=f"uac{i}", port=harness.free_port(CUSTOMER_IP), extra=["-r", "15", "-rp", "1000"])
            for i in range(6)]
    sg.start()
    try:
        results, spent = play(uacs, tmp_path)
        workers = [harness.scrape_metrics((host, port + i)) for i in range(2)]
    finally:
        rc = sg.stop()
    assert rc == 0 and not log_problems(sg), log_problems(sg)
    taken = sum(taken_and_refused(r, calls)[0] for r in results)
    offered = [w.get('stirgate_trunk_invites_total{trunk="customer"}', 0.0) for w in workers]
    assert_one_contract(taken, spent, f"offered to the workers: {offered}")
    assert sum(offered) == 6 * calls
    if min(offered) > 0:  # both workers took part: each holds a share of the contract
        assert all(0.0 < w['stirgate_trunk_limit_share{trunk="customer"}'] < 1.0 for w in workers)
