"""The Redis state store against a real redis-server: the same contract scenarios as the in-process store,
one batch for many calls, and what a call sees while Redis is down and after it comes back."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from policies.state import Op, Window
from proxy.config import StateSettings
from proxy.redis_state import RedisState
from tests import state_contract
from tests.services import Redis


class Driver:
    """A RedisState on its own event loop, driven call by call from synchronous test code."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.answers: dict[str, list[Any] | None] = {}
        self.batches = 0
        self.state = self.loop.run_until_complete(self._make(StateSettings(backend="redis", url=url, **settings)))

    async def _make(self, settings: StateSettings) -> RedisState:
        return RedisState(settings, self.answers.__setitem__, self._done)

    def _done(self) -> None:
        self.batches += 1

    def calls(self, batch: Sequence[tuple[str, Sequence[Op], float]]) -> list[list[Any] | None]:
        """Submit several calls at once (as one loop iteration would) and wait for every answer."""

        async def go() -> None:
            for call_id, ops, now in batch:
                self.state.submit(call_id, list(ops), now)
            while not all(call_id in self.answers for call_id, _, _ in batch):
                await asyncio.sleep(0.001)

        self.answers.clear()
        self.loop.run_until_complete(asyncio.wait_for(go(), 5.0))
        return [self.answers[call_id] for call_id, _, _ in batch]

    def staggered(self, batch: Sequence[tuple[str, Sequence[Op], float]]) -> list[list[Any] | None]:
        """Submit the calls one loop iteration apart (as INVITEs arriving one by one), wait for every answer."""

        async def go() -> None:
            for call_id, ops, now in batch:
                self.state.submit(call_id, list(ops), now)
                await asyncio.sleep(0)  # the loop turns: a send due now goes before the next call comes
            while not all(call_id in self.answers for call_id, _, _ in batch):
                await asyncio.sleep(0.001)

        self.answers.clear()
        self.loop.run_until_complete(asyncio.wait_for(go(), 5.0))
        return [self.answers[call_id] for call_id, _, _ in batch]

    def write(self, ops: Sequence[Op], now: float) -> None:
        """An ended call's updates handed over (on the loop, as the transport does); not waited for."""

        async def go() -> None:
            self.state.write(list(ops), now)

        self.loop.run_until_complete(go())

    def wait_for(self, done: Callable[[], bool]) -> None:
        async def go() -> None:
            while not done():
                await asyncio.sleep(0.001)

        self.loop.run_until_complete(asyncio.wait_for(go(), 5.0))

    def until_answered(self, call_id: str, ops: Sequence[Op], now: float) -> list[list[Any] | None]:
        """The call submitted again until Redis answers it (after a failure, Redis is skipped for
        `retry_interval`), at most 200 times; the last answers."""
        got: list[list[Any] | None] = [None]
        for _ in range(200):
            got = self.calls([(call_id, ops, now)])
            if got != [None]:
                break
        return got

    def run(self, ops: Sequence[Op], now: float) -> list[Any]:
        (results,) = self.calls([("call", ops, now)])
        assert results is not None, "Redis did not answer"
        return results

    def close(self) -> None:
        self.loop.run_until_complete(self.state.close())
        self.loop.close()


@pytest.fixture
def driver(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Driver]:
    d = Driver(redis_url, key_prefix=f"test:{request.node.name}:")
    yield d
    d.close()


@pytest.mark.parametrize("scenario", state_contract.SCENARIOS, ids=lambda s: s.__name__)
def test_contract(driver: Driver, scenario: Callable[[state_contract.Run, str], None]) -> None:
    scenario(driver.run, "t")


def test_many_calls_one_batch(driver: Driver) -> None:
    batch = [(f"c{i}", [Window("shared", f"c{i}", 60, 100)], state_contract.T0) for i in range(50)]
    results = driver.calls(batch)
    assert driver.batches == 1  # every call queued in one loop iteration went as one EVALSHA
    assert driver.state.stats["state_batches"] == 1 and driver.state.stats["state_ops"] == 50
    assert sorted(r[0] for r in results if r is not None) == list(range(1, 51))


