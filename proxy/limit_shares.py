"""Trunk limits held across workers and nodes: each process enforces its share of a trunk's contract.

Why: behind a dispatcher front that spreads calls by Call-ID, every worker of every node takes part of each
trunk's calls; on one node, SO_REUSEPORT spreads a trunk whose peer has several addresses over the workers. A
contract of 100 calls/s enforced per process would admit 100 per process. So each process says how many
INVITEs each limited trunk offered it over the last interval, reads what the others said, and enforces the
part of the contract that its part of the offered load calls for (`Gate.set_share`): together they hold the
contract, and a process that gets none of a trunk's calls keeps almost none of it. Nothing of this is on a
call's path: the door still decides from local counters, and the shares follow the traffic one interval late.

Where the processes say it (an exchange):
- `RedisExchange` (`state: redis`: every worker of every node): one hash per trunk (`<key_prefix>limits:<trunk>`),
  one field per process (its instance id): its count and when it said so, by Redis's clock (so the nodes'
  clocks do not matter). When Redis cannot be reached the last shares stay.
- `BoardExchange` (`state: memory` with several workers: the workers of this node): a row per worker in a
  shared memory mapping the supervisor makes before it forks them (`ShareBoard`).
A process not heard from for `STALE_INTERVALS` intervals (one that died) holds no share any more; a process
that stops withdraws its own at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from proxy.admission import Gate
from proxy.config import StateSettings
from proxy.tracebacks import forget_frames

__all__ = ["INTERVAL", "SCRIPT", "BoardExchange", "LimitShares", "RedisExchange", "ShareBoard", "board_for",
           "limit_shares", "share_of"]

log = structlog.get_logger("stirgate.state", component="server")

#: Seconds between two exchanges: how late the shares follow a change in where a trunk's calls go.
INTERVAL: Final = 0.5
#: A process not heard from for this many intervals holds no share any more.
STALE_INTERVALS: Final = 4

#: Per trunk: (sum of the fresh counts, how many processes said one), this process's included.
Totals = list[tuple[int, int]]


def share_of(own: int, total: int, processes: int) -> float:
    """This process's part of a trunk's contract: its offered INVITEs over everyone's, each process counted one
    more (so an idle one keeps a sliver, and the shares of the processes still sum to 1)."""
    if processes <= 1:
        return 1.0
    return (own + 1) / (total + processes)


class Exchange(Protocol):
    async def __call__(self, names: Sequence[str], counts: Sequence[int]) -> Totals:
        """Say this process's counts (aligned with names) and answer every trunk's totals; raises when it
        cannot (RedisError, OSError, TimeoutError)."""
        ...

    async def withdraw(self, names: Sequence[str]) -> None:
        """This process says nothing more for these trunks."""
        ...

    async def close(self) -> None: ...


class LimitShares:
    """One process's exchange of its limited trunks' counts: `run()` every `interval` until cancelled (`tick()`
    is one exchange)."""

    def __init__(self, exchange: Exchange, gates: Callable[[], Sequence[Gate]], interval: float = INTERVAL) -> None:
        self.exchange = exchange
        self.gates = gates
        self.interval = interval
        #: Each trunk's `Gate.offered` at the last exchange.
        self._offered: dict[str, int] = {}
        self.failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> bool:
        """One exchange; False when it failed (the shares stay as they were)."""
        gates = [g for g in self.gates() if g.limited]
        if not gates:
            return True
        counts: list[int] = []
        for g in gates:
            counts.append(max(0, g.offered - self._offered.get(g.name, 0)))
            self._offered[g.name] = g.offered  # (an interval that failed is not added to the next one)
        try:
            totals = await asyncio.wait_for(self.exchange([g.name for g in gates], counts), timeout=2 * self.interval)
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
        for g, own, (total, processes) in zip(gates, counts, totals, strict=True):
            g.set_share(share_of(own, total, processes))
        return True

    async def close(self) -> None:
        """Give this process's shares back at once (the others take them at their next exchange), then close."""
        try:
            if self._offered and not self.failing:
                await asyncio.wait_for(self.exchange.withdraw(list(self._offered)), timeout=self.interval)
        except (RedisError, OSError, TimeoutError) as exc:
            forget_frames(exc)  # stale in STALE_INTERVALS anyway
        await self.exchange.close()


# --- Redis: every process of every node --------------------------------------------------------------------------

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


