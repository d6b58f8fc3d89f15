"""Fixtures for the integration tests: a live stirgate per test, SIPp peers, skips when a peer tool is missing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.stir_env import StirPki, X5uServer, make_pki


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
        crashed = not sg.alive() and not sg.terminated
        rc = sg.stop()
        if crashed:
            problems.append(f"stirgate died during the test (exit {rc}):\n{sg.log_tail()}")
        elif rc != 0:
            problems.append(f"stirgate exited {rc} on SIGTERM (expected 0):\n{sg.log_tail()}")
        problems += log_problems(sg)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def log_problems(sg: harness.Stirgate) -> list[str]:
    """What stirgate's own log says went wrong: lines that are not JSON (a traceback), error-level events,
    internal errors counted at stop, calls still active when it drained (state not freed at the call's end)."""
    problems = []
    for line in sg.log_path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            problems.append(f"stirgate wrote a non-JSON log line: {line[:300]}")
            continue
        if not isinstance(event, dict):
            continue
        if str(event.get("level", "")).lower() in ("error", "critical", "exception"):
            problems.append(f"stirgate logged an error: {line[:600]}")
        if event.get("event") == "draining" and event.get("active_calls", 0) and not sg.calls_active_at_drain:
            problems.append(f"calls still active after every call ended: {line[:300]}")
        if event.get("event") == "stopped" and event.get("internal_errors", 0):
            problems.append(f"internal errors counted: {line[:600]}")
    return problems[:20]


QUICK_TIMERS = {"failover_timeout": 1.0, "no_answer_timeout": 2.0}


@pytest.fixture
def stirgate(stirgate_factory: StirgateFactory) -> harness.Stirgate:
    """A stirgate on the loopback topology with quick failover (1 s) and no-answer (2 s) timers."""
    return stirgate_factory(sip=QUICK_TIMERS)


@pytest.fixture(scope="session")
def sti_pki(tmp_path_factory: pytest.TempPathFactory) -> StirPki:
    """The demo PKI (`stirgate certs init`, plus an untrusted set) the STI service tests sign and verify with."""
    return make_pki(tmp_path_factory.mktemp("sti-pki"))


@pytest.fixture(scope="session")
def sti_x5u(sti_pki: StirPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[X5uServer]:
    """The shipped x5u server publishing `sti_pki`'s certificates (https, its own port) for the session."""
    server = X5uServer(sti_pki, tmp_path_factory.mktemp("sti-x5u")).start()
    yield server
    server.stop()