def test_a_batching_window_gathers_calls_that_arrive_apart(redis_url: str, request: pytest.FixtureRequest) -> None:
    """Calls arriving one loop iteration apart: the first, after a quiet spell, goes at once; the ones that follow
    it within `batch_window_ms` share the next round trip, whenever the first one's reply comes."""
    d = Driver(redis_url, key_prefix=f"test:{request.node.name}:", batch_window_ms=500, timeout_ms=2000)
    try:
        d.write([], state_contract.T0)  # connected, by a batch that is not a call's
        d.wait_for(lambda: d.state.stats["state_batches"] == 1)
        calls = [(f"c{i}", [Window("apart", f"c{i}", 60, 100)], state_contract.T0) for i in range(5)]
        results = d.staggered(calls)
        assert d.state.stats["state_batches"] == 1 + 2
        assert d.batches == 2  # the transport flushed once per batch of calls
        assert [r[0] for r in results if r is not None] == [1, 2, 3, 4, 5]  # in arrival order, every one counted
    finally:
        d.close()


def test_ended_calls_updates_travel_with_the_next_call(driver: Driver) -> None:
    """What an ended call wants recorded is not waited for: it goes with the next call's request (one round trip
    for both), and alone once WRITE_DELAY has passed."""
    driver.write([Window("ended", "w1", 60, 100)], state_contract.T0)
    assert driver.run([Window("ended", "c1", 60, 100)], state_contract.T0) == [2]  # the write came first
    assert driver.state.stats["state_batches"] == 1 and driver.state.stats["state_ops"] == 2
    driver.write([Window("ended", "w2", 60, 100)], state_contract.T0)
    driver.wait_for(lambda: driver.state.stats["state_ops"] == 3)  # sent alone, no call to carry it
    assert driver.run([Window("ended", "c2", 60, 100)], state_contract.T0) == [4]
    assert driver.state.stats["state_batches"] == 3


def test_close_sends_the_updates_queued_behind_a_batch_in_flight(redis_url: str,
                                                                  request: pytest.FixtureRequest) -> None:
    """At shutdown, an ended call's updates that wait behind the batch in flight (they would have gone
    WRITE_DELAY after its reply) still reach Redis before the connection closes."""
    prefix = f"test:{request.node.name}:"
    d = Driver(redis_url, key_prefix=prefix)
    d.write([], state_contract.T0)  # connected, by a batch that is not a call's
    d.wait_for(lambda: d.state.stats["state_batches"] == 1)

    async def in_flight_then_queued() -> None:
        d.state.submit("c1", [Window("closing", "c1", 60, 100)], state_contract.T0)
        await asyncio.sleep(0)  # the call's batch goes
        assert d.state._in_flight is not None
        d.state.write([Window("closing", "w1", 60, 100)], state_contract.T0)  # queued behind it

    d.loop.run_until_complete(in_flight_then_queued())
    d.close()
    assert d.state.stats["state_writes_dropped"] == 0
    after = Driver(redis_url, key_prefix=prefix)
    try:
        assert after.run([Window("closing", "c2", 60, 100)], state_contract.T0) == [3]  # c1 and w1 were counted
    finally:
        after.close()


def test_redis_down_answers_none_at_once_and_recovers(redis_private: Redis) -> None:
    d = Driver(redis_private.url, retry_interval=0.05)
    try:
        assert d.run([Window("k", "a", 60, 5)], state_contract.T0) == [1]
        with redis_private.stopped():
            assert d.calls([("down", [Window("k", "b", 60, 5)], state_contract.T0)]) == [None]
            assert d.state.stats["state_failures"] == 1
        # back on the same port, empty (no persistence): skipped for retry_interval after the failure, then
        # tried again
        assert d.until_answered("back", [Window("k", "c", 60, 5)], state_contract.T0) == [[1]]
    finally:
        d.close()


def test_a_flushed_script_cache_is_sent_again(driver: Driver, redis_url: str) -> None:
    """SCRIPT FLUSH (or a restart behind a proxy that keeps the connection): the batch's EVALSHA is refused
    with NOSCRIPT, the same batch goes again as EVAL, and the call gets its answer, not a failure."""
    assert driver.run([Window("f", "a", 60, 5)], state_contract.T0) == [1]
    with redis_client(redis_url) as admin:
        admin.execute_command("SCRIPT", "FLUSH")
    assert driver.run([Window("f", "b", 60, 5)], state_contract.T0) == [2]
    assert driver.state.stats["state_failures"] == 0


