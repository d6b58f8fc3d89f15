"""Session-wide checks: the code under test is the code in the tree (compiled or not, never stale)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from proxy import compiled

# Real PostgreSQL and Redis servers for any test that asks (tests/services.py says how to use them).
from tests.services import pg_dsn, pg_private, pg_server, redis_private, redis_server, redis_url  # noqa: F401


def pytest_configure() -> None:
    compiled.check()  # an extension older than its source would test old code
    if os.environ.get("STIRGATE_EXPECT_PURE") and compiled.is_compiled():
        raise SystemExit("STIRGATE_EXPECT_PURE is set but the compiled engine was imported")


@pytest.fixture
def json_logging() -> Iterator[None]:
    """Logging as `stirgate run` sets it up at level info (JSON lines on stderr, the standard library's records
    too), undone after the test. (Imported here: the session's check of the compiled modules comes first.)"""
    import structlog

    from proxy import logbridge
    from proxy.server import configure_logging

    configure_logging("info")
    yield
    structlog.reset_defaults()
    logbridge.uninstall()


def pytest_report_header() -> str:
    where = compiled.ROOT
    return f"stirgate: {'mypyc-compiled' if compiled.is_compiled() else 'pure Python'} hot path ({where})"
