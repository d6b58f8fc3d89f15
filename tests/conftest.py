"""Session-wide checks: the code under test is the code in the tree (compiled or not, never stale)."""

from __future__ import annotations

import os

from proxy import compiled

# Real PostgreSQL and Redis servers for any test that asks (tests/services.py says how to use them).
from tests.services import pg_dsn, pg_private, pg_server, redis_private, redis_server, redis_url  # noqa: F401


def pytest_configure() -> None:
    compiled.check()  # an extension older than its source would test old code
    if os.environ.get("STIRGATE_EXPECT_PURE") and compiled.is_compiled():
        raise SystemExit("STIRGATE_EXPECT_PURE is set but the compiled engine was imported")


def pytest_report_header() -> str:
    where = compiled.ROOT
    return f"stirgate: {'mypyc-compiled' if compiled.is_compiled() else 'pure Python'} hot path ({where})"
