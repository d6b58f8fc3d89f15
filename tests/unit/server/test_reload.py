"""SIGHUP (`proxy.server.reload`): what a reload applies, and the sections it cannot, named and kept as they run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from proxy.config import load_config
from proxy.server import reload
from tests.unit.core.sipfake import loopback_yaml, make_engine

pytestmark = pytest.mark.usefixtures("json_logging")


def write(path: Path, **changes: object) -> Path:
    """The engine tests' loopback config (`loopback_yaml`), with top-level changes."""
    cfg = yaml.safe_load(loopback_yaml())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def events(err: str, name: str) -> list[dict[str, object]]:
    return [e for e in (json.loads(line) for line in err.splitlines() if line.strip()) if e.get("event") == name]


def test_sections_a_reload_cannot_apply_are_named_and_kept(tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "stirgate.yaml")
    engine = make_engine(load_config(path))
    running = engine.config
    write(path, logging={"level": "debug"}, records={"enabled": False},
          sip={"failover_timeout": 7.0})  # sip: applied by a reload
    asyncio.run(reload(engine, 0))
    asyncio.run(reload(engine, 0))  # the file still differs from what runs: said again
    (first, second) = events(capfd.readouterr().err, "settings_need_restart")
    assert first["sections"] == second["sections"] == ["records", "logging"]
    assert (engine.config.logging, engine.config.records) == (running.logging, running.records)  # what runs
    assert engine.config.sip.failover_timeout == 7.0 and engine.settings.failover_timeout == 7.0


def test_a_reload_that_changes_nothing_restart_only_says_nothing(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "stirgate.yaml")
    engine = make_engine(load_config(path))
    write(path, sip={"failover_timeout": 7.0})
    asyncio.run(reload(engine, 0))
    err = capfd.readouterr().err
    assert events(err, "settings_need_restart") == [] and len(events(err, "reloaded")) == 1


def test_state_settings_read_per_call_are_applied_the_rest_named(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """`state.on_error` and `timeout_ms` are read call by call: a reload applies them (e.g. failing open during a
    Redis incident without a restart). The store's own settings (here max_keys) need a restart."""
    path = write(tmp_path / "stirgate.yaml")
    engine = make_engine(load_config(path))
    running = engine.config.state
    write(path, state={"on_error": "closed", "timeout_ms": 50.0})
    asyncio.run(reload(engine, 0))
    assert events(capfd.readouterr().err, "settings_need_restart") == []
    assert (engine.config.state.on_error, engine.config.state.timeout_ms) == ("closed", 50.0)
    write(path, state={"on_error": "closed", "timeout_ms": 50.0, "max_keys": 10})
    asyncio.run(reload(engine, 0))
    (warned,) = events(capfd.readouterr().err, "settings_need_restart")
    assert warned["sections"] == ["state"]
    assert engine.config.state.max_keys == running.max_keys and engine.config.state.on_error == "closed"
