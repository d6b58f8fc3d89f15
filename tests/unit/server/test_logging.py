"""Log levels per component (issue 5): JSON lines, a component's level overriding the default."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import structlog

from proxy import logbridge
from proxy.logbridge import component_of
from proxy.logsink import sink, utc_timestamp
from proxy.server import _call_logger, configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    configure_logging("info")  # the per-call lines back on for whatever runs next
    structlog.reset_defaults()
    logbridge.uninstall()  # the standard library's records as before


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_component_level_overrides_the_default(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", {"call": "warning", "transport": "debug"})
    structlog.get_logger("stirgate.call", component="call").info("call", call_id="x")  # silenced
    structlog.get_logger("stirgate.transport", component="transport").debug("tcp_detail")  # let through
    structlog.get_logger("stirgate", component="server").debug("noise")  # below the default
    structlog.get_logger("stirgate", component="server").info("listening")
    events = [(e["component"], e["event"]) for e in lines(capfd.readouterr().err)]
    assert events == [("transport", "tcp_detail"), ("server", "listening")]


def ended_call() -> SimpleNamespace:
    """What the per-call line reads of an ended call (attributes only)."""
    leg = SimpleNamespace
    return SimpleNamespace(a=leg(call_id="a-1"), b=leg(call_id="b-1"), ingress=leg(name="customer"),
                           egress=leg(trunk=leg(name="carrier")), final_status=200, end_reason="bye-a",
                           inbound=None, signed=None, answered_at=10.0, ended_at=12.5,
                           decisions=[("risk", "enforce", "tag", "risk 55"), ("dno", "enforce", "continue", "")])


def test_the_call_line_is_the_line_structlog_would_write(capfd: pytest.CaptureFixture[str]) -> None:
    """The per-call line is built without structlog's processors (a tenth of a relayed call's CPU): same keys,
    level, component and timestamp format as any other line."""
    configure_logging("info")
    _call_logger()(ended_call())  # type: ignore[arg-type]
    structlog.get_logger("stirgate", component="server").info("listening")
    sink.flush()
    call, other = lines(capfd.readouterr().err)
    assert call == {"event": "call", "component": "call", "level": "info", "timestamp": call["timestamp"],
                    "call_id": "a-1", "b_call_id": "b-1", "trunk": "customer", "egress": "carrier", "status": 200,
                    "end": "bye-a", "verstat": None, "attest": None, "duration": 2.5,
                    "policies": [["risk", "enforce", "tag", "risk 55"]]}
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert stamp.fullmatch(str(call["timestamp"])) and stamp.fullmatch(str(other["timestamp"]))


def test_call_lines_follow_the_call_component_level(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", {"call": "warning"})
    _call_logger()(ended_call())  # type: ignore[arg-type]
    sink.flush()
    assert lines(capfd.readouterr().err) == []


def test_utc_timestamp_matches_structlog() -> None:
    t = 1796510401.0625
    assert utc_timestamp(t) == "2026-12-05T22:40:01.062500Z"
    assert utc_timestamp(t + 1.5) == "2026-12-05T22:40:02.562500Z"  # the next second, formatted anew


def test_standard_library_records_are_json_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """aiohttp, asyncio and the policy chain log through the standard library: their records are JSON lines like
    the rest, an exception's traceback in the line's `exception` key (before: plain text on stderr, a
    traceback over many lines)."""
    configure_logging("info")
    try:
        _ = 1 // 0
    except ZeroDivisionError:
        logging.getLogger("stirgate.policies").exception("policy %s raised on call %s", "risk_score", "c-1")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    logging.getLogger("redis.connection").debug("below the level")
    err = capfd.readouterr().err
    policy, task = lines(err)  # every line is JSON (lines() would raise), and these two are all
    assert (policy["component"], policy["level"], policy["event"], policy["logger"]) == (
        "policies", "error", "policy risk_score raised on call c-1", "stirgate.policies")
    assert "ZeroDivisionError" in str(policy["exception"])
    assert (task["component"], task["level"], task["event"]) == (
        "server", "error", "Task exception was never retrieved")


def test_standard_library_records_follow_component_levels(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", {"policies": "critical", "redis": "debug"})
    logging.getLogger("stirgate.policies").error("silenced")
    logging.getLogger("redis.connection").debug("let through")
    assert [(e["component"], e["event"]) for e in lines(capfd.readouterr().err)] == [("redis", "let through")]


def test_components_of_standard_library_loggers() -> None:
    assert [component_of(n) for n in ("stirgate.policies", "stirgate", "aiohttp.server", "aiohttp.client",
                                      "asyncio", "psycopg.pool", "redis")] == [
        "policies", "server", "api", "api", "server", "psycopg", "redis"]
