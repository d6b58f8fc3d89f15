"""Hand-made malformed messages (tests/data/malformed/MANIFEST.json) and mutation fuzzing of the corpus.

Outcomes: "parse" = parse() succeeds and check_request() is None; "ignore" = parse() raises ParseError
(keep-alives and empty datagrams are dropped silently - a parsed message of any kind is wrong);
"drop" = ParseError or check_request() rejects; <code> = check_request() returns that code (ParseError is
accepted in its place only for 400). Nothing may raise anything but ParseError.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("proxy.sip.validate")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.sip.message import ParseError, Response, parse
from proxy.sip.validate import check_request

from .test_torture import describe, observe, satisfies

DATA = Path(__file__).resolve().parents[2] / "data"
MANIFEST = json.loads((DATA / "malformed" / "MANIFEST.json").read_text(encoding="utf-8"))
ENTRIES = {m["name"]: m for m in MANIFEST["messages"]}
CORPUS = sorted((DATA / "rfc4475").glob("*.dat")) + sorted((DATA / "malformed").glob("*.dat"))


def _data(name: str) -> bytes:
    return (DATA / "malformed" / ENTRIES[name]["file"]).read_bytes()


def test_manifest_lists_every_file_once() -> None:
    files = sorted(p.name for p in (DATA / "malformed").glob("*.dat"))
    assert sorted(m["file"] for m in MANIFEST["messages"]) == files


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_bytes_match_manifest(name: str) -> None:
    data = _data(name)
    assert len(data) == ENTRIES[name]["size"]
    assert hashlib.sha256(data).hexdigest() == ENTRIES[name]["sha256"]


SIZE_LIMITED = sorted(n for n, m in ENTRIES.items() if m["outcome"] == 513)


@pytest.mark.parametrize("name", sorted(n for n in ENTRIES if n not in SIZE_LIMITED))
def test_outcome(name: str) -> None:
    expected = ENTRIES[name]["outcome"]
    kind, value = observe(_data(name))
    assert satisfies(expected, kind, value), f"{name}: expected {expected!r}, got {describe(kind, value)}"


def test_baseline_is_accepted_and_differs_from_each_defect_only_locally() -> None:
    base = _data("baseline_ok")
    req = parse(base)
    assert not isinstance(req, Response) and check_request(req) is None
    assert req.body.startswith(b"v=0\r\n")


def _never_crashes(data: bytes) -> None:
    try:
        msg = parse(data)
    except ParseError:
        return
    msg.to_bytes()
    if not isinstance(msg, Response):
        result = check_request(msg)
        assert result is None or (isinstance(result[0], int) and isinstance(result[1], str))


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS), st.integers(min_value=0, max_value=4096))
def test_truncation_never_raises_other_errors(path: Path, cut: int) -> None:
    data = path.read_bytes()
    _never_crashes(data[: cut % (len(data) + 1)])


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8))
def test_byte_flips_never_raise_other_errors(path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(path.read_bytes())
    if data:
        for pos, byte in flips:
            data[pos % len(data)] = byte
    _never_crashes(bytes(data))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=2048))
def test_random_datagrams_never_raise_other_errors(data: bytes) -> None:
    _never_crashes(data)


@pytest.mark.parametrize("name", SIZE_LIMITED)
def test_oversize_udp_gets_513_from_the_engine(name: str) -> None:
    """Size limits belong to the transport's edge: the engine answers 513 and takes nothing else from it."""
    from proxy.config import load_config_text
    from proxy.engine import Engine

    config = load_config_text(
        "trunks:\n  - {name: t, role: customer, sources: ['127.0.0.0/8'], destination: '127.0.0.20:5060'}\n"
        "routes:\n  - {trunks: [t]}\n"
    )
    engine = Engine(config, {"udp": ("127.0.0.1", 5060)})
    engine.receive(_data(name), ("udp", "127.0.0.10", 5060), 0.0)
    assert [parse(d).status for d, _ in engine.outbox] == [513]  # type: ignore[union-attr]
    assert engine.stats["oversize"] == 1 and not engine.calls
