"""YAML configuration: typed values, and errors that name the file, the line and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, load_config_text

from .sipfake import LOOPBACK

# Line numbers matter below: keep this text as it is (line 1 is "listen:").
BASE = """\
listen:
  - udp:127.0.0.1:5060
unknown_source: reject
sip:
  t1: 0.5
  failover_timeout: 2.0
trunks:
  - name: customer
    role: customer
    sources: [127.0.0.10]
    destination: 127.0.0.10:5060
  - name: carrier
    role: carrier
    sources:
      - 127.0.0.20
      - 10.1.0.0/16
    destination: 127.0.0.20:5060
    transport: tcp
routes:
  - from: [customer]
    prefix: "1"
    trunks: [carrier]
  - trunks: [customer]
logging:
  level: info
"""


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def err(text: str, file: str = "stirgate.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config_text(text, file)
    return ei.value


def mutate(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_loads_typed() -> None:
    cfg = load_config_text(BASE, "x.yaml")
    assert cfg.path == "x.yaml"
    assert [(lst.transport, lst.host, lst.port) for lst in cfg.listen] == [("udp", "127.0.0.1", 5060)]
    assert cfg.sip.t1 == 0.5 and cfg.sip.t2 == 4.0  # default filled
    assert cfg.trunk("carrier").transport == "tcp"
    assert cfg.trunk("carrier").sources == ["127.0.0.20", "10.1.0.0/16"]
    assert cfg.routes[0].from_ == ["customer"] and cfg.routes[1].from_ is None
    assert cfg.unknown_source == "reject"


def test_loopback_example_loads() -> None:
    cfg = load_config(LOOPBACK)
    assert {t.name for t in cfg.trunks} >= {"customer", "carrier", "carrier2"}


def check(e: ConfigError, file: str, line: int, key: str) -> None:
    s = str(e)
    assert s.startswith(f"{file}:{line}: {key}: "), s
    assert (e.file, e.line, e.key) == (file, line, key)


def test_unknown_top_level_key() -> None:
    text = mutate("logging:\n", "colour: red\nlogging:\n")
    check(err(text), "stirgate.yaml", line_of(text, "colour:"), "colour")
    assert "unknown" in str(err(text))


def test_unknown_nested_key() -> None:
    text = mutate("    transport: tcp\n", "    transport: tcp\n    transprot: udp\n")
    check(err(text), "stirgate.yaml", line_of(text, "transprot"), "trunks[1].transprot")


def test_unknown_key_in_sip() -> None:
    text = mutate("  t1: 0.5\n", "  t1: 0.5\n  t3: 1\n")
    check(err(text), "stirgate.yaml", 6, "sip.t3")


def test_wrong_type() -> None:
    text = mutate("  failover_timeout: 2.0", "  failover_timeout: soon")
    e = err(text)
    check(e, "stirgate.yaml", 6, "sip.failover_timeout")
    assert "float" in e.problem


def test_wrong_type_list_expected() -> None:
    text = mutate("    sources: [127.0.0.10]", "    sources: 127.0.0.10")
    check(err(text), "stirgate.yaml", 10, "trunks[0].sources")


def test_bad_enum() -> None:
    text = mutate("    role: carrier\n", "    role: carier\n")
    e = err(text)
    check(e, "stirgate.yaml", 13, "trunks[1].role")
    assert "carier" in e.problem


def test_bad_enum_top_level_and_transport() -> None:
    check(err(mutate("unknown_source: reject", "unknown_source: maybe")), "stirgate.yaml", 3, "unknown_source")
    check(err(mutate("    transport: tcp", "    transport: sctp")), "stirgate.yaml", 18, "trunks[1].transport")
    check(err(mutate("  level: info", "  level: loud")), "stirgate.yaml", 25, "logging.level")


@pytest.mark.parametrize("bad", ["10.1.0.0/33", "300.1.1.1", "not-an-ip", "10.1.0.0/abc"])
def test_bad_cidr(bad: str) -> None:
    e = err(mutate("      - 10.1.0.0/16", f"      - {bad}"))
    check(e, "stirgate.yaml", 16, "trunks[1].sources[1]")
    assert bad in e.problem


def test_route_to_unknown_trunk() -> None:
    e = err(mutate("    trunks: [carrier]", "    trunks: [carrier, nosuch]"))
    check(e, "stirgate.yaml", 22, "routes[0].trunks[1]")
    assert "nosuch" in e.problem


def test_route_from_unknown_trunk() -> None:
    e = err(mutate("  - from: [customer]", "  - from: [custom]"))
    check(e, "stirgate.yaml", 20, "routes[0].from[0]")


def test_route_prefix_digits_only() -> None:
    check(err(mutate('    prefix: "1"', '    prefix: "+1"')), "stirgate.yaml", 21, "routes[0].prefix")


def test_duplicate_trunk_name() -> None:
    check(err(mutate("  - name: carrier\n", "  - name: customer\n")), "stirgate.yaml", 12, "trunks[1].name")


def test_bad_listen_and_destination() -> None:
    check(err(mutate("  - udp:127.0.0.1:5060", "  - udp:127.0.0.1")), "stirgate.yaml", 2, "listen[0]")
    check(err(mutate("    destination: 127.0.0.20:5060", "    destination: 127.0.0.20:99999")), "stirgate.yaml", 17,
          "trunks[1].destination")


def test_non_positive_timer() -> None:
    check(err(mutate("  t1: 0.5", "  t1: 0")), "stirgate.yaml", 5, "sip.t1")


def test_negative_drain_probe_delay_located() -> None:
    check(err(mutate("  t1: 0.5", "  t1: 0.5\n  drain_probe_delay: -1")), "stirgate.yaml", 6, "sip.drain_probe_delay")
    cfg = load_config_text(mutate("  t1: 0.5", "  t1: 0.5\n  drain_probe_delay: 3"), "x.yaml")
    assert cfg.sip.drain_probe_delay == 3


def test_state_batch_window_must_be_under_the_timeout() -> None:
    text = mutate("logging:\n", "state:\n  backend: redis\n  timeout_ms: 20\n  batch_window_ms: 20\nlogging:\n")
    e = err(text)
    check(e, "stirgate.yaml", line_of(text, "batch_window_ms:"), "state.batch_window_ms")
    assert "less than timeout_ms (20)" in str(e)
    cfg = load_config_text(text.replace("batch_window_ms: 20", "batch_window_ms: 2"), "x.yaml")
    assert cfg.state.batch_window_ms == 2


def test_cluster_examples_load() -> None:
    root = Path(__file__).resolve().parents[3] / "examples" / "cluster"
    for name in ("node1.yaml", "node2.yaml"):
        cfg = load_config(root / name)
        assert cfg.sip.drain_probe_delay > 0 and cfg.state.backend == "redis"
        assert cfg.records.backend == "postgresql"


def test_broken_yaml_located() -> None:
    text = mutate("  failover_timeout: 2.0\n", "  failover_timeout: 2.0\n   bad_indent: [1, 2\n")
    e = err(text)
    assert e.file == "stirgate.yaml"
    assert e.key == "(yaml)"
    assert e.line in (6, 7)
    assert str(e).startswith(f"stirgate.yaml:{e.line}: (yaml): ")


def test_broken_yaml_unclosed_flow_sequence_line() -> None:
    text = "listen: [udp:127.0.0.1:5060\nsip:\n  t1: 1\n"
    e = err(text)
    assert e.key == "(yaml)" and e.line is not None and 1 <= e.line <= 3


def test_top_level_not_a_mapping() -> None:
    e = err("- just\n- a list\n")
    assert e.key == "(top level)" and e.line == 1


def test_file_name_in_error_from_load_config(tmp_path: Path) -> None:
    p = tmp_path / "edge.yaml"
    p.write_text(mutate("    role: carrier\n", "    role: peer\n"))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value).startswith(f"{p}:13: trunks[1].role: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(ei.value)


def test_empty_file_gives_defaults() -> None:
    cfg = load_config_text("", "empty.yaml")
    assert cfg.trunks == () and cfg.unknown_source == "reject"


def test_gc_pass_intervals() -> None:
    cfg = load_config_text(mutate("  t1: 0.5", "  t1: 0.5\n  gc_full_interval: 300\n  gc_full_max_interval: 3600"),
                           "x.yaml")
    assert (cfg.sip.gc_full_interval, cfg.sip.gc_full_max_interval) == (300, 3600)
    check(err(mutate("  t1: 0.5", "  t1: 0.5\n  gc_full_max_interval: -1")), "stirgate.yaml", 6,
          "sip.gc_full_max_interval")
