"""The policies' state in Redis: every node and worker sees one memory (replay, velocity, campaign signals).

Why this shape: a call must never wait on a socket it cannot bound, and a round trip per op would cost more
CPU than the policies themselves. So the engine hands over each waiting call's ops (`submit`) and what ended
calls want recorded (`write`); everything queued while the loop was busy goes to Redis as ONE `EVALSHA` of
one Lua script that runs every op in order and returns every result (one network write and one reply for
many calls). One batch is in flight at a time; the next one collects behind it. When calls come faster than
one per `batch_window_ms`, a call's request also waits up to that long for others to share its round trip: at
1000 calls/s each INVITE otherwise arrives alone, and a round trip's cost is mostly the loop waking up twice
(measured: +73 us per call without a window, +19 to +25 us with 5 ms). A call after a quiet spell goes at
once. Ended calls' updates wait for the next request, at most `WRITE_DELAY`: nothing waits on them. A batch
that fails, or Redis being down, answers the waiting calls with None at once (the engine then applies
`state.on_error`) and skips Redis for `retry_interval` before trying again: no restart is needed when it
returns.

The script is written for one Redis primary (or Sentinel-managed primary/replica): its keys are not declared
per slot, so it does not run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import hiredis
import structlog
from redis.connection import parse_url

from policies.state import Claim, Group, Op, Part, Recent, Tally, Window
from proxy.config import StateSettings
from proxy.tracebacks import forget_frames

__all__ = ["SCRIPT", "RedisState", "command", "decode", "encode", "width"]

log = structlog.get_logger("stirgate.state", component="server")

#: Seconds an ended call's updates may wait for a call's request to travel with (then they go alone).
WRITE_DELAY: Final = 0.05
#: A batching window never holds more calls than this: a full batch goes at once.
BATCH_MAX: Final = 256

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


def encode(ops: Sequence[Op], now: float, prefix: str, args: list[str]) -> None:
    """Append one call's ops to the script's ARGV (keys prefixed). A Group's ops go one by one: Redis keeps
    every key apart."""
    args += ("n", str(int(now * 1000.0)))
    _encode(ops, prefix, args)


def _encode(ops: Sequence[Op], prefix: str, args: list[str]) -> None:
    for op in ops:
        if isinstance(op, Group):
            _encode(op.ops, prefix, args)
        elif isinstance(op, Window):
            args += ("w", prefix + op.key, op.member, _ms(op.span), str(op.keep))
        elif isinstance(op, Tally):
            args += ("t", prefix + op.key, _ms(op.span), str(op.buckets), str(len(op.fields)))
            args += [str(a) for a in op.add]
            args.append(str(op.add_if_claimed))
        elif isinstance(op, Claim):
            args += ("c", prefix + op.key, op.value, _ms(op.ttl))
        elif isinstance(op, Recent):
            args += ("r", prefix + op.key, op.member, str(op.keep), _ms(op.ttl))


def width(ops: Sequence[Op]) -> int:
    """How many results the script returns for `ops` (one per op, a Group's ops counted one by one)."""
    return sum(len(op.ops) if isinstance(op, Group) else 1 for op in ops)


def decode(ops: Sequence[Op], reply: Sequence[Any], start: int) -> list[Any]:
    """The results of `ops` from the script's flat reply, from index `start` (a Group's as one list)."""
    out: list[Any] = []
    i = start
    for op in ops:
        if isinstance(op, Group):
            out.append([_decode(part, reply[i + j]) for j, part in enumerate(op.ops)])
            i += len(op.ops)
        else:
            out.append(_decode(op, reply[i]))
            i += 1
    return out


def _decode(op: Part, raw: Any) -> Any:
    if isinstance(op, Claim):
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else raw
    if isinstance(op, Tally):
        return tuple(int(x) for x in raw)
    if isinstance(op, Recent):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in raw)
    return int(raw)


Answer = Callable[[str, "list[Any] | None"], None]
#: One batch on the wire: the calls waiting for it and the ended calls' writes it carries.
Batch = tuple[list[tuple[str, list[Op], float]], list[tuple[list[Op], float]]]


def command(*args: str) -> bytes:
    """One Redis command in RESP (an array of bulk strings), built as one str and encoded once."""
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        n = len(a) if a.isascii() else len(a.encode())
        parts.append(f"${n}\r\n{a}\r\n")
    return "".join(parts).encode()


