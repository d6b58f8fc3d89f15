"""Two stirgate nodes, one Redis: what one node remembers, the other knows (issue 11).

    SIPp carrier 127.0.0.20 -> stirgate node A 127.0.0.1 --\\
                            -> stirgate node B 127.0.0.2 ---+-> SIPp customer UAS 127.0.0.10
                                   both: state {backend: redis} on one real redis-server

A PASSporT used through A is a replay through B; a caller over its velocity limit through A is throttled
through B; the short-call share learnt on A applies on B. With Redis stopped mid-load calls keep completing
(`on_error: open`), the misses are counted in /metrics, and state works again once Redis is back.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.conftest import StirgateFactory
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, Sipp, SippResult, Stirgate
from tests.integration.stir_env import CALLER, StirPki, X5uServer, demo_stir_pki, inf_file, serve_x5u, sign_identity
from tests.integration.test_policies_e2e import (
    Row,
    assert_clean,
    explain,
    finals,
    uas,
    wait_hits,
    write_policies,
)
from tests.services import Redis

pytestmark = pytest.mark.usefixtures("sipp_bin")

NODE_A = "127.0.0.1"
NODE_B = "127.0.0.2"


@pytest.fixture(scope="module")
def pki() -> StirPki:
    return demo_stir_pki()


@pytest.fixture(scope="module")
def x5u(pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    yield from serve_x5u(pki, tmp_path_factory.mktemp("x5u"))


def node(factory: StirgateFactory, ip: str, policy_file: Path, redis_url: str, **state: Any) -> Stirgate:
    """A stirgate on `ip` (SIP and API), the carrier's chain from `policy_file`, its state in `redis`."""
    api_port = harness.free_port(ip, kind=socket.SOCK_STREAM)
    return factory(
        sip={"failover_timeout": 1.0, "no_answer_timeout": 5.0},
        extra={
            "listen": [f"udp:{ip}:{SIP_PORT}"],
            "api": {"listen": f"{ip}:{api_port}"},
            "policies": str(policy_file),
            # Generous: the machine may be busy; a miss would let a call through and fail the test.
            "state": {"backend": "redis", "url": redis_url, "timeout_ms": 500, "retry_interval": 0.2, **state},
            "stir": {"verify": {"x5u_allow_any_port": True}},
        },
    )


def carrier_uac(workdir: Path, name: str, gate: str, rows: list[Row], *, rate: int = 10) -> SippResult:
    """Calls from the carrier (127.0.0.20, a port of its own) to the node at `gate`; waits for them."""
    signed = all(r[2] is not None for r in rows)
    sipp = Sipp("stir_uac_identity.xml" if signed else "stir_uac.xml", CARRIER_IP, workdir, name=name,
                remote=(gate, SIP_PORT), calls=len(rows), port=harness.free_port(CARRIER_IP),
                extra=("-inf", str(inf_file(workdir / f"{name}.csv", rows)), "-r", str(rate)))
    return sipp.start().wait()


