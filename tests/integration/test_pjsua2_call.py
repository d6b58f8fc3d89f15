"""A pjsua2 UA at 127.0.0.10 calls a pjsua2 UA at 127.0.0.20 through stirgate (issue 2, Tests).

pjsua2 allows one Endpoint per process, so the call runs in tests/integration/pjsua2_agent.py (both UAs in one
Endpoint, one UDP transport and account each) as a subprocess with a bound; it reports what both sides saw as
JSON. The test asserts: the call confirms on both sides; the SDP body the callee receives is byte-identical to
the one the caller sent (pjsip's own TX log of the caller's INVITE), and the answer likewise on its way back;
`X-Stirgate-Test: 42` arrives unchanged; the caller hangs up and both sides reach DISCONNECTED.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration import harness

AGENT = Path(__file__).with_name("pjsua2_agent.py")


def run_agent(target: tuple[str, int], workdir: Path) -> dict[str, Any]:
    for ip in (harness.CUSTOMER_IP, harness.CARRIER_IP):
        harness.wait_port_free(ip, harness.SIP_PORT, "udp")
    media = (harness.free_port(harness.CUSTOMER_IP, span=8), harness.free_port(harness.CARRIER_IP, span=8))
    log = workdir / "pjsua2.log"
    cmd = [sys.executable, str(AGENT), "--target", f"{target[0]}:{target[1]}", "--port", str(harness.SIP_PORT),
           "--media-ports", f"{media[0]},{media[1]}", "--seconds", "15", "--log", str(log)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=harness.ROOT)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"pjsua2 agent exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]!r}\nstderr:\n{proc.stderr[-3000:]!r}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    result["_log"] = str(log)
    return result


def body(msg: str) -> bytes:
    raw = msg.encode()
    _head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no header/body separator in:\n{msg}"
    return rest


def header_lines(msg: str, name: str) -> list[str]:
    head = msg.split("\r\n\r\n", 1)[0]
    return [ln for ln in head.split("\r\n")[1:] if ln.split(":", 1)[0].strip().lower() == name.lower()]


def describe(r: dict[str, Any]) -> str:
    return "pjsua2 events:\n  " + "\n  ".join(r.get("events", [])) + f"\n(pjsip log: {r.get('_log')})"


def test_pjsua2_call_through_stirgate(pjsua2_available: None, stirgate: harness.Stirgate, tmp_path: Path) -> None:
    r = run_agent((harness.STIRGATE_IP, harness.SIP_PORT), tmp_path)
    assert r["both_confirmed"], describe(r) + f"\n{stirgate.log_tail()}"

    sent, received = r["caller_invite_sent"], r["callee_invite_received"]
    assert sent and received, describe(r)
    # It went through stirgate: the callee's INVITE came from stirgate, on a new dialog.
    assert r["callee_src"].startswith(harness.STIRGATE_IP + ":"), r["callee_src"]
    assert header_lines(sent, "Call-ID") != header_lines(received, "Call-ID")
    # The SDP body, byte for byte.
    assert body(received) == body(sent), f"SDP changed:\n--- sent\n{body(sent)!r}\n--- received\n{body(received)!r}"
    # The answer SDP back to the caller, byte for byte.
    ans_sent, ans_seen = r["callee_answer_sent"], r["caller_answer_received"]
    assert ans_sent and ans_seen, describe(r)
    assert body(ans_seen) == body(ans_sent), f"answer SDP changed:\n{body(ans_sent)!r}\n{body(ans_seen)!r}"
    # The custom header, unchanged (name and value, exactly once).
    assert header_lines(sent, "X-Stirgate-Test") == ["X-Stirgate-Test: 42"]
    assert header_lines(received, "X-Stirgate-Test") == ["X-Stirgate-Test: 42"], received
    # The caller hung up; both sides saw the call end.
    assert r["both_ended"], describe(r)
    assert r["caller_states"][-1] == "DISCONNECTED" and r["callee_states"][-1] == "DISCONNECTED", describe(r)
