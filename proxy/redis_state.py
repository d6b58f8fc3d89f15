"""The policies' state in Redis: every node and worker sees one memory (replay, velocity, campaign signals).

Why this shape: a call must never wait on a socket it cannot bound, and a round trip per op would cost more
CPU than the policies themselves. So the engine hands over each waiting call's ops (`submit`) and what ended
calls want recorded (`write`); everything queued while the loop was busy goes to Redis as ONE `EVALSHA` of
one Lua script that runs every op in order and returns every result (one network write and one reply for
many calls). One batch is in flight at a time; the next one collects behind it. A batch that fails, or
Redis being down, answers the waiting calls with None at once (the engine then applies `state.on_error`) and
skips Redis for `retry_interval` before trying again: no restart is needed when it returns.

The script is written for one Redis primary (or Sentinel-managed primary/replica): its keys are not declared
per slot, so it does not run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from policies.state import Claim, Op, Recent, Tally, Window
from proxy.config import StateSettings

__all__ = ["SCRIPT", "RedisState", "encode"]

log = structlog.get_logger("stirgate.state", component="server")

#: Ops are encoded flat in ARGV: `n now_ms` starts a call's ops (time, and resets the "claimed" flag), then
#: `c key value ttl_ms` | `w key member span_ms keep` | `t key span_ms buckets nfields add... add_if_claimed`
#: | `r key member keep ttl_ms`. One result per op, in order.
SCRIPT = """
local out = {}
local now = 0
local claimed = false
local i = 1
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'n' then
    now = tonumber(ARGV[i + 1]); claimed = false; i = i + 2
  elseif op == 'c' then
    local key, value = ARGV[i + 1], ARGV[i + 2]
    if redis.call('SET', key, value, 'NX', 'PX', ARGV[i + 3]) then
      claimed = true; out[#out + 1] = false
    else
      local held = redis.call('GET', key)
      claimed = false
      if held == value then out[#out + 1] = false else out[#out + 1] = held end
    end
    i = i + 4
  elseif op == 'w' then
    local key, member = ARGV[i + 1], ARGV[i + 2]
    local span, keep = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    redis.call('ZADD', key, now, member)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
    local count = redis.call('ZCARD', key)
    if count > keep then
      redis.call('ZREMRANGEBYRANK', key, 0, count - keep - 1); count = keep
    end
    redis.call('PEXPIRE', key, span)
    out[#out + 1] = count
    i = i + 5
  elseif op == 't' then
    local key = ARGV[i + 1]
    local span, buckets, nf = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local width = span / buckets
    local current = math.floor(now / width)
    local bucket = key .. ':' .. current
    local bonus = tonumber(ARGV[i + 5 + nf])
    local wrote = false
    for f = 0, nf - 1 do
      local add = tonumber(ARGV[i + 5 + f])
      if claimed and bonus == f then add = add + 1 end
      if add ~= 0 then redis.call('HINCRBY', bucket, f, add); wrote = true end
    end
    if wrote then redis.call('PEXPIRE', bucket, math.ceil(span + width)) end
    local sums = {}
    for f = 1, nf do sums[f] = 0 end
    local fields = {}
    for f = 0, nf - 1 do fields[f + 1] = f end
    for b = current - buckets + 1, current do
      local got = redis.call('HMGET', key .. ':' .. b, unpack(fields))
      for f = 1, nf do
        if got[f] then sums[f] = sums[f] + tonumber(got[f]) end
      end
    end
    out[#out + 1] = sums
    i = i + 6 + nf
  elseif op == 'r' then
    local key = ARGV[i + 1]
    redis.call('LPUSH', key, ARGV[i + 2])
    redis.call('LTRIM', key, 0, tonumber(ARGV[i + 3]) - 1)
    redis.call('PEXPIRE', key, ARGV[i + 4])
    out[#out + 1] = redis.call('LRANGE', key, 0, -1)
    i = i + 5
  else
    return redis.error_reply('stirgate state script: unknown op ' .. tostring(op))
  end
end
return out
"""


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000.0)))


def encode(ops: list[Op], now: float, prefix: str, args: list[str]) -> None:
    """Append one call's ops to the script's ARGV (keys prefixed)."""
    args += ("n", str(int(now * 1000.0)))
    for op in ops:
        if isinstance(op, Window):
            args += ("w", prefix + op.key, op.member, _ms(op.span), str(op.keep))
        elif isinstance(op, Tally):
            args += ("t", prefix + op.key, _ms(op.span), str(op.buckets), str(len(op.fields)))
            args += [str(a) for a in op.add]
            args.append(str(op.add_if_claimed))
        elif isinstance(op, Claim):
            args += ("c", prefix + op.key, op.value, _ms(op.ttl))
        elif isinstance(op, Recent):
            args += ("r", prefix + op.key, op.member, str(op.keep), _ms(op.ttl))


def _decode(op: Op, raw: Any) -> Any:
    if isinstance(op, Claim):
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else raw
    if isinstance(op, Tally):
        return tuple(int(x) for x in raw)
    if isinstance(op, Recent):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in raw)
    return int(raw)


Answer = Callable[[str, "list[Any] | None"], None]


class RedisState:
    """The engine's asynchronous StateStore. `answer(call_id, results | None)` is called on the loop for each
    waiting call, then `done()` once per batch (the transport sends what the answers produced)."""

    synchronous = False

    def __init__(self, settings: StateSettings, answer: Answer, done: Callable[[], None] = lambda: None, *,
                 client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.answer = answer
        self.done = done
        timeout = settings.timeout_ms / 1000.0
        self.client = client or aioredis.Redis.from_url(
            settings.url, socket_timeout=max(timeout * 5, 0.1), socket_connect_timeout=max(timeout * 5, 0.1),
            retry_on_timeout=False)
        self.prefix = settings.key_prefix
        self._sha: str | None = None
        self._calls: list[tuple[str, list[Op], float]] = []
        self._writes: list[tuple[list[Op], float]] = []
        self._busy = False
        self._down_until = 0.0
        self._task: asyncio.Task[None] | None = None
        #: Counters for /metrics (stirgate_sip_events_total{event="state_..."}).
        self.stats: dict[str, int] = {
            "state_batches": 0, "state_ops": 0, "state_failures": 0, "state_writes_dropped": 0,
        }

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        raise TypeError("RedisState is asynchronous: the engine submits ops and waits for the answer")

    # --- what the transport hands over --------------------------------------------------------------------
    def submit(self, call_id: str, ops: list[Op], now: float) -> None:
        self._calls.append((call_id, ops, now))
        self._kick()

    def write(self, ops: list[Op], now: float) -> None:
        self._writes.append((ops, now))
        self._kick()

    def _kick(self) -> None:
        if not self._busy:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Send what is queued, one batch at a time, until nothing is."""
        try:
            while self._calls or self._writes:
                calls, self._calls = self._calls, []
                writes, self._writes = self._writes, []
                await self._batch(calls, writes)
                if calls:
                    self.done()
        finally:
            self._busy = False

    async def _batch(self, calls: list[tuple[str, list[Op], float]], writes: list[tuple[list[Op], float]]) -> None:
        if time.monotonic() < self._down_until:
            self._fail(calls, writes)
            return
        args: list[str] = []
        for _, ops, now in calls:
            encode(ops, now, self.prefix, args)
        for ops, now in writes:
            encode(ops, now, self.prefix, args)
        try:
            raw = await self._eval(args)
        except (TimeoutError, RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.settings.retry_interval
            log.warning("state_store_error", error=str(exc) or type(exc).__name__,
                        retry_in=self.settings.retry_interval)
            self._fail(calls, writes)
            return
        self.stats["state_batches"] += 1
        i = 0
        for call_id, ops, _ in calls:
            results = [_decode(op, raw[i + j]) for j, op in enumerate(ops)]
            i += len(ops)
            self.stats["state_ops"] += len(ops)
            self.answer(call_id, results)
        self.stats["state_ops"] += sum(len(ops) for ops, _ in writes)

    async def _eval(self, args: list[str]) -> Any:
        if self._sha is None:
            self._sha = await self.client.script_load(SCRIPT)
        try:
            return await self.client.evalsha(self._sha, 0, *args)
        except NoScriptError:  # Redis restarted and lost its script cache
            self._sha = await self.client.script_load(SCRIPT)
            return await self.client.evalsha(self._sha, 0, *args)

    def _fail(self, calls: list[tuple[str, list[Op], float]], writes: list[tuple[list[Op], float]]) -> None:
        self.stats["state_failures"] += len(calls)
        self.stats["state_writes_dropped"] += len(writes)
        for call_id, _, _ in calls:
            self.answer(call_id, None)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, timeout=1.0)
            except (TimeoutError, RedisError, OSError):
                pass
        await self.client.aclose()