def sip_events(sg: Stirgate) -> dict[str, float]:
    """/metrics stirgate_sip_events_total{event=...}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{sg.api_base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stirgate_sip_events_total":
                out[s.labels["event"]] = s.value
    return out


def wait_metric(sg: Stirgate, event: str, at_least: float) -> None:
    harness.wait_until(lambda: sip_events(sg).get(event, 0) >= at_least, f"{event} >= {at_least}",
                       attempts=200, interval=0.05)


def test_replay_through_another_node_is_rejected(stirgate_factory: StirgateFactory, tmp_path: Path,
                                                 pki: StirPki, x5u: X5uServer, redis_url: str) -> None:
    policies = write_policies(tmp_path / "policies.yaml", [{"policy": "replay"}])
    a = node(stirgate_factory, NODE_A, policies, redis_url)
    b = node(stirgate_factory, NODE_B, policies, redis_url)
    identity = sign_identity(pki.key, x5u.url())
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=2)):
        first = carrier_uac(tmp_path, "via-a", NODE_A, [(CALLER, "", identity)])
        again = carrier_uac(tmp_path, "via-b", NODE_B, [(CALLER, "", identity)])
    assert finals(first) == [200], explain(a, first)
    assert finals(again) == [438], explain(b, again)
    assert_clean(again, 1)


def test_velocity_counted_on_one_node_throttles_on_the_other(
        stirgate_factory: StirgateFactory, tmp_path: Path, redis_url: str) -> None:
    chain = [{"policy": "velocity", "params": {"key": "orig_tn", "window": 60, "max_calls": 3}}]
    policies = write_policies(tmp_path / "policies.yaml", chain)
    a = node(stirgate_factory, NODE_A, policies, redis_url)
    b = node(stirgate_factory, NODE_B, policies, redis_url)
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=5)):  # would answer B's calls too
        via_a = carrier_uac(tmp_path, "via-a", NODE_A, [(CALLER, "", None)] * 3)
        via_b = carrier_uac(tmp_path, "via-b", NODE_B, [(CALLER, "", None)] * 2)
    assert finals(via_a) == [200] * 3, explain(a, via_a)
    assert finals(via_b) == [503, 503], explain(b, via_b)
    assert wait_hits(b, ("velocity", "enforce", "reject"), 2)  # the policy answered, not a missing callee


def test_short_call_share_learnt_on_one_node_applies_on_the_other(
        stirgate_factory: StirgateFactory, tmp_path: Path, redis_url: str) -> None:
    chain = [{"policy": "velocity",
              "params": {"key": "orig_tn", "max_short_share": 0.5, "min_completed": 3, "short_call_seconds": 6}}]
    policies = write_policies(tmp_path / "policies.yaml", chain)
    a = node(stirgate_factory, NODE_A, policies, redis_url)
    b = node(stirgate_factory, NODE_B, policies, redis_url)
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=4)):
        via_a = carrier_uac(tmp_path, "via-a", NODE_A, [(CALLER, "", None)] * 3)  # answered, hung up at once
        assert finals(via_a) == [200] * 3, explain(a, via_a)
        wait_metric(a, "state_ops", 6)  # 3 calls: one read each, and one write when each ended
        via_b = carrier_uac(tmp_path, "via-b", NODE_B, [(CALLER, "", None)])
    assert finals(via_b) == [503], explain(b, via_b)
    assert wait_hits(b, ("velocity", "enforce", "reject"), 1)


LOAD_CALLS = 120


def test_redis_down_mid_load_calls_complete_and_state_returns(
        stirgate_factory: StirgateFactory, tmp_path: Path, redis_private: Redis) -> None:
    chain = [{"policy": "velocity", "params": {"key": "orig_tn", "window": 60, "max_calls": 2}}]
    policies = write_policies(tmp_path / "policies.yaml", chain)
    a = node(stirgate_factory, NODE_A, policies, redis_private.url)
    rows: list[Row] = [(f"+1212555{n:04d}", "", None) for n in range(LOAD_CALLS)]  # every caller once
    load = Sipp("stir_uac.xml", CARRIER_IP, tmp_path, name="load", remote=(NODE_A, SIP_PORT), calls=LOAD_CALLS,
                port=harness.free_port(CARRIER_IP),
                extra=("-inf", str(inf_file(tmp_path / "load.csv", rows)), "-r", "40"))
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=LOAD_CALLS + 3)):
        with harness.running(load):
            wait_metric(a, "calls_ended", 20)
            with redis_private.stopped():
                wait_metric(a, "calls_ended", 60)
            load_r = load.wait()
        assert finals(load_r) == [200] * LOAD_CALLS, explain(a, load_r)
        assert_clean(load_r, LOAD_CALLS)
        events = sip_events(a)
        assert events.get("state_failures", 0) + events.get("state_timeouts", 0) > 0, events
        # Back without a restart: the same caller three times is throttled on the third call.
        again = carrier_uac(tmp_path, "again", NODE_A, [(CALLER, "", None)] * 3, rate=5)
    assert finals(again) == [200, 200, 503], explain(a, again)
    assert wait_hits(a, ("velocity", "enforce", "reject"), 1)
