"""Real PostgreSQL and Redis servers for the tests (and the benchmarks), on loopback ports of their own.

Why real servers: the records backend and the shared state are only as good as what they do against the real
thing (COPY, partitions, reconnects after a restart, Lua scripts). Each server here is started from the Debian
binaries into a temporary folder, listens on 127.0.0.1 and a free port (PostgreSQL also on a Unix socket in
that folder), and is stopped and deleted at the end. Nothing is installed or configured system-wide.

- `Postgres`: `initdb` into a temporary folder, then `postgres` on 127.0.0.1:PORT (trust authentication for
  the superuser role `stirgate`). As root it runs as the `postgres` user (or `nobody`): PostgreSQL refuses root.
- `Redis`: `redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no`.
- Both: `start()`, `stop()` (clean), `kill()` (a crash: SIGKILL / immediate shutdown), `restart()`,
  `stopped()` (a context manager: down inside the block, up again after it), `running`.

Fixtures (imported by tests/conftest.py, so every test can ask for them):
- `pg_server` (session): one PostgreSQL for the whole run; `pg_dsn` (function): a fresh database in it, dropped
  afterwards; `pg_private` (function): a PostgreSQL of the test's own, for tests that stop or kill it.
- `redis_server` (session); `redis_url` (function): the session server, flushed first; `redis_private`
  (function): a Redis of the test's own.
A missing binary skips the test saying which Debian package `make test` installs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import pytest

__all__ = [
    "Postgres",
    "Redis",
    "end_process",
    "free_tcp_port",
    "log_tail",
    "pg_bin",
    "pg_dsn",
    "pg_private",
    "pg_server",
    "redis_private",
    "redis_server",
    "redis_url",
]

HOST = "127.0.0.1"
READY_SECONDS = 30.0
STOP_SECONDS = 30.0


def free_tcp_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the kernel's pick; a race with another process stays possible, and
    `start()` retries on a port taken in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def end_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                seconds: float = STOP_SECONDS) -> int | None:
    """Stop a server started in a session of its own: `sig`, then SIGKILL to its whole process group after
    `seconds`. Its exit code (None: never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a server's log."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait(predicate: Any, what: str, seconds: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- PostgreSQL
def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


#: Test defaults: no fsync (a test server's data dies with the test; only a power cut would lose more), small
#: memory. synchronous_commit stays on: a commit is in the OS before it is acknowledged, so `kill()` (a crash of
#: the server process) loses nothing committed, as in production.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_connections": "50",
}


