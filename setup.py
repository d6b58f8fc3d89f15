"""setuptools' part of the build: the hot path's extension modules, and the note a wheel carries about them.

Metadata lives in pyproject.toml. The build backend (build_backend/stirgate_build.py) decides, per build, whether
the hot path is compiled and tells this file through the environment:

- STIRGATE_BUILD=compiled: `proxy.compiled.ext_modules()` (the same list and options as `make compile`);
  anything else: no extension (editable installs, sdists, the pure fallback).
- STIRGATE_BUILD_WHY: written into the wheel's proxy/_build.json when the wheel is pure.
- STIRGATE_BUILD_DIR: a fresh folder for setuptools' and mypyc's intermediate files, so that a `build/` left in
  the tree by an earlier build (or by `make compile`) never ends up in this wheel.

Run through pip or `python -m build`, not as `python setup.py ...`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # proxy.compiled: MODULES and ext_modules(), shared with `make compile`

from proxy import compiled  # noqa: E402

MODE = os.environ.get("STIRGATE_BUILD", "pure")
BUILD_DIR = os.environ.get("STIRGATE_BUILD_DIR") or "build"
C_DIR = Path(BUILD_DIR) / "mypyc-c"
EXTENSIONS = compiled.ext_modules(target_dir=str(C_DIR)) if MODE == "compiled" else []


def _note() -> dict[str, object]:
    """proxy/_build.json: which hot path this wheel holds; when compiled, by which mypyc and from which C."""
    if MODE != "compiled":
        return {"hot_path": "python", "why": os.environ.get("STIRGATE_BUILD_WHY") or "not compiled"}
    from mypy.version import __version__ as mypy_version

    return {"hot_path": "compiled", "why": None, "modules": list(compiled.MODULES), "mypy": mypy_version,
            "c_sha256": compiled.c_digest(C_DIR)}


class BuildPyWithNote(build_py):  # type: ignore[misc]
    """The package's Python files, minus any extension left in the tree, plus proxy/_build.json."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # `pip install -e .`: the checkout itself is imported; nothing to add or take away
        lib = Path(self.build_lib)
        for stray in lib.glob("proxy/**/*.so"):  # build_ext puts this build's own ones in afterwards
            stray.unlink()
        target = lib / compiled.BUILD_INFO
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_note(), indent=1) + "\n")


setup(
    ext_modules=EXTENSIONS,
    cmdclass={"build_py": BuildPyWithNote},
    options={"build": {"build_base": BUILD_DIR}},
)
