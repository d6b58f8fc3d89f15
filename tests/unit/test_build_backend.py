"""The build backend's requirement list: what mypy needs to compile the hot path as `make compile` does."""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "build_backend"))

import stirgate_build  # noqa: E402


def _name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep, 1)[0]
    return requirement


def test_compiling_asks_for_mypy_stubs_and_every_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = stirgate_build.compile_requires(ROOT)
    assert any(_name(r) == "mypy" for r in wanted)
    assert set(project["dependencies"]) <= set(wanted)  # mypy must see their types, as in a checkout


def test_this_virtualenv_has_them_for_make_compile() -> None:
    missing = []
    for requirement in stirgate_build.compile_requires(ROOT):
        try:
            version(_name(requirement))
        except PackageNotFoundError:
            missing.append(requirement)
    assert missing == [], "make venv installs the build's requirements: re-run it"


@pytest.mark.parametrize(("value", "pure"), [("", False), ("0", False), ("1", True), ("yes", True)])
def test_stirgate_pure(monkeypatch: pytest.MonkeyPatch, value: str, pure: bool) -> None:
    monkeypatch.setenv("STIRGATE_PURE", value)
    assert stirgate_build.pure_requested() is pure


def test_why_a_build_failed_is_one_line() -> None:
    assert stirgate_build._why(SystemExit("error: command '/nonexistent/cc' failed: No such file")) == (
        "error: command '/nonexistent/cc' failed: No such file")
    assert "exit status 1" in stirgate_build._why(SystemExit(1))  # mypy's errors are printed above it
    assert stirgate_build._why(ImportError("No module named 'mypyc'")).startswith("mypy is not installed")