class _Connection(asyncio.Protocol):
    """One connection to Redis: commands written as they come, replies (parsed by hiredis) handed back in order.

    Why not redis-py's asyncio client: measured on this machine, an EVALSHA round trip through it costs 86.7 us
    of CPU against 18.2 us written to the socket and parsed by hiredis directly (`bench --mode state`: Redis
    added +80..+168 us per call through it). redis-py still parses the URL."""

    def __init__(self, on_reply: Callable[[Any], None], on_lost: Callable[[str], None]) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                self.on_reply(reply)
        except hiredis.ProtocolError as exc:
            self.close()
            self.on_lost(f"protocol error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport = None
            self.on_lost(str(exc) if exc else "connection closed by Redis")

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        t, self.transport = self.transport, None
        if t is not None:
            t.close()


class RedisState:
    """The engine's asynchronous StateStore. `answer(call_id, results | None)` is called on the loop for each
    waiting call, then `done()` once per batch (the transport sends what the answers produced)."""

    synchronous = False

    def __init__(self, settings: StateSettings, answer: Answer, done: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.answer = answer
        self.done = done
        #: How long a batch may wait for its reply before Redis counts as down (the engine's own wait per call
        #: is `timeout_ms`; this only bounds the connection).
        self.reply_timeout = max(settings.timeout_ms / 1000.0 * 5, 0.1)
        self.url: dict[str, Any] = parse_url(settings.url)  # type: ignore[no-untyped-call]
        self.prefix = settings.key_prefix
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
        self._calls: list[tuple[str, list[Op], float]] = []
        self._writes: list[tuple[list[Op], float]] = []
        #: Replies expected, in order: None for a set-up command (AUTH, SELECT), else the batch it answers.
        self._pending: list[Batch | None] = []
        self._in_flight: Batch | None = None
        self.window = settings.batch_window_ms / 1000.0
        self._last_submit = float("-inf")
        #: Loop time by which the queued calls' batch goes (the first one's arrival, plus the window when busy).
        self._calls_due = 0.0
        #: The pending `_send` (call_soon / call_later) and the loop time it is due.
        self._send_handle: asyncio.Handle | None = None
        self._send_at = 0.0
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._down_until = 0.0
        #: Counters for /metrics (stirgate_sip_events_total{event="state_..."}).
        self.stats: dict[str, int] = {
            "state_batches": 0, "state_ops": 0, "state_failures": 0, "state_writes_dropped": 0,
        }

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        raise TypeError("RedisState is asynchronous: the engine submits ops and waits for the answer")

    def record(self, ops: Sequence[Op], now: float) -> None:
        raise TypeError("RedisState is asynchronous: the engine hands it writes (`write`)")

    # --- what the transport hands over --------------------------------------------------------------------
    def submit(self, call_id: str, ops: list[Op], now: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time()
        busy = at - self._last_submit < self.window  # calls are coming: others will share the round trip
        self._last_submit = at
        if not self._calls:
            self._calls_due = at + self.window if busy else at
        self._calls.append((call_id, ops, now))
        if len(self._calls) >= BATCH_MAX:
            self._calls_due = at
        self._kick(self._calls_due)

    def write(self, ops: list[Op], now: float) -> None:
        self._writes.append((ops, now))
        self._kick(asyncio.get_running_loop().time() + WRITE_DELAY)

    def _kick(self, due: float) -> None:
        """Send at loop time `due` (now or past: at the end of this loop iteration, so that what it queued goes as
        one batch), unless a send is due sooner or a batch is in flight (its reply sends the next)."""
        if self._in_flight is not None:
            return
        if self._send_handle is not None:
            if self._send_at <= due:
                return
            self._send_handle.cancel()
        loop = asyncio.get_running_loop()
        self._send_at = due
        delay = due - loop.time()
        self._send_handle = loop.call_later(delay, self._send) if delay > 0 else loop.call_soon(self._send)

    # --- one batch in flight at a time; the next one collects behind it ------------------------------------
    def _send(self) -> None:
        if self._send_handle is not None:
            self._send_handle.cancel()  # when called directly (connected, a reply came)
            self._send_handle = None
        if self._in_flight is not None or not (self._calls or self._writes):
            return
        if time.monotonic() < self._down_until:
            if self._fail_waiting():
                self.done()
            return
        if self._conn is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        batch: Batch = (self._calls, self._writes)
        self._calls, self._writes = [], []
        self._in_flight = batch
        self._pending.append(batch)
        self._conn.send(command("EVALSHA", self._sha, "0", *self._args(batch)))
        self._deadline = asyncio.get_running_loop().call_later(self.reply_timeout, self._timed_out)

    def _args(self, batch: Batch) -> list[str]:
        """The script's ARGV for a batch: the writes (of calls that ended before these arrived), then the waiting
        calls' ops."""
        args: list[str] = []
        for ops, now in batch[1]:
            encode(ops, now, self.prefix, args)
        for _, ops, now in batch[0]:
            encode(ops, now, self.prefix, args)
        return args

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        url = self.url
        try:
            if "path" in url:  # unix://
                made = loop.create_unix_connection(lambda: _Connection(self._on_reply, self._lost), url["path"])
            else:
                tls = ssl.create_default_context() if self.settings.url.startswith("rediss://") else None
                made = loop.create_connection(lambda: _Connection(self._on_reply, self._lost),
                                              url.get("host", "localhost"), int(url.get("port", 6379)), ssl=tls)
            _, conn = await asyncio.wait_for(made, timeout=self.reply_timeout)
        except (TimeoutError, OSError) as exc:
            self._connecting = None
            self._down(str(exc) or type(exc).__name__)
            forget_frames(exc)  # a cycle for the GC pass otherwise, once per retry while Redis is down
            return
        self._connecting = None
        self._conn = conn
        password = self.url.get("password")
        if password:
            username = self.url.get("username")
            conn.send(command("AUTH", username, password) if username else command("AUTH", password))
            self._pending.append(None)
        db = int(self.url.get("db", 0) or 0)
        if db:
            conn.send(command("SELECT", str(db)))
            self._pending.append(None)
        self._send()

    def _on_reply(self, reply: Any) -> None:
        if not self._pending:
            return
        batch = self._pending.pop(0)
        if batch is None:  # AUTH / SELECT
            if isinstance(reply, hiredis.ReplyError):
                self._down(f"set-up refused: {reply}")
            return
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis lost its script cache (SCRIPT FLUSH, or a restart behind a proxy): EVAL sends it again and
            # caches it; the batch is the same.
            self._pending.insert(0, batch)
            if self._conn is not None:
                self._conn.send(command("EVAL", SCRIPT, "0", *self._args(batch)))
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._in_flight = None
        calls, writes = batch
        if isinstance(reply, hiredis.ReplyError):
            self._down(str(reply), batch)  # answers the batch's calls (None) and calls done()
            return
        self.stats["state_batches"] += 1
        i = sum(width(ops) for ops, _ in writes)  # their results come first, unread
        self.stats["state_ops"] += i
        for call_id, ops, _ in calls:
            n = width(ops)
            results = decode(ops, reply, i)
            i += n
            self.stats["state_ops"] += n
            self.answer(call_id, results)
        if calls:
            self.done()
        if self._calls:  # their window may have passed while this batch was out: then they go now
            self._kick(self._calls_due)
        elif self._writes:
            self._kick(asyncio.get_running_loop().time() + WRITE_DELAY)

    def _timed_out(self) -> None:
        self._deadline = None
        self._down(f"no reply within {self.reply_timeout:g} s")

    def _lost(self, why: str) -> None:
        self._conn = None
        if self._pending or self._in_flight is not None:
            self._down(why)

    def _down(self, why: str, batch: Batch | None = None) -> None:
        """Redis failed us: every waiting call is answered None at once, and Redis is skipped for
        `retry_interval` (the next batch after that reconnects)."""
        self._down_until = time.monotonic() + self.settings.retry_interval
        log.warning("state_store_error", error=why, retry_in=self.settings.retry_interval)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        failed = [b for b in self._pending if b is not None]
        if batch is not None:
            failed.insert(0, batch)
        self._pending.clear()
        self._in_flight = None
        answered = False
        for calls, writes in failed:
            self._fail(calls, writes)
            answered = answered or bool(calls)
        if self._fail_waiting() or answered:
            self.done()

    def _fail_waiting(self) -> bool:
        """Every call and write still waiting, and the batch in flight (its reply did not come in time), fail;
        whether any call was answered."""
        calls, self._calls = self._calls, []
        writes, self._writes = self._writes, []
        if self._in_flight is not None:
            calls += self._in_flight[0]
            writes += self._in_flight[1]
            self._in_flight = None
        self._fail(calls, writes)
        return bool(calls)

    def _fail(self, calls: list[tuple[str, list[Op], float]], writes: list[tuple[list[Op], float]]) -> None:
        self.stats["state_failures"] += len(calls)
        self.stats["state_writes_dropped"] += len(writes)
        for call_id, _, _ in calls:
            self.answer(call_id, None)

    async def close(self) -> None:
        """Send what waits (calls in their window, ended calls' updates, also those queued behind the batch in
        flight) and wait up to 1 s for the replies, then close the connection. What could not go, or got no reply
        by then, is counted (`state_writes_dropped`, `state_failures`) and its calls answered None."""
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0
        while loop.time() < until:
            if self._in_flight is None and self._connecting is None:
                if not (self._calls or self._writes):
                    break
                self._send()  # goes now: a window or WRITE_DELAY no longer matters (or fails at once if down)
            await asyncio.sleep(0.005)
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._fail_waiting():
            self.done()  # as after any answer: what the engine decided for them goes out
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
