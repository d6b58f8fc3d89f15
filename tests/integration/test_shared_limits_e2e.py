"""A trunk's contract held by two nodes together (state.trunk_limits: shared, proxy.limit_shares).

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
from tests.integration.conftest import StirgateFactory
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, Sipp, SippResult, Stirgate
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


def taken_and_refused(r: SippResult) -> tuple[int, int]:
    finals = [m.status for m in r.responses() if m.method == "INVITE" and (m.status or 0) >= 200]
    assert len(finals) == CALLS and r.returncode == 0, r.summary()
    return finals.count(200), finals.count(503)


def share(sg: Stirgate) -> float:
    return sg.metrics()['stirgate_trunk_limit_share{trunk="customer"}']


def test_two_nodes_hold_one_contract_together(stirgate_factory: StirgateFactory, tmp_path: Path,
                                              redis_url: str) -> None:
    a = node(stirgate_factory, NODE_A, redis_url)
    b = node(stirgate_factory, NODE_B, redis_url)
    carrier = QuietSipp("uas_answer.xml", CARRIER_IP, tmp_path, calls=10**5, name="carrier")
    uacs = [Sipp("rob_uac_flood.xml", CUSTOMER_IP, tmp_path, remote=(ip, SIP_PORT), calls=CALLS, name=f"to-{ip}",
                 port=harness.free_port(CUSTOMER_IP), extra=["-r", str(RATE), "-rp", "1000"])
            for ip in (NODE_A, NODE_B)]
    with harness.running(carrier):
        t0 = time.monotonic()
        for uac in uacs:
            uac.start()
        results = [uac.wait() for uac in uacs]
        spent = time.monotonic() - t0
    (taken_a, refused_a), (taken_b, refused_b) = (taken_and_refused(r) for r in results)
    taken = taken_a + taken_b
    # One bucket (burst 20, 20/s) over the time SIPp sent for, plus each node's whole bucket before the first
    # exchange told it of the other. Each node holding the contract alone would take about twice that.
    assert taken <= MAX_CPS + MAX_CPS * spent + 2 * MAX_CPS, f"{taken_a} + {taken_b} taken in {spent:.1f} s"
    assert taken >= MAX_CPS * spent / 2, f"{taken_a} + {taken_b} taken in {spent:.1f} s: the contract starved"
    assert taken_a > 0 and taken_b > 0
    for sg, refused in ((a, refused_a), (b, refused_b)):
        assert shed_counts(sg.metrics()) == {("customer", "max-cps"): refused}
        assert 0.0 < share(sg) < 1.0
