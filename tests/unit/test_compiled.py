"""The stale-build check: a compiled module older than its source is refused, a fresh one is not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy import compiled


def _tree(root: Path, source_time: float, build_time: float) -> None:
    for module in compiled.MODULES:
        py = root / module
        py.parent.mkdir(parents=True, exist_ok=True)
        py.write_text("")
        so = py.with_name(py.stem + ".cpython-311-x86_64-linux-gnu.so")
        so.write_bytes(b"")
        os.utime(py, (source_time, source_time))
        os.utime(so, (build_time, build_time))


def test_fresh_build_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, source_time=1000.0, build_time=2000.0)
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    assert compiled.stale() == []
    compiled.check()
    assert len(compiled.extensions()) == len(compiled.MODULES)


def test_source_newer_than_its_build_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, source_time=1000.0, build_time=2000.0)
    engine = tmp_path / "proxy" / "engine.py"
    os.utime(engine, (3000.0, 3000.0))
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    assert compiled.stale() == ["proxy/engine.cpython-311-x86_64-linux-gnu.so is older than proxy/engine.py"]
    with pytest.raises(SystemExit, match="make compile"):
        compiled.check()


def test_no_build_is_pure_python_and_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    assert compiled.stale() == [] and compiled.extensions() == []


def test_an_installed_wheel_is_never_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip gives installed files its own times: a wheel's extensions are built from the sources beside them."""
    _tree(tmp_path, source_time=3000.0, build_time=2000.0)  # every source "newer" than its extension
    (tmp_path / compiled.BUILD_INFO).write_text('{"hot_path": "compiled", "why": null}')
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    assert compiled.stale() == []
    compiled.check()


def test_describe_says_why_a_wheel_is_pure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proxy").mkdir()
    (tmp_path / compiled.BUILD_INFO).write_text('{"hot_path": "python", "why": "built with STIRGATE_PURE=1"}')
    monkeypatch.setattr(compiled, "ROOT", tmp_path)
    monkeypatch.setattr(compiled, "is_compiled", lambda: False)
    assert compiled.describe().startswith(
        "python, not compiled (the wheel was built without it: built with STIRGATE_PURE=1)")
    (tmp_path / compiled.BUILD_INFO).unlink()  # a checkout that was not compiled
    assert "make compile" in compiled.describe()
