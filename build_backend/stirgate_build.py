"""stirgate's PEP 517 build backend: setuptools, plus the hot path compiled with mypyc in every wheel it builds.

`pip install .`, `pip wheel .` and `python -m build` get a wheel whose hot path (proxy/compiled.py MODULES) is
compiled, like black and mypy ship theirs. Without a working compiler (no gcc, no Python headers, mypy reports an
error) the build does not fail: it says why on stdout and builds a pure-Python wheel, which runs the same code
more slowly. `STIRGATE_PURE=1` asks for the pure wheel. Editable installs (`pip install -e .`, used by
`make venv`) and sdists compile nothing: a checkout is compiled in place by `make compile`.

Building the extensions needs mypy and everything the compiled modules import, so that mypy sees the same types
as in a checkout: `[tool.stirgate] compile-requires` in pyproject.toml plus the project's dependencies. pip
installs them into the isolated build environment (`get_requires_for_build_wheel`); the Makefile installs the
same list into .venv for `make compile` (`python build_backend/stirgate_build.py compile-requires`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

ROOT = Path(__file__).resolve().parent.parent


def _say(text: str) -> None:
    print(f"stirgate build: {text}", flush=True)


def pure_requested() -> bool:
    return os.environ.get("STIRGATE_PURE", "").strip() not in ("", "0")


def compile_requires(root: Path = ROOT) -> list[str]:
    """What building the compiled hot path needs besides setuptools: mypy, stubs, the project's dependencies."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    extra: list[str] = project.get("tool", {}).get("stirgate", {}).get("compile-requires", [])
    return [*extra, *project["project"].get("dependencies", [])]


@contextlib.contextmanager
def _mode(mode: str, why: str = "") -> Iterator[str]:
    """Tell setup.py what to build (STIRGATE_BUILD), in a build folder of its own; restore the environment."""
    saved = {k: os.environ.get(k) for k in ("STIRGATE_BUILD", "STIRGATE_BUILD_WHY", "STIRGATE_BUILD_DIR")}
    folder = tempfile.mkdtemp(prefix="stirgate-build-")
    os.environ.update(STIRGATE_BUILD=mode, STIRGATE_BUILD_WHY=why, STIRGATE_BUILD_DIR=folder)
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def _why(exc: BaseException) -> str:
    """One line saying why compiling failed, from what setuptools or mypyc raised."""
    if isinstance(exc, ImportError):
        return f"mypy is not installed in the build environment ({exc})"
    if isinstance(exc, SystemExit):
        if isinstance(exc.code, str):
            return exc.code.strip().splitlines()[-1]
        return f"mypyc stopped with exit status {exc.code} (its messages are above)"
    return f"{type(exc).__name__}: {str(exc).strip()}".splitlines()[0]


def _pure(hook: Callable[..., Any], why: str = "editable installs and sdists are not compiled") -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _mode("pure", why):
            return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped


# Metadata and requirements do not depend on the extensions: setup.py runs without compiling for these.
prepare_metadata_for_build_wheel = _pure(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _pure(_setuptools.prepare_metadata_for_build_editable)
get_requires_for_build_sdist = _pure(_setuptools.get_requires_for_build_sdist)
get_requires_for_build_editable = _pure(_setuptools.get_requires_for_build_editable)
build_sdist = _pure(_setuptools.build_sdist)
build_editable = _pure(_setuptools.build_editable)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    with _mode("pure"):
        base: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return base if pure_requested() else [*base, *compile_requires()]


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    """The wheel with the compiled hot path; a pure-Python one (and the reason, on stdout) when that fails."""
    if pure_requested():
        _say("STIRGATE_PURE is set: building a pure-Python wheel (the hot path is not compiled)")
        with _mode("pure", "built with STIRGATE_PURE=1"):
            return str(_setuptools.build_wheel(wheel_directory, config_settings, metadata_directory))
    _say("compiling the hot path with mypyc (proxy/compiled.py; STIRGATE_PURE=1 skips it)")
    try:
        with _mode("compiled"):
            name = str(_setuptools.build_wheel(wheel_directory, config_settings, metadata_directory))
    except (Exception, SystemExit) as exc:
        why = _why(exc)
        _say(f"the hot path could not be compiled ({why}): building a PURE-PYTHON wheel instead, which runs "
             "the same code with about twice the CPU per call (needs gcc, the Python headers and mypy)")
        with _mode("pure", f"compiling failed: {why}"):
            return str(_setuptools.build_wheel(wheel_directory, config_settings, metadata_directory))
    _say(f"built {name} with the compiled hot path")
    return name


if __name__ == "__main__":
    # `python build_backend/stirgate_build.py compile-requires`: the list, one per line (for the Makefile).
    if sys.argv[1:] == ["compile-requires"]:
        print("\n".join(compile_requires()))
    else:
        print("usage: stirgate_build.py compile-requires", file=sys.stderr)
        sys.exit(2)
