"""stirgate installed the way a user installs it: `pip install <checkout>` into a fresh virtualenv.

Used by `python -m bench --mode wheel` (the wheel-installed stirgate beside Kamailio) and by
tests/integration/test_wheel.py. The build runs on a copy of the checkout (so that it leaves nothing in the tree;
compiled modules from `make compile` are copied too, and must not end up in a wheel), with pip's own build
isolation: pip asks the build backend for its requirements and installs them, as on a user's machine.

Where the package index cannot be reached (a test inside a network namespace) that cannot work, so the wheel is
built with `--no-build-isolation` by the running virtualenv (which holds the same requirements: `make venv`
installs them) and installed without dependencies; the fresh virtualenv then finds the dependencies in the
running one's site-packages through a path entry (`.pth`), which adds their folder only: the running virtualenv's
editable stirgate is not seen. `Install.isolated` says which way it went.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Not part of what a user builds from: virtualenvs, caches, build output, local data. mypy's cache is kept: it
# only saves the build the type check of unchanged modules (a checkout that ran `make compile` has it too).
_SKIP_NAMES = {".venv", ".git", "build", "bench-results", "__pycache__", ".ruff_cache", ".pytest_cache",
               ".hypothesis", "demo-certs", "var", "corpus", "crashes"}
BUILD_TIMEOUT = 900  # seconds: a cold mypyc build on a busy 2-core machine takes a few minutes at worst


def source_copy(dest: Path, src: Path = REPO) -> Path:
    """The checkout's files in `dest` (a new folder), as a user would build them."""

    def ignore(_folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in _SKIP_NAMES or n.endswith((".egg-info", ".pyc"))}

    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return dest


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    with log.open("ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                           timeout=BUILD_TIMEOUT)
    if r.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {r.returncode} (log {log}):\n{tail}")


def _build_env(pure: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STIRGATE_PURE", "CC", "PYTHONPATH")}
    if pure:
        env["STIRGATE_PURE"] = "1"
    env.update(extra or {})
    return env


def index_reachable(python: str = sys.executable, src: Path = REPO) -> bool:
    """Whether pip can fetch what an isolated build of stirgate asks for (the package index is reachable)."""
    sys.path.insert(0, str(src / "build_backend"))
    try:
        from stirgate_build import compile_requires

        wanted = ["setuptools>=77", *compile_requires(src)]
    finally:
        sys.path.remove(str(src / "build_backend"))
    with tempfile.TemporaryDirectory(prefix="stirgate-index-") as tmp:
        r = subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--retries", "0", "--timeout", "10",
                            "-d", tmp, *wanted], capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    return r.returncode == 0


@dataclass
class Install:
    """A fresh virtualenv with stirgate installed from a wheel built from `src`."""

    venv: Path
    log: Path          # pip's verbose output: the build backend's lines ("stirgate build: ...") are in it
    isolated: bool     # True: `pip install SRC` exactly as a user runs it; False: see the module docstring

    @property
    def stirgate(self) -> Path:
        return self.venv / "bin" / "stirgate"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.stirgate), *args], capture_output=True, text=True, timeout=60,
                              cwd=cwd or self.venv, stdin=subprocess.DEVNULL, env=_build_env(False))

    def site_packages(self) -> Path:
        r = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, timeout=60, check=True)
        return Path(r.stdout.strip())


def install(workdir: Path, src: Path, *, pure: bool = False, isolated: bool | None = None,
            builder: str = sys.executable) -> Install:
    """Build and install stirgate from `src` into `workdir/venv`; STIRGATE_PURE=1 for the build when `pure`.

    isolated=None: `pip install -v SRC` when the index is reachable, else the fallback of the module docstring.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    venv, log = workdir / "venv", workdir / "pip.log"
    if isolated is None:
        isolated = index_reachable(builder, src)
    env = _build_env(pure)
    if isolated:
        _run([builder, "-m", "venv", str(venv)], log, env)
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-v", str(src)], log, env, cwd=workdir)
        return Install(venv, log, True)
    _run([builder, "-m", "venv", "--without-pip", str(venv)], log, env)  # the builder's pip installs into it
    dist = workdir / "dist"
    _run([builder, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", str(dist), str(src)], log,
         env, cwd=workdir)
    wheels = sorted(dist.glob("stirgate-*.whl"))
    _run([builder, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
          str(wheels[-1])], log, env, cwd=workdir)
    inst = Install(venv, log, False)
    paths = sysconfig.get_paths()  # the running virtualenv's: where its dependencies are
    deps = dict.fromkeys([paths["purelib"], paths["platlib"]])
    (inst.site_packages() / "_stirgate_deps_from_builder.pth").write_text("\n".join(deps) + "\n")
    return inst


def build_wheel(dist: Path, src: Path, *, env: dict[str, str] | None = None, builder: str = sys.executable) -> Path:
    """Only the wheel (`pip wheel --no-build-isolation`), with extra environment: e.g. a missing compiler."""
    dist.mkdir(parents=True, exist_ok=True)
    log = dist / "pip.log"
    _run([builder, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", str(dist), str(src)], log,
         _build_env(False, env), cwd=dist)
    return sorted(dist.glob("stirgate-*.whl"))[-1]
