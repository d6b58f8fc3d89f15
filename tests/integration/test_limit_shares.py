"""Trunk limits shared through a real redis-server (proxy.limit_shares): what each process says, what it reads,
and what it keeps while Redis is away. The processes here are LimitShares of their own, each with the gates
of an Admission built from the same config, driven one exchange at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from proxy.config import StateSettings
from proxy.limit_shares import LimitShares, RedisExchange, share_of
from tests.services import Redis
from tests.unit.core.test_limit_shares import customer_gate

PREFIX = "lim-test:"


class Process:
    """One process's exchange on an event loop of its own."""

    def __init__(self, url: str, instance: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.gate = customer_gate()
        self.shares = self.loop.run_until_complete(self._make(url, instance))

    async def _make(self, url: str, instance: str) -> LimitShares:
        settings = StateSettings(backend="redis", url=url, key_prefix=PREFIX)
        return LimitShares(RedisExchange(settings, instance, interval=0.25), lambda: [self.gate], interval=0.25)

    def offer(self, n: int) -> Process:
        self.gate.offered += n
        return self

    def tick(self) -> bool:
        return self.loop.run_until_complete(self.shares.tick())

    def close(self) -> None:
        self.loop.run_until_complete(self.shares.close())
        self.loop.close()


@pytest.fixture
def processes(redis_url: str) -> Iterator[list[Process]]:
    made: list[Process] = []
    yield made
    for p in made:
        p.close()


def test_two_processes_split_the_contract_by_their_offered_load(redis_url: str, processes: list[Process]) -> None:
    a, b = Process(redis_url, "node-a"), Process(redis_url, "node-b")
    processes += [a, b]
    assert a.offer(30).tick() and a.gate.share == 1.0  # alone so far
    assert b.offer(10).tick()
    assert b.gate.share == pytest.approx(share_of(10, 40, 2))
    assert a.offer(30).tick()
    assert a.gate.share == pytest.approx(share_of(30, 40, 2))
    assert a.gate.share + b.gate.share == pytest.approx(1.0)
    assert a.gate.rate == pytest.approx(100 * a.gate.share) and a.gate.max_calls == round(40 * a.gate.share)
    # the load moves to b: the shares follow at the next exchange
    assert b.offer(90).tick() and a.offer(10).tick()
    assert a.gate.share == pytest.approx(share_of(10, 100, 2)) and a.gate.share < 0.15
    # b stops: it takes its field with it, and a holds the whole contract at its next exchange
    processes.remove(b)
    b.close()
    assert a.offer(10).tick() and a.gate.share == 1.0


def test_a_process_not_heard_from_gives_its_share_back(redis_url: str, processes: list[Process]) -> None:
    client = redis.Redis.from_url(redis_url)
    # A node that last said something at the epoch (Redis's clock is far past it), and a field in no known form.
    client.hset(f"{PREFIX}limits:customer", mapping={"gone": "500:0", "garbled": "x"})
    a = Process(redis_url, "node-a")
    processes.append(a)
    assert a.offer(20).tick() and a.gate.share == 1.0
    assert client.hkeys(f"{PREFIX}limits:customer") == [b"node-a"]
    client.close()


def test_without_redis_the_last_shares_stay(redis_private: Redis, processes: list[Process]) -> None:
    a, b = Process(redis_private.url, "node-a"), Process(redis_private.url, "node-b")
    processes += [a, b]
    assert a.offer(50).tick() and b.offer(50).tick() and a.offer(50).tick()
    assert a.gate.share == pytest.approx(0.5)
    redis_private.stop()
    assert not a.offer(50).tick() and a.shares.failing
    assert a.gate.share == pytest.approx(0.5) and a.gate.rate == pytest.approx(50.0)
    redis_private.start()
    assert a.offer(50).tick() and not a.shares.failing
