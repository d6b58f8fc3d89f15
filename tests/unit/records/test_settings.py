"""`records:` settings: the PostgreSQL backend's keys, and errors that name file, line and key."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, load_config_text

BASE = "listen: [udp:127.0.0.1:5060]\n"


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config_text(text, "stirgate.yaml")
    return ei.value


def test_defaults_are_the_embedded_sqlite() -> None:
    r = load_config_text(BASE).records
    assert (r.backend, r.path, r.dsn, r.spill_max_bytes, r.spill_fsync) == (
        "sqlite", "var/records.sqlite3", "", 1 << 30, True)


def test_postgresql_settings_load() -> None:
    text = (BASE + "records:\n  backend: postgresql\n  dsn: postgresql://s@db/s\n"
            "  spill_path: /var/lib/stirgate/spill\n  spill_max_bytes: 1000\n  partitions_ahead: 7\n")
    r = load_config_text(text).records
    assert (r.backend, r.dsn, r.spill_path, r.spill_max_bytes, r.partitions_ahead) == (
        "postgresql", "postgresql://s@db/s", "/var/lib/stirgate/spill", 1000, 7)


def test_postgresql_without_dsn_names_the_records_block() -> None:
    e = err(BASE + "records:\n  backend: postgresql\n")
    assert (e.line, e.key) == (2, "records.dsn") and "dsn" in e.problem


def test_postgresql_with_an_empty_dsn_names_its_line() -> None:
    e = err(BASE + "records:\n  backend: postgresql\n  dsn: ' '\n")
    assert (e.line, e.key) == (4, "records.dsn")


def test_records_disabled_needs_no_dsn() -> None:
    assert not load_config_text(BASE + "records:\n  enabled: false\n  backend: postgresql\n").records.enabled


@pytest.mark.parametrize(("line", "key"), [
    ("  backend: mysql", "records.backend"),
    ("  spill_max_bytes: -1", "records.spill_max_bytes"),
    ("  partitions_ahead: 0", "records.partitions_ahead"),
    ("  retry_interval: 0", "records.retry_interval"),
])
def test_bad_values_are_located(line: str, key: str) -> None:
    e = err(BASE + "records:\n" + line + "\n")
    assert (e.line, e.key) == (3, key), str(e)
