"""Fixtures for the integration tests: a live stirgate per test, SIPp peers, skips when a peer tool is missing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sipp_bin() -> str:
    binary = harness.sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester; `make test` installs it)")
    return binary


@pytest.fixture(scope="session")
def pjsua2_available() -> None:
    if not harness.have_pjsua2():
        pytest.skip("pjsua2 is not importable (pip package pjsua2-python; `make test` installs it)")


StirgateFactory = Callable[..., harness.Stirgate]


@pytest.fixture
def stirgate_factory(tmp_path: Path) -> Iterator[StirgateFactory]:
    """start(sip=..., trunks=..., extra=...) -> a ready stirgate on a config derived from examples/loopback.yaml.

    At teardown each one gets SIGTERM and must exit 0 (the contract's graceful stop).
    """
    started: list[harness.Stirgate] = []

    def start(**overrides: Any) -> harness.Stirgate:
        workdir = tmp_path / f"stirgate{len(started)}"
        workdir.mkdir()
        config = harness.make_config(workdir / "stirgate.yaml", **overrides)
        sg = harness.Stirgate(config, workdir)
        started.append(sg)
        return sg.start()

    yield start
    problems = []
    for sg in started:
        crashed = not sg.alive()
        rc = sg.stop()
        if crashed:
            problems.append(f"stirgate died during the test (exit {rc}):\n{sg.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate exited {rc} on SIGTERM (expected 0):\n{sg.log_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


QUICK_TIMERS = {"failover_timeout": 1.0, "no_answer_timeout": 2.0}


@pytest.fixture
def stirgate(stirgate_factory: StirgateFactory, sipp_bin: str) -> harness.Stirgate:
    """A stirgate on the loopback topology with quick failover (1 s) and no-answer (2 s) timers."""
    return stirgate_factory(sip=QUICK_TIMERS)
