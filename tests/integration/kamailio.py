"""A Kamailio for tests: a config template rendered into the test's folder, its own address, started and
stopped by the test (by PID), ready once it holds its UDP socket and answers an OPTIONS. `kamailio_command` and
`launch` are how every Kamailio of the tests is started (the cluster's front, tests/integration/cluster.py, too).

    with Kamailio(TEMPLATE, tmp_path, listen=("127.0.0.1", 5070), values={"NEXTHOP": "sip:127.0.0.20:5060"}) as k:
        ...  # SIPp -> k.listen -> ...

Templates use `@NAME@` placeholders; `@LISTEN@` (udp:HOST:PORT), `@MPATH@` (the module folder) and `@CTL@` (a
control socket in the folder) are always filled in. `defines` become `-A NAME` (tested with `#!ifdef`).
A template that lacks an OPTIONS answer for itself must pass `probe=False` (readiness is then the bound socket).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.integration import harness
from tests.services import end_process, log_tail

MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules",
               "/usr/lib64/kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules")


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin"))


def module_dir(*needed: str) -> str | None:
    """The first module folder holding every module in `needed` (e.g. "http_client.so")."""
    for d in MODULE_DIRS:
        if all((Path(d) / m).exists() for m in needed or ("tm.so",)):
            return d
    return None


def kamailio_command(config: Path, *, shm_mb: int = 64, pkg_mb: int = 8, defines: Sequence[str] = (),
                     extra: Sequence[str] = ()) -> list[str]:
    """Kamailio in the foreground, logging to stderr (`-DD -E`), on `config`; each of `defines` as `-A`."""
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError("kamailio not found (Debian package kamailio)")
    cmd = [binary, "-DD", "-E", "-m", str(shm_mb), "-M", str(pkg_mb), "-f", str(config), *extra]
    for d in defines:
        cmd += ["-A", d]
    return cmd


def launch(command: Sequence[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Started in a session of its own (so stopped by its PID alone), its output into `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


class Kamailio:
    def __init__(self, template: str | Path, workdir: Path, *, listen: tuple[str, int],
                 values: dict[str, str] | None = None, defines: tuple[str, ...] = (), name: str = "kamailio",
                 probe: bool = True, modules: tuple[str, ...] = ()) -> None:
        self.template = Path(template).read_text() if isinstance(template, Path) else template
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.listen = listen
        self.values = dict(values or {})
        self.defines = defines
        self.probe = probe
        self.modules = modules
        self.config = self.dir / "kamailio.cfg"
        self.log_path = self.dir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def render(self) -> str:
        mpath = module_dir(*self.modules)
        if mpath is None:
            raise RuntimeError(f"no Kamailio module folder with {self.modules} (apt-get install kamailio ...)")
        text = self.template
        values = {"LISTEN": f"udp:{self.listen[0]}:{self.listen[1]}", "MPATH": mpath,
                  "CTL": str(self.dir / "ctl.sock"), **self.values}
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        leftover = re.findall(r"@[A-Z][A-Z0-9_]*@", text)
        if leftover:
            raise ValueError(f"unfilled placeholders in the Kamailio template: {leftover}")
        return text

    def command(self) -> list[str]:
        return kamailio_command(self.config, defines=self.defines)

    def check(self) -> subprocess.CompletedProcess[str]:
        """`kamailio -c`: the rendered config parses and its modules load."""
        self.config.write_text(self.render())
        return subprocess.run([*self.command(), "-c"], capture_output=True, text=True, timeout=30)

    def start(self) -> Kamailio:
        self.config.write_text(self.render())
        harness.wait_port_free(self.listen[0], self.listen[1], "udp")
        self.proc = proc = launch(self.command(), self.dir, self.log_path)

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            if not harness.owns_socket(proc.pid, self.listen[0], self.listen[1], "udp"):
                return False
            return not self.probe or harness.send_options(self.listen, src_ip=self.listen[0]) is not None

        try:
            harness.wait_until(ready, f"kamailio on {self.listen}", attempts=500)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"kamailio not ready on {self.listen}:\n{self.log_tail()}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited {proc.returncode} at start:\n{self.log_tail()}")
        return self

    def stop(self, grace: float = 10.0) -> int | None:
        return end_process(self.proc, seconds=grace)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
