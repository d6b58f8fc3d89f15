"""The hot path compiled to C with mypyc, beside the sources; pure Python whenever it is not built.

`make compile` (part of `make run` and `make test`) runs `python -m proxy.compiled build`: the modules below,
already strict-typed, become extension modules next to their `.py` files (plus the runtime they share,
`proxy/_hotpath__mypyc`). Measured in memory (`python -m bench.engine_calls`): a relayed call costs
about half the CPU. `make pure` removes them. Modules holding msgspec structs or exception classes stay
interpreted (msgspec reads their annotations at run time; mypyc's exception classes lose attributes).

An extension older than its source would run old code, so `check()` refuses that (the CLI and the tests call it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    "proxy/engine.py",
    "proxy/transport.py",
    "proxy/authentication.py",
    "proxy/stir/tn.py",
    "proxy/stir/identity.py",
    "proxy/stir/passport.py",
    "proxy/stir/x5u.py",
    "proxy/stir/verifier.py",
    "proxy/stir/signer.py",
)


def extensions() -> list[Path]:
    """The built extension modules present now (any Python version)."""
    out: list[Path] = []
    for module in MODULES:
        py = ROOT / module
        out.extend(py.parent.glob(py.stem + ".*.so"))
    out.extend((ROOT / "proxy").glob("_hotpath__mypyc.*.so"))
    return out


def stale() -> list[str]:
    """Compiled modules whose source changed after they were built."""
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


def build() -> int:
    """Compile MODULES in place (needs a C compiler and the Python headers)."""
    from mypyc.build import mypycify
    from setuptools import setup

    setup(
        name="stirgate-compiled",
        ext_modules=mypycify(list(MODULES), group_name="proxy._hotpath", opt_level="3"),
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
