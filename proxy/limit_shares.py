"""Trunk limits held across workers and nodes: each process enforces its share of a trunk's contract.

Why: behind a dispatcher front that spreads calls by Call-ID, every worker of every node takes part of each
trunk's calls. A contract of 100 calls/s enforced per process would admit 100 per process, N times the
contract. So each process says in Redis how many INVITEs each limited trunk offered it over the last
interval, reads what the others said, and enforces the part of the contract that its part of the offered
load calls for (`Gate.set_share`): together they hold the contract, and a process the front sends nothing
keeps almost none of it. Nothing of this is on a call's path: the door still decides from local counters, and
the shares follow the traffic one interval late. When Redis cannot be reached the last shares stay.

One hash per trunk (`<key_prefix>limits:<trunk>`), one field per process (its instance id): the INVITEs it
was offered in its last interval and when it said so (Redis's clock, so the nodes' clocks do not matter). A
field not refreshed for `STALE_INTERVALS` intervals (a process that died) is dropped, and its share goes to
the others; a process that stops removes its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from proxy.admission import Gate
from proxy.config import StateSettings
from proxy.tracebacks import forget_frames

__all__ = ["INTERVAL", "SCRIPT", "LimitShares", "share_of"]

log = structlog.get_logger("stirgate.state", component="server")

#: Seconds between two exchanges: how late the shares follow a change in where a trunk's calls go.
INTERVAL: Final = 0.5
#: A process not heard from for this many intervals holds no share any more.
STALE_INTERVALS: Final = 4

#: KEYS: one hash per limited trunk. ARGV: the process's field, how old (ms) a field may be, then one count
#: per key. Per key: {sum of the fresh counts, how many fresh fields}, this process's included.
SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, stale = ARGV[1], tonumber(ARGV[2])
local out = {}
for k = 1, #KEYS do
  redis.call('HSET', KEYS[k], me, ARGV[k + 2] .. ':' .. now)
  redis.call('PEXPIRE', KEYS[k], stale * 2)
  local all = redis.call('HGETALL', KEYS[k])
  local total, fresh = 0, 0
  for i = 1, #all, 2 do
    local count, at = string.match(all[i + 1], '^(%d+):(%d+)$')
    if count == nil or now - tonumber(at) > stale then
      redis.call('HDEL', KEYS[k], all[i])
    else
      total = total + tonumber(count)
      fresh = fresh + 1
    end
  end
  out[k] = {total, fresh}
end
return out
"""


def share_of(own: int, total: int, processes: int) -> float:
    """This process's part of a trunk's contract: its offered INVITEs over everyone's, each process counted one
    more (so an idle one keeps a sliver, and the shares of the processes still sum to 1)."""
    if processes <= 1:
        return 1.0
    return (own + 1) / (total + processes)


class LimitShares:
    """The exchange of one process: `run()` every `interval` until cancelled (`tick()` is one exchange)."""

    def __init__(self, settings: StateSettings, instance: str, gates: Callable[[], Sequence[Gate]],
                 interval: float = INTERVAL, client: aioredis.Redis | None = None) -> None:
        self.instance = instance
        self.gates = gates
        self.interval = interval
        self.prefix = f"{settings.key_prefix}limits:"
        self.client = client if client is not None else aioredis.Redis.from_url(
            settings.url, socket_timeout=interval, socket_connect_timeout=interval)
        self.script = self.client.register_script(SCRIPT)
        #: Each trunk's `Gate.offered` at the last exchange.
        self._offered: dict[str, int] = {}
        self.failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> bool:
        """One exchange; False when Redis did not answer (the shares stay as they were)."""
        gates = [g for g in self.gates() if g.limited]
        if not gates:
            return True
        counts: list[int] = []
        for g in gates:
            counts.append(max(0, g.offered - self._offered.get(g.name, 0)))
            self._offered[g.name] = g.offered  # (an interval Redis missed is not added to the next one)
        stale = round(self.interval * STALE_INTERVALS * 1000)
        try:
            reply: Any = await asyncio.wait_for(
                self.script(keys=[self.prefix + g.name for g in gates],
                            args=[self.instance, stale, *counts]),
                timeout=self.interval * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self.failing:
                log.warning("limit_shares_unavailable", error=str(exc) or type(exc).__name__,
                            note="trunk limits stay at their last shares")
                self.failing = True
            forget_frames(exc)  # (a cycle for the GC pass per interval while Redis is down)
            return False
        if self.failing:
            log.info("limit_shares_restored")
            self.failing = False
        for g, own, (total, processes) in zip(gates, counts, reply, strict=True):
            g.set_share(share_of(own, int(total), int(processes)))
        return True

    async def close(self) -> None:
        """Give this process's shares back at once (the others take them at their next exchange), then close."""
        said = [self.prefix + name for name in self._offered]
        try:
            if said and not self.failing:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in said:
                        pipe.hdel(key, self.instance)
                    await asyncio.wait_for(pipe.execute(), timeout=self.interval)
        except (RedisError, OSError, TimeoutError) as exc:
            forget_frames(exc)  # stale in STALE_INTERVALS anyway
        await self.client.aclose()
