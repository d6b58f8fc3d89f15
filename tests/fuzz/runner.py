"""One target under atheris/libFuzzer: ``python -m tests.fuzz.runner TARGET [libFuzzer args and corpus dirs]``.

Run by ``python -m tests.fuzz`` in a subprocess per target (libFuzzer ends the process when it is done). The
stirgate packages are imported under atheris instrumentation, so their branches guide the mutations.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]

    target = argv[1]
    with atheris.instrument_imports(include=["proxy", "policies"]):
        import policies  # noqa: F401
        import proxy.b2bua
        import proxy.engine
        import proxy.sip.grammar
        import proxy.sip.message
        import proxy.sip.transaction
        import proxy.sip.validate  # noqa: F401
        from tests.fuzz.targets import TARGETS
    one = TARGETS[target]
    atheris.Setup([argv[0], *argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
