"""Log levels per component (issue 5): JSON lines, a component's level overriding the default."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from proxy.server import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


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