def test_a_redis_that_stops_answering_is_bounded(redis_private: Redis) -> None:
    """CLIENT PAUSE holds every reply: the batch waits at most its reply timeout (5 x timeout_ms, at least
    0.1 s), then the waiting call is answered None and Redis is skipped for retry_interval; once the pause
    ends, calls are answered again."""
    d = Driver(redis_private.url, timeout_ms=20, retry_interval=0.05)
    try:
        assert d.run([Window("p", "a", 60, 5)], state_contract.T0) == [1]
        with redis_client(redis_private.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            assert d.calls([("paused", [Window("p", "b", 60, 5)], state_contract.T0)]) == [None]
            assert d.state.stats["state_failures"] == 1
            admin.execute_command("CLIENT", "UNPAUSE")
        assert d.until_answered("back", [Window("p-after", "c", 60, 5)], state_contract.T0) == [[1]]
    finally:
        d.close()


def test_close_answers_the_calls_it_could_not_send(redis_private: Redis) -> None:
    """Shutdown while Redis holds its replies (CLIENT PAUSE) longer than close waits (1 s): the call in flight and
    the one queued behind it are answered None and counted, and the transport is told (done), as after any
    answer."""
    # reply timeout 5 x 400 ms: beyond close's 1 s; no batching window: a call goes in the next loop turn
    d = Driver(redis_private.url, timeout_ms=400, batch_window_ms=0, retry_interval=0.05)
    try:
        assert d.run([Window("cl", "a", 60, 5)], state_contract.T0) == [1]
        with redis_client(redis_private.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", "2500", "ALL")
            try:
                async def in_flight_then_queued() -> None:
                    d.state.submit("in-flight", [Window("cl", "b", 60, 5)], state_contract.T0)
                    while d.state._in_flight is None:  # its batch goes, and waits for the paused reply
                        await asyncio.sleep(0.001)
                    d.state.submit("queued", [Window("cl", "c", 60, 5)], state_contract.T0)

                d.loop.run_until_complete(asyncio.wait_for(in_flight_then_queued(), 5.0))
                batches = d.batches
                d.loop.run_until_complete(d.state.close())
                assert d.answers.get("queued", "unanswered") is None
                assert d.answers.get("in-flight", "unanswered") is None
                assert d.state.stats["state_failures"] == 2
                assert d.batches > batches
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
    finally:
        d.loop.close()


def test_an_error_reply_fails_the_batch_once(redis_private: Redis) -> None:
    """A Redis demoted to a read-only replica (a failover that left stirgate on the old primary) refuses the
    script with READONLY: the waiting call is answered None at once, the batch counted once as failed, and once
    the node is a primary again calls are answered."""
    d = Driver(redis_private.url, retry_interval=0.05)
    try:
        assert d.run([Window("ro", "a", 60, 5)], state_contract.T0) == [1]
        with redis_client(redis_private.url) as admin:
            admin.execute_command("REPLICAOF", "127.0.0.1", "9")  # nothing there: it stays a read-only replica
            try:
                batches = d.batches
                assert d.calls([("readonly", [Window("ro", "b", 60, 5)], state_contract.T0)]) == [None]
                assert d.state.stats["state_failures"] == 1
                assert d.batches == batches + 1  # the transport flushed once for that batch
            finally:
                admin.execute_command("REPLICAOF", "NO", "ONE")
        assert d.until_answered("primary", [Window("ro-after", "c", 60, 5)], state_contract.T0) == [[1]]
    finally:
        d.close()


@contextmanager
def redis_client(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()


def test_a_refused_reconnect_leaves_no_garbage(redis_private: Redis) -> None:
    """stirgate runs with the automatic cyclic GC off: each failed reconnect while Redis is down must not leave
    its exception chain for the periodic full pass (before: ~21 objects per attempt, one attempt per
    `retry_interval` for as long as Redis stays down)."""
    d = Driver(redis_private.url, retry_interval=1e-6)  # every call below tries to reconnect
    try:
        assert d.run([Window("g", "a", 60, 5)], state_contract.T0) == [1]
        with redis_private.stopped():
            assert d.calls([("first", [Window("g", "b", 60, 5)], state_contract.T0)]) == [None]
            gc.collect()
            gc.disable()
            try:
                for i in range(20):
                    assert d.calls([(f"down-{i}", [Window("g", "b", 60, 5)], state_contract.T0)]) == [None]
                assert gc.collect() == 0
            finally:
                gc.enable()
            assert d.state.stats["state_failures"] == 21
    finally:
        d.close()
