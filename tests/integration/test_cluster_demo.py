"""`make cluster` (examples/cluster/run.py): the demo starts every part, carries calls over both nodes through
Kamailio, and stops cleanly on Ctrl-C. It uses the fixed addresses of examples/cluster/ (run it in a network
namespace of its own when something else on the machine may hold them, as the brief asks of every test)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.cluster import FRONT_IP
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, Sipp
from tests.integration.kamailio import kamailio_binary

pytestmark = pytest.mark.usefixtures("sipp_bin")


def test_make_cluster_starts_carries_calls_over_both_nodes_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if kamailio_binary() is None:
        pytest.skip("kamailio not installed (Debian package kamailio; `make test` installs it)")
    root = harness.ROOT
    if not (root / "demo-certs" / "sp.key").exists():  # what `make certs` does before `make cluster`
        subprocess.run([*harness.stirgate_command(), "certs", "init", "demo-certs"], cwd=root, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
    demo = subprocess.Popen([sys.executable, "examples/cluster/run.py", "--workers", "1"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        harness.wait_until(lambda: demo.poll() is not None or any("cluster ready" in ln for ln in lines),
                           "the demo to say it is ready", attempts=1200, interval=0.1)  # fmt: skip
        assert demo.poll() is None, "".join(lines)
        calls = 20
        uas = Sipp("uas_answer.xml", CARRIER_IP, tmp_path, name="carrier", calls=calls)
        uac = Sipp("rec_uac_hold.xml", CUSTOMER_IP, tmp_path, name="customer", remote=(FRONT_IP, 5060),
                   calls=calls, port=harness.free_port(CUSTOMER_IP), extra=("-r", "20", "-d", "100"))
        with harness.running(uas):
            out = uac.start().wait()
            at_carrier = uas.wait()
        assert (out.successful, out.failed) == (calls, 0), out.summary() + "".join(lines)
        nodes = {m.header("Via").split()[1].split(":")[0] for m in at_carrier.requests("INVITE")}
        assert nodes == {"127.0.0.1", "127.0.0.2"}, nodes
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
        reader.join(timeout=5)
    assert rc == 0, "".join(lines)
    assert lines and lines[-1].strip() == "stopped", "".join(lines[-20:])
