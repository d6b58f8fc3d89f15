"""A small robocall campaign through a live stirgate (issue 13): SIPp plays an unsigned gateway that puts a fresh
neighbour-spoofed number on every call; the risk score flags it from its fifth call on, the callee sees the
"SPAM? " tag, `stirgate report --campaigns` reports the flagged calls as one campaign with the upstream hop,
and POST /feedback takes a label for one of its calls.

    SIPp carrier 127.0.0.20 (the gateway) -> stirgate 127.0.0.1 (risk_score on the carrier chain)
        -> SIPp customer UAS 127.0.0.10
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.conftest import StirgateFactory
from tests.integration.harness import CUSTOMER_IP, Stirgate
from tests.integration.test_policies_e2e import (
    Row,
    assert_clean,
    call_ids,
    display_name,
    explain,
    finals,
    gate_overrides,
    uac,
    uas,
    uri_user,
    write_policies,
)

pytestmark = pytest.mark.usefixtures("sipp_bin")

CALLS = 10
#: Fresh numbers in the callee's own NPA-NXX (15551230002 is dialled): neighbour spoofing with rotation.
ROWS: list[Row] = [(f"+1555123{1000 + 37 * i:04d}", "", None) for i in range(CALLS)]


def campaigns_cli(sg: Stirgate) -> dict[str, Any]:
    out = subprocess.run([*harness.stirgate_command(), "report", "-c", str(sg.config), "--campaigns", "--since", "1h",
                          "--json"], cwd=sg.workdir, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rep: dict[str, Any] = json.loads(out.stdout)
    return rep


def post_feedback(sg: Stirgate, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{sg.api_base}/feedback", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_small_campaign_is_flagged_and_reported_as_one(stirgate_factory: StirgateFactory, tmp_path: Path) -> None:
    chain = [{"policy": "risk_score",
              "params": {"actions": [{"at": 50, "action": "tag", "display_prefix": "SPAM? "}]}}]
    sg = stirgate_factory(**gate_overrides(write_policies(tmp_path / "policies.yaml", chain)))
    with harness.running(uas(tmp_path, "customer", CUSTOMER_IP, calls=CALLS)) as (customer,):
        r = uac(tmp_path, "gateway", ROWS, extra=("-r", "5")).start().wait()
        customer_r = customer.wait()
    assert finals(r) == [200] * CALLS, explain(sg, r)
    assert_clean(r, CALLS)
    assert_clean(customer_r, CALLS)
    # What the callee saw, in call order: the first four untagged, then every call tagged.
    seen = {uri_user(m.header("From")): display_name(m.header("From")) for m in customer_r.requests("INVITE")}
    tags = [seen[caller] for caller, _, _ in ROWS]
    assert tags[:4] == ["Alice"] * 4 and tags[4:] == ["SPAM? Alice"] * (CALLS - 4), tags

    # Reported as one campaign, with the upstream hop the calls came through.
    def reported() -> bool:
        rep = campaigns_cli(sg)
        return bool(rep["campaigns"]) and rep["campaigns"][0]["calls"] == CALLS - 4

    harness.wait_until(reported, "the flagged calls in the records", attempts=100, interval=0.1)
    rep = campaigns_cli(sg)
    assert rep["flagged_calls"] == CALLS - 4 and len(rep["campaigns"]) == 1, rep
    (c,) = rep["campaigns"]
    assert (c["gateway"], c["ingress"], c["mode"]) == ("source:127.0.0.20", "carrier", "enforce"), c
    assert c["rule"] == "risk_score:first_seen_share" and c["distinct_origs"] == CALLS - 4, c
    assert c["upstream"][0].startswith("carrier 127.0.0.20:"), c
    assert "first_seen_share 1.00" in c["samples"][0]["note"] and "neighbor_share 1.00" in c["samples"][0]["note"], c

    # The same through the API, and a label on one of its calls.
    with urllib.request.urlopen(f"{sg.api_base}/report?campaigns=1&since=1h", timeout=10) as resp:
        assert json.loads(resp.read())["campaigns"][0]["calls"] == CALLS - 4
    first_call = call_ids(r)[0]
    a_leg = next(s["a_call_id"] for s in c["samples"])
    status, body = post_feedback(sg, {"call_id": a_leg, "label": "robocall"})
    assert status == 200 and body["gateways"] == ["source_ip:127.0.0.20"] and body["ops"] == 2, body
    assert post_feedback(sg, {"call_id": "no-such-call", "label": "robocall"})[0] == 404
    assert post_feedback(sg, {"call_id": first_call, "label": "spam"})[0] == 400
