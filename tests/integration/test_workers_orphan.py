"""`--workers N`: workers stop when their parent is killed outright (SIGKILL, the OOM killer), instead of
serving on alone with the ports, out of the supervisor's sight."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration import harness


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    config = harness.make_config(tmp_path / "stirgate.yaml")
    sg = harness.Stirgate(config, tmp_path, run_args=["--workers", "2"]).start()
    assert sg.proc is not None
    parent = sg.proc.pid
    workers = harness._descendants(parent) - {parent}
    assert len(workers) == 2, workers
    os.kill(parent, signal.SIGKILL)
    sg.proc.wait(timeout=10)
    harness.wait_until(lambda: not any(_alive(w) for w in workers), "both workers gone", attempts=500,
                       interval=0.02)
    harness.wait_port_free(harness.STIRGATE_IP, harness.SIP_PORT, "udp")
    sg.terminated = True