class RedisExchange:
    """Every process of every node, in Redis (one Lua script per exchange)."""

    def __init__(self, settings: StateSettings, instance: str, interval: float = INTERVAL,
                 client: aioredis.Redis | None = None) -> None:
        self.instance = instance
        self.prefix = f"{settings.key_prefix}limits:"
        self.stale_ms = round(interval * STALE_INTERVALS * 1000)
        self.client = client if client is not None else aioredis.Redis.from_url(
            settings.url, socket_timeout=interval, socket_connect_timeout=interval)
        self.script = self.client.register_script(SCRIPT)

    async def __call__(self, names: Sequence[str], counts: Sequence[int]) -> Totals:
        reply: Any = await self.script(keys=[self.prefix + n for n in names],
                                       args=[self.instance, self.stale_ms, *counts])
        return [(int(total), int(processes)) for total, processes in reply]

    async def withdraw(self, names: Sequence[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hdel(self.prefix + name, self.instance)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


# --- shared memory: the workers of one node -----------------------------------------------------------------------

#: A row: a sequence number (odd while its worker writes it), then (trunk id, count, when) per trunk.
_SEQ = struct.Struct("=Q")
_SLOT = struct.Struct("=QQd")


def _trunk_id(name: str) -> int:
    """A trunk's 8-byte id on the board (never 0: 0 marks an empty slot)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


class ShareBoard:
    """A row per worker in one anonymous shared mapping, made by the supervisor before it forks the workers (so
    every worker maps the same memory). A worker writes its own row only; a reader that meets a row being
    written reads it again."""

    def __init__(self, workers: int, max_trunks: int = 256) -> None:
        self.workers = workers
        self.max_trunks = max_trunks
        self.row = _SEQ.size + max_trunks * _SLOT.size
        self.memory = mmap.mmap(-1, workers * self.row)  # MAP_SHARED | MAP_ANONYMOUS: shared with the children

    def write(self, worker: int, slots: Sequence[tuple[int, int, float]]) -> None:
        """Worker `worker`'s row: (trunk id, count, when) per trunk, the rest emptied."""
        base = worker * self.row
        (seq,) = _SEQ.unpack_from(self.memory, base)
        _SEQ.pack_into(self.memory, base, seq + 1)
        for i in range(self.max_trunks):
            _SLOT.pack_into(self.memory, base + _SEQ.size + i * _SLOT.size, *(slots[i] if i < len(slots)
                                                                               else (0, 0, 0.0)))
        _SEQ.pack_into(self.memory, base, seq + 2)

    def read(self, worker: int) -> dict[int, tuple[int, float]]:
        """Worker `worker`'s row: trunk id -> (count, when)."""
        base = worker * self.row
        for _ in range(100):
            (before,) = _SEQ.unpack_from(self.memory, base)
            raw = self.memory[base + _SEQ.size : base + self.row]
            (after,) = _SEQ.unpack_from(self.memory, base)
            if before == after and not before & 1:
                break
        out: dict[int, tuple[int, float]] = {}
        for trunk, count, when in _SLOT.iter_unpack(raw):
            if trunk:
                out[trunk] = (count, when)
        return out


class BoardExchange:
    """The workers of this node, on the supervisor's `ShareBoard`."""

    def __init__(self, board: ShareBoard, worker: int, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.board = board
        self.worker = worker
        self.stale = interval * STALE_INTERVALS
        self.clock = clock

    async def __call__(self, names: Sequence[str], counts: Sequence[int]) -> Totals:
        now = self.clock()  # CLOCK_MONOTONIC: one clock for every process of the host
        ids = [_trunk_id(n) for n in names][: self.board.max_trunks]
        self.board.write(self.worker, [(t, c, now) for t, c in zip(ids, counts, strict=False)])
        totals = [(0, 0)] * len(names)
        for w in range(self.board.workers):
            row = self.board.read(w)
            for i, t in enumerate(ids):
                said = row.get(t)
                if said is not None and now - said[1] <= self.stale:
                    total, processes = totals[i]
                    totals[i] = (total + said[0], processes + 1)
        return [t if t[1] else (0, 1) for t in totals]

    async def withdraw(self, names: Sequence[str]) -> None:
        self.board.write(self.worker, [])

    async def close(self) -> None:
        return None


# --- which exchange a process takes -------------------------------------------------------------------------------

def board_for(settings: StateSettings, workers: int) -> ShareBoard | None:
    """The board the supervisor maps before forking `workers` (None when they do not share through one: one
    worker, Redis state, or `trunk_limits: per_worker`)."""
    if workers > 1 and settings.backend == "memory" and settings.trunk_limits == "shared":
        return ShareBoard(workers)
    return None


def limit_shares(settings: StateSettings, instance: str, worker: int, board: ShareBoard | None,
                 gates: Callable[[], Sequence[Gate]]) -> LimitShares | None:
    """A process's exchange of its trunks' shares: through Redis with Redis state, else through the node's
    board; None when its limits are its own (alone, or `trunk_limits: per_worker`)."""
    if settings.trunk_limits != "shared":
        return None
    if settings.backend == "redis":
        return LimitShares(RedisExchange(settings, instance), gates)
    if board is not None:
        return LimitShares(BoardExchange(board, worker), gates)
    return None
