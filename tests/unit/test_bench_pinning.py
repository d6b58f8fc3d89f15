"""The bench's `--pin-sut CPU`: the SUT alone on one CPU, the bench's other processes on the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.suts import _pinned

CPUS = sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to pin one")
def test_the_suts_process_starts_on_its_cpu_only() -> None:
    cpu = CPUS[-1]
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         preexec_fn=_pinned(frozenset({cpu})), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[{cpu}]"


def test_a_cpu_this_process_cannot_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = max(CPUS) + 1
    assert main(["--mode", "relay", "--sut", "stirgate", "--pin-sut", str(missing), "--out", str(tmp_path)]) == 2
    assert f"--pin-sut {missing}" in capsys.readouterr().err
    assert os.sched_getaffinity(0) == set(CPUS)  # nothing pinned on the way out
