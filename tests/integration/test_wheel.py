"""`pip install .` gives the fast stirgate (issue 14): a wheel built from the checkout, in a fresh virtualenv.

Each install is built once per session (bench/wheel.py: a copy of the checkout, `pip install -v SRC` with pip's
build isolation as a user runs it; where the package index is out of reach, as inside a test's network
namespace, `pip wheel --no-build-isolation` by this virtualenv instead). Then, from that virtualenv and with no
checkout on sys.path: `stirgate --version` says which hot path it has, the installed extensions are the ones
`make compile` builds, and `stirgate run` carries a SIPp call on the loopback topology. `STIRGATE_PURE=1` builds
a pure wheel that carries the call too (with its warning), and a build without a C compiler falls back to one
and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from bench import wheel
from proxy import compiled
from tests.integration import harness
from tests.integration.conftest import log_problems
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, Sipp, SippResult

VERSION = tomllib.loads((compiled.ROOT / "pyproject.toml").read_text())["project"]["version"]
EXPECTED_EXTENSIONS = {m.removesuffix(".py") for m in compiled.MODULES} | {"proxy/_hotpath__mypyc"}


def extension_names(files: list[str]) -> set[str]:
    """'proxy/sip/message.cpython-311-x86_64-linux-gnu.so' -> 'proxy/sip/message'."""
    return {f.split(".", 1)[0] for f in files if f.endswith(".so")}


@pytest.fixture(scope="session")
def wheel_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheel.source_copy(tmp_path_factory.mktemp("wheel") / "stirgate")


@pytest.fixture(scope="session")
def index_online(wheel_source: Path) -> bool:
    return wheel.index_reachable(src=wheel_source)


def _install(tmp_path_factory: pytest.TempPathFactory, src: Path, online: bool, pure: bool) -> wheel.Install:
    workdir = tmp_path_factory.mktemp("pure-install" if pure else "compiled-install")
    try:
        return wheel.install(workdir, src, pure=pure, isolated=online)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"installing stirgate from a wheel failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def compiled_install(tmp_path_factory: pytest.TempPathFactory, wheel_source: Path, index_online: bool) -> wheel.Install:
    return _install(tmp_path_factory, wheel_source, index_online, pure=False)


@pytest.fixture(scope="session")
def pure_install(tmp_path_factory: pytest.TempPathFactory, wheel_source: Path, index_online: bool) -> wheel.Install:
    return _install(tmp_path_factory, wheel_source, index_online, pure=True)


def installed_files(inst: wheel.Install) -> list[str]:
    site = inst.site_packages()
    return [str(p.relative_to(site)) for pkg in ("proxy", "policies") for p in (site / pkg).rglob("*") if p.is_file()]


def build_lines(inst: wheel.Install) -> list[str]:
    """What the build backend printed on stdout (pip -v shows it)."""
    return [ln.strip() for ln in inst.log.read_text(errors="replace").splitlines() if "stirgate build:" in ln]


def test_wheel_has_the_compiled_hot_path(compiled_install: wheel.Install) -> None:
    lines = build_lines(compiled_install)
    assert any("with the compiled hot path" in ln and "-cp3" in ln for ln in lines), "\n".join(lines)

    r = compiled_install.run("--version")
    assert r.returncode == 0, r.stderr
    first, hot = r.stdout.splitlines()
    site = compiled_install.site_packages()
    assert first.startswith(f"stirgate {VERSION} ") and str(site / "proxy") in first, r.stdout  # the wheel, no checkout
    assert hot == "hot path: compiled (mypyc)", r.stdout

    # The extensions `make compile` builds (proxy/compiled.py MODULES and their shared runtime), and no other.
    files = installed_files(compiled_install)
    assert extension_names(files) == EXPECTED_EXTENSIONS, sorted(files)
    if compiled.extensions():  # this checkout is compiled too: the very same set of extension modules
        in_tree = [str(p.relative_to(compiled.ROOT)) for p in compiled.extensions()]
        assert extension_names(in_tree) == EXPECTED_EXTENSIONS
    note = json.loads((site / compiled.BUILD_INFO).read_text())
    assert note["hot_path"] == "compiled" and note["modules"] == list(compiled.MODULES)
    # ... compiled from the very same C, when this checkout was compiled by the same mypyc (build/ keeps its C).
    in_tree_c = compiled.c_digest(compiled.ROOT / "build")
    if compiled.extensions() and in_tree_c and note["mypy"] == version("mypy"):
        assert note["c_sha256"] == in_tree_c, "the wheel's generated C differs from `make compile`'s (build/)"

    # Imported from the virtualenv, compiled, with nothing of the checkout on sys.path.
    probe = subprocess.run(
        [str(compiled_install.python), "-c",
         "import sys, proxy.engine as e; print(e.__file__); print('\\n'.join(sys.path))"],
        capture_output=True, text=True, timeout=60, cwd=compiled_install.venv, check=True)
    engine_file, *path = probe.stdout.splitlines()
    assert engine_file.startswith(str(site)) and engine_file.endswith(".so"), engine_file
    assert not any(p and Path(p).resolve() == compiled.ROOT for p in path), path


def test_pure_wheel_says_so(pure_install: wheel.Install) -> None:
    lines = build_lines(pure_install)
    assert any("STIRGATE_PURE is set" in ln for ln in lines), "\n".join(lines)
    files = installed_files(pure_install)
    # Not even the compiled modules a `make compile` left in the checkout (they are in the copy built from).
    assert extension_names(files) == set(), sorted(files)
    r = pure_install.run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(
        "hot path: python, not compiled (the wheel was built without it: built with STIRGATE_PURE=1)"), r.stdout


def test_no_compiler_builds_a_pure_wheel_and_says_why(wheel_source: Path, compiled_install: wheel.Install,
                                                      tmp_path: Path) -> None:
    # (after compiled_install: its mypy cache in the copy makes the type check that comes before gcc quick)
    built = wheel.build_wheel(tmp_path / "dist", wheel_source, env={"CC": "/nonexistent/cc"})
    log = (tmp_path / "dist" / "pip.log").read_text(errors="replace")
    assert "the hot path could not be compiled" in log and "/nonexistent/cc" in log, log[-3000:]
    assert built.name.endswith("-py3-none-any.whl"), built.name
    with zipfile.ZipFile(built) as zf:
        assert extension_names(zf.namelist()) == set()
        note = json.loads(zf.read(compiled.BUILD_INFO))
    assert note["hot_path"] == "python" and "/nonexistent/cc" in note["why"], note


# ----------------------------------------------------------------------------------------------- a call through it
def _run_call(tmp_path: Path) -> tuple[SippResult, SippResult]:
    callee = Sipp("uas_basic.xml", CARRIER_IP, tmp_path)
    caller = Sipp("uac_basic.xml", CUSTOMER_IP, tmp_path, remote=(STIRGATE_IP, SIP_PORT))
    with harness.running(callee):
        caller.start()
        caller_result = caller.wait()
        callee_result = callee.wait()
    return caller_result, callee_result


@pytest.fixture(params=["compiled", "pure"])
def installed(request: pytest.FixtureRequest) -> Iterator[tuple[str, wheel.Install]]:
    yield request.param, request.getfixturevalue(f"{request.param}_install")


def test_wheel_installed_stirgate_carries_a_call(installed: tuple[str, wheel.Install], sipp_bin: str,
                                                 tmp_path: Path) -> None:
    kind, inst = installed
    config = harness.make_config(tmp_path / "stirgate.yaml")
    env = wheel._build_env(False)
    sg = harness.Stirgate(config, tmp_path, command=[str(inst.stirgate)], env=env)
    try:
        sg.start()
        caller, callee = _run_call(tmp_path)
    finally:
        rc = sg.stop()
    for r in (caller, callee):
        assert r.returncode == 0 and r.successful == 1, r.summary()
    invite = callee.requests("INVITE")[0]
    assert invite.header("Identity"), callee.summary()  # signed on the way out: the STIR path runs too
    assert rc == 0, sg.log_tail()
    assert log_problems(sg) == []
    events = sg.log_events()
    listening = [e for e in events if e.get("event") == "listening"]
    assert listening and listening[0]["hot_path"] == ("compiled" if kind == "compiled" else "python"), listening
    assert listening[0]["version"] == VERSION
    warned = [e for e in events if e.get("event") == "hot_path_not_compiled"]
    if kind == "compiled":
        assert warned == []
    else:  # a pure install runs, and says once that it is slower
        assert len(warned) == 1 and warned[0]["level"] == "warning" and "twice the CPU" in warned[0]["hot_path"]
    assert sys.executable not in " ".join(sg.command)