class _Server:
    """What the two servers share: one process in a session of its own (so a signal reaches its children),
    started and waited for, stopped by a signal, a log in its temporary folder. A subclass says how to launch
    it (`_launch`), when it is ready (`_ready`) and which signals stop and kill it."""

    name = "server"
    stop_signal = signal.SIGTERM
    kill_signal = signal.SIGKILL
    root: Path
    log_path: Path
    port: int

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        """Start and wait until it answers (bounded). Idempotent."""
        if self.running:
            return self
        self.proc = self._launch()
        try:
            _wait(self._checked_ready, f"{self.name} on {HOST}:{self.port}", READY_SECONDS)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}") from None
        return self

    def _checked_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self._ready()

    def stop(self) -> None:
        end_process(self.proc, self.stop_signal)

    def kill(self) -> None:
        end_process(self.proc, self.kill_signal)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def stopped(self, *, crash: bool = False) -> Iterator[None]:
        """Down inside the block (`stop`, or `kill` with crash=True), started again after it."""
        self.kill() if crash else self.stop()
        try:
            yield
        finally:
            self.start()

    def cleanup(self) -> None:
        """Stop and delete the folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class Postgres(_Server):
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:`port` and a socket in `socket_dir`.

    `settings` are passed as `-c name=value` (FAST_SETTINGS by default; the benchmark passes durable ones).
    `dsn(db)` is a libpq URI for the superuser role `user` (trust authentication on loopback only).
    """

    def __init__(self, settings: Mapping[str, str] | None = None, *, user: str = "stirgate",
                 port: int | None = None) -> None:
        postgres, initdb = pg_bin("postgres"), pg_bin("initdb")
        if postgres is None or initdb is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (Debian package postgresql)")
        self.postgres_bin = postgres
        self.initdb_bin = initdb
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self.user = user
        self.port = port or free_tcp_port()
        self.run_as = _server_user()
        # Not under pytest's tmp_path: that is private to root (0700), and the server may run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="stirgate-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        super().__init__()
        self._initdb()

    # --- set-up --------------------------------------------------------------------------------------------
    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            pw = pwd.getpwnam(self.run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _initdb(self) -> None:
        for d in (self.root, self.socket_dir):
            d.mkdir(exist_ok=True)
            self._chown(d)
        log = self.root / "initdb.log"
        with log.open("wb") as out:
            rc = subprocess.run(
                [self.initdb_bin, "-D", str(self.data), "-U", self.user, "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "--no-sync"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, user=self.run_as, timeout=120,
                cwd=self.root,
            ).returncode  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"initdb failed ({rc}):\n{log.read_text(errors='replace')[-3000:]}")

    # --- life cycle -----------------------------------------------------------------------------------------
    # stop(): fast shutdown (SIGINT), clients are disconnected, everything committed stays. kill(): immediate
    # shutdown (SIGQUIT), the postmaster and its children exit at once, as in a crash; the next start runs crash
    # recovery.
    name = "PostgreSQL"
    stop_signal = signal.SIGINT
    kill_signal = signal.SIGQUIT

    def _launch(self) -> subprocess.Popen[bytes]:
        args = [self.postgres_bin, "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir),
                "-c", f"listen_addresses={HOST}"]  # fmt: skip
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    user=self.run_as, cwd=self.root, start_new_session=True)  # fmt: skip

    def _ready(self) -> bool:
        try:
            with self.connect(connect_timeout=2):
                return True
        except Exception:  # any failure to connect means "not yet"
            return False

    # --- clients --------------------------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kw: Any) -> Any:
        """A psycopg connection (autocommit) as the superuser."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=True, **kw)

    def execute(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for statements that return none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')



# ----------------------------------------------------------------------------------------------- Redis
class Redis(_Server):
    """redis-server on 127.0.0.1:`port`, no persistence, working folder in a temporary directory. stop():
    SIGTERM, a clean exit (no data kept: --save ''); kill(): SIGKILL."""

    name = "redis-server"

    def __init__(self, *, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found (Debian package redis-server)")
        self.binary = binary
        self.port = port or free_tcp_port()
        self.extra = extra
        self.root = Path(tempfile.mkdtemp(prefix="stirgate-redis-"))
        self.log_path = self.root / "redis.log"
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def url_for(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def _launch(self) -> subprocess.Popen[bytes]:
        args = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(self.root), "--daemonize", "no", "--logfile", str(self.log_path), *self.extra]
        # A session of its own, like PostgreSQL: a Ctrl-C meant for the demo that started it (make cluster)
        # must not stop it before the nodes that use it.
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)  # fmt: skip

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """One command over a fresh connection (RESP, no client library); the raw reply."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(payload)
            return s.recv(65536)

    def _ready(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL: {reply!r}")


# ----------------------------------------------------------------------------------------------- fixtures
def _start_or_skip(make: Any) -> Any:
    try:
        return make().start()
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; `make test` installs it")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    """One PostgreSQL for the whole session. Tests that stop it must use `pg_private` instead."""
    server = _start_or_skip(Postgres)
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: Postgres) -> Iterator[str]:
    """A fresh, empty database in the session's PostgreSQL (dropped afterwards): its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    yield dsn
    if pg_server.running:
        pg_server.drop_database(name)


@pytest.fixture
def pg_private() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own (a few seconds to initdb): stop, kill and restart it at will."""
    server = _start_or_skip(Postgres)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """One Redis for the whole session. Tests that stop it must use `redis_private` instead."""
    server = _start_or_skip(Redis)
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: Redis) -> str:
    """The session's Redis, flushed before the test: its URL (db 0)."""
    redis_server.start()  # in case a test stopped it against the advice above
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def redis_private() -> Iterator[Redis]:
    """A Redis of this test's own: stop, kill and restart it at will."""
    server = _start_or_skip(Redis)
    yield server
    server.cleanup()
