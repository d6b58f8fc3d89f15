"""tests/services.py itself: the servers start, answer, stop and come back, and fixtures isolate tests."""

from __future__ import annotations

import socket

import pytest

from tests.services import Postgres, Redis


def test_pg_dsn_is_a_fresh_database(pg_server: Postgres, pg_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE t (x int)")
    assert pg_server.running and pg_dsn.startswith(f"postgresql://stirgate@127.0.0.1:{pg_server.port}/")


def test_pg_private_stops_crashes_and_keeps_what_was_committed(pg_private: Postgres) -> None:
    pg_private.execute("CREATE TABLE t (x int)")
    pg_private.execute("INSERT INTO t VALUES (1)")
    with pg_private.stopped(crash=True):
        assert not pg_private.running
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", pg_private.port), timeout=1):
            pass
    assert pg_private.execute("SELECT x FROM t") == [(1,)]  # crash recovery kept the commit


def test_redis_url_is_flushed_and_redis_private_restarts(redis_url: str, redis_server: Redis,
                                                         redis_private: Redis) -> None:  # fmt: skip
    assert redis_url == redis_server.url
    assert redis_server.command("SET", "k", "v") == b"+OK\r\n"
    assert redis_server.command("DBSIZE") == b":1\r\n"
    with redis_private.stopped():
        assert not redis_private.running
    assert redis_private.command("PING") == b"+PONG\r\n"
