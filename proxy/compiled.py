"""The hot path compiled to C with mypyc, beside the sources; pure Python whenever it is not built.

`make compile` (part of `make run` and `make test`) runs `python -m proxy.compiled build`: the modules below,
already strict-typed, become extension modules next to their `.py` files (plus the runtime they share,
`proxy/_hotpath__mypyc`). Measured in memory (`python -m bench.engine_calls`): a relayed call costs
about half the CPU. `make pure` removes them. Modules holding msgspec structs or exception classes stay
interpreted (msgspec reads their annotations at run time; mypyc's exception classes lose attributes).

An extension older than its source would run old code, so `check()` refuses that (the CLI and the tests call it).

A wheel (`pip install .`, `pip wheel .`, `python -m build`) carries the same extensions: the build backend
(`build_backend/stirgate_build.py`, with `setup.py`) compiles `ext_modules()` too, and writes `proxy/_build.json`
into the wheel saying which hot path it holds and, when pure, why. An installed wheel is never "stale": its
extensions were built from the sources beside them, whatever times the installer gave the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from setuptools import Extension

ROOT = Path(__file__).resolve().parent.parent
#: Written into a wheel by its build (never present in a checkout): {"hot_path": "compiled"|"python", "why": ...}.
BUILD_INFO = "proxy/_build.json"
GROUP = "proxy._hotpath"
OPT_LEVEL = "3"

MODULES = (
    "proxy/sip/timers.py",
    "proxy/sip/grammar.py",
    "proxy/sip/message.py",
    "proxy/sip/validate.py",
    "proxy/sip/peek.py",
    "proxy/sip/transaction.py",
    "proxy/routing.py",
    "proxy/admission.py",
    "proxy/b2bua.py",
    "proxy/service.py",
    "proxy/redirect.py",
    "proxy/engine.py",
    "proxy/transport.py",
    "proxy/hep.py",
    "proxy/capture.py",
    "proxy/authentication.py",
    "proxy/stir/tn.py",
    "proxy/stir/identity.py",
    "proxy/stir/passport.py",
    "proxy/stir/x5u.py",
    "proxy/stir/verifier.py",
    "proxy/stir/signer.py",
    "policies/context.py",
    "policies/state.py",
    "policies/risk_core.py",
    "policies/numbering.py",
    "policies/chain_core.py",
    "policies/keys.py",
    "policies/replay_core.py",
)


def extensions() -> list[Path]:
    """The built extension modules present now (any Python version)."""
    out: list[Path] = []
    for module in MODULES:
        py = ROOT / module
        out.extend(py.parent.glob(py.stem + ".*.so"))
    out.extend((ROOT / "proxy").glob("_hotpath__mypyc.*.so"))
    return out


def ext_modules(target_dir: str = "build") -> list[Extension]:
    """The extension modules of the hot path, for setuptools: one definition for `make compile` and the wheel.

    Run from the project root (MODULES are relative paths); mypy reads its settings from pyproject.toml there.
    Raises SystemExit when mypy finds errors (mypyc refuses to compile them)."""
    from mypyc.build import mypycify

    return mypycify(list(MODULES), group_name=GROUP, opt_level=OPT_LEVEL, target_dir=target_dir)


def c_digest(target_dir: Path) -> str | None:
    """sha256 over the C that mypyc generated into `target_dir` (file names and contents); None when there is none.

    The wheel records it (proxy/_build.json) and `make compile` leaves its C in build/: equal digests mean the two
    builds compiled the same code into the same extension modules."""
    files = sorted(p for p in (target_dir / "proxy").rglob("*") if p.suffix in (".c", ".h"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(target_dir).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def build_info() -> dict[str, Any] | None:
    """What the wheel this stirgate was installed from says about its build; None in a checkout."""
    try:
        info = json.loads((ROOT / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def stale() -> list[str]:
    """Compiled modules whose source changed after they were built (a checkout's concern only)."""
    if build_info() is not None:
        return []  # installed from a wheel: built from these very sources
    problems = []
    for module in MODULES:
        py = ROOT / module
        for so in py.parent.glob(py.stem + ".*.so"):
            if py.stat().st_mtime > so.stat().st_mtime:
                problems.append(f"{so.relative_to(ROOT)} is older than {module}")
    return problems


def check() -> None:
    """Refuse to run compiled code that no longer matches its source."""
    problems = stale()
    if problems:
        raise SystemExit(
            "stirgate: compiled modules are out of date (" + "; ".join(problems) + "): "
            "run `make compile`, or `make pure` to run the Python sources"
        )


def is_compiled() -> bool:
    """True when the engine in this process is the mypyc build."""
    from proxy import engine

    return not engine.__file__.endswith(".py") if engine.__file__ else False


def installed_version() -> str:
    """The version pip installed (an editable checkout has one too); "unknown" for a bare copy of the sources."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stirgate")
    except PackageNotFoundError:
        return "unknown"


def describe() -> str:
    """Which hot path runs and, when it is Python, why: for `stirgate --version` and the start-up warning."""
    if is_compiled():
        return "compiled (mypyc)"
    info = build_info()
    if info is None:
        why = "not built in this checkout: `make compile`"
    else:
        why = f"the wheel was built without it: {info.get('why') or 'unknown reason'}"
    return f"python, not compiled ({why}); a call costs about twice the CPU"


def build() -> int:
    """Compile MODULES in place (needs a C compiler and the Python headers)."""
    from setuptools import setup

    os.chdir(ROOT)
    setup(
        name="stirgate-compiled",
        ext_modules=ext_modules(),
        script_args=["build_ext", "--inplace", "--build-temp", "build/mypyc", "-q"],
    )
    # The build regenerated every module from the sources as they are now; an extension whose C did not change
    # is copied with its old time, which `stale()` would take for an old build.
    for so in extensions():
        os.utime(so)
    return 0


def remove() -> int:
    for so in extensions():
        so.unlink()
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "build":
        return build()
    if command == "remove":
        return remove()
    if command == "status":
        problems = stale()
        built = extensions()
        print(f"{len(built)} compiled module(s)" + (f"; stale: {problems}" if problems else ""))
        return 1 if problems else 0
    print("usage: python -m proxy.compiled [build|remove|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
