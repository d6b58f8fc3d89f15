"""What policies remember across calls, as data: a few store operations, and the in-process store.

A stateful policy does not hold its own tables. Before the chain runs, it says what it needs to look up and
record for the call (`observe(ctx) -> ops`); the engine runs every op of the call in one batch against the
configured store and hands each policy its results (`ctx.state_for(policy)`); after the call, the policy
says what to record (`ended(ctx, outcome) -> ops`). The same ops run against this in-process store (one
node, the default) or Redis (`proxy.redis_state`, several nodes sharing one memory), so policies stay pure
and never wait on a socket.

Four operations cover replay, velocity and the campaign signals:
- `Claim`: SET NX EX. The first call to claim a key owns it for `ttl` (a PASSporT, a first-seen number).
- `Window`: distinct members in a sliding window (calls, destinations, numbers), exact, at most `keep` held.
- `Tally`: bucketed counters over a span (shares: short calls, unsigned, neighbour matches ...).
- `Recent`: the last few members pushed (the order of destinations, for sweep detection).
Time is passed in (`now`, wall-clock seconds), never read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

__all__ = ["Claim", "MemoryStore", "Op", "Recent", "StateStore", "Tally", "Window", "run_ops"]


class _Value:
    """Base of the ops: plain values, compared and shown by their fields. Their attributes are `Final`: read-only
    when compiled (mypyc), and built natively: a policy makes several per call, and a dataclass's generated
    `__init__` (interpreted, even when compiled) cost more than running the op."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, _Value) and other._values() == self._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))


class Claim(_Value):
    """Own `key` for `ttl` seconds unless another call does. Result: None when this call claimed it (or already
    held it with the same value), else the value the key holds."""

    __slots__ = ("key", "ttl", "value")
    _fields = ("key", "value", "ttl")

    def __init__(self, key: str, value: str, ttl: float) -> None:
        self.key: Final = key
        self.value: Final = value
        self.ttl: Final = ttl


class Window(_Value):
    """Add `member` at now; forget members seen `span` seconds ago or earlier; keep the newest `keep`.
    Result: how many distinct members are in the window (at most `keep`). A member seen again moves up."""

    __slots__ = ("keep", "key", "member", "span")
    _fields = ("key", "member", "span", "keep")

    def __init__(self, key: str, member: str, span: float, keep: int) -> None:
        self.key: Final = key
        self.member: Final = member
        self.span: Final = span
        self.keep: Final = keep


class Tally(_Value):
    """Counters `fields` over the last `span` seconds, in `buckets` buckets (the window slides a bucket at a
    time). Adds `add` (aligned with fields) to the current bucket; when `add_if_claimed` names a field, that
    field also gets 1 if the last Claim before this op in the call's ops newly claimed its key. Result: a tuple
    of the sums over the window, aligned with fields, this call's additions included."""

    __slots__ = ("add", "add_if_claimed", "buckets", "fields", "key", "span")
    _fields = ("key", "fields", "add", "span", "buckets", "add_if_claimed")

    def __init__(self, key: str, fields: tuple[str, ...], add: tuple[int, ...], span: float, buckets: int = 10,
                 add_if_claimed: int = -1) -> None:
        self.key: Final = key
        self.fields: Final = fields
        self.add: Final = add
        self.span: Final = span
        self.buckets: Final = buckets
        self.add_if_claimed: Final = add_if_claimed


class Recent(_Value):
    """Push `member` onto a list of the last `keep`, kept `ttl` seconds after the last push. Result: the
    list, newest first, this member included."""

    __slots__ = ("keep", "key", "member", "ttl")
    _fields = ("key", "member", "keep", "ttl")

    def __init__(self, key: str, member: str, keep: int, ttl: float) -> None:
        self.key: Final = key
        self.member: Final = member
        self.keep: Final = keep
        self.ttl: Final = ttl


Op = Claim | Window | Tally | Recent


class StateStore(Protocol):
    """Where ops run. A synchronous store answers at once (`execute`); an asynchronous one (Redis) is driven
    by an adapter, and the engine waits for its answer with a deadline."""

    synchronous: bool

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        """Every op in order, results aligned with ops (synchronous stores only)."""
        ...


class _Entry:
    """What a table keeps for a key: when it was last used, and how long after that it still matters."""

    __slots__ = ("last", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self.last = 0.0


class _Members(_Entry):
    __slots__ = ("members",)

    def __init__(self, span: float) -> None:
        super().__init__(span)
        self.members: OrderedDict[str, float] = OrderedDict()


class _Buckets(_Entry):
    __slots__ = ("counts", "ids", "totals", "width")

    def __init__(self, n_fields: int, buckets: int, span: float) -> None:
        super().__init__(span)
        self.width = span / buckets
        self.ids = [-1] * buckets
        self.counts = [[0] * n_fields for _ in range(buckets)]
        self.totals = [0] * n_fields


class _Recent(_Entry):
    __slots__ = ("items", "keep")

    def __init__(self, keep: int, ttl: float) -> None:
        super().__init__(ttl)
        self.keep = keep
        #: Newest first, at most `keep` (kept as the tuple the op answers with).
        self.items: tuple[str, ...] = ()


E = TypeVar("E", bound=_Entry)


class _Table(Generic[E]):
    """Entries by key, least recently used first, bounded by `max_keys`; idle ones are dropped from the front."""

    __slots__ = ("entries", "front", "front_expiry", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.entries: OrderedDict[str, E] = OrderedDict()
        self.max_keys = max_keys
        #: The first entry's key and when it goes idle: until then, and while that entry is not used again,
        #: nothing can be dropped (the common case: no look at the front on every op).
        self.front: str | None = None
        self.front_expiry = _NEVER

    def touch(self, key: str, now: float) -> None:
        """`key` was just used (its entry's `last` is `now`): move it to the back; drop the oldest beyond
        max_keys and the idle entries at the front."""
        entries = self.entries
        entries.move_to_end(key)
        if len(entries) > self.max_keys:
            while len(entries) > self.max_keys:
                entries.popitem(last=False)
        elif now < self.front_expiry and key != self.front:
            return
        while entries:
            first_key, first = next(iter(entries.items()))
            expiry = first.last + first.span
            if expiry > now:
                self.front, self.front_expiry = first_key, expiry
                return
            entries.popitem(last=False)
        self.front, self.front_expiry = None, _NEVER


class _Claims:
    """The claims of one lifetime: insertion order is expiry order."""

    __slots__ = ("entries", "front_expiry")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: When the first claim expires (nothing to drop before then).
        self.front_expiry = _NEVER


_ZEROS: Final[list[tuple[int, ...]]] = [()]


def _zeros(n: int) -> tuple[int, ...]:
    """(0,) * n, made once per length."""
    while len(_ZEROS) <= n:
        _ZEROS.append((0,) * len(_ZEROS))
    return _ZEROS[n]


def _adds(add: tuple[int, ...]) -> bool:
    """Whether a tally op adds anything (`any`, without the builtin call)."""
    for value in add:  # noqa: SIM110 (a plain loop: compiled, no call)
        if value:
            return True
    return False


#: "No entry to wait for": the front must be looked at.
_NEVER = float("-inf")


class MemoryStore:
    """The ops in this process: exact windows, bucketed tallies with running totals (O(fields) per op),
    claims expiring in insertion order per lifetime. Every table is bounded by `max_keys`, least recently
    active first out, so memory follows the number of active keys, not the call rate."""

    synchronous = True

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self._claims: dict[float, _Claims] = {}
        self._windows: _Table[_Members] = _Table(max_keys)
        self._tallies: _Table[_Buckets] = _Table(max_keys)
        self._recent: _Table[_Recent] = _Table(max_keys)

    def __len__(self) -> int:
        return (sum(len(c.entries) for c in self._claims.values()) + len(self._windows.entries)
                + len(self._tallies.entries) + len(self._recent.entries))

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        out: list[Any] = []
        claimed = False
        for op in ops:
            if isinstance(op, Window):
                out.append(self._window(op, now))
            elif isinstance(op, Tally):
                out.append(self._tally(op, now, claimed))
            elif isinstance(op, Claim):
                held, claimed = self._claim(op, now)
                out.append(held)
            else:
                out.append(self._push(op, now))
        return out

    def _claim(self, op: Claim, now: float) -> tuple[str | None, bool]:
        """(the value another call holds, or None; whether this op newly claimed the key)"""
        claims = self._claims.get(op.ttl)
        if claims is None:
            claims = self._claims[op.ttl] = _Claims()
        table = claims.entries
        if not now < claims.front_expiry:
            while table:
                first = next(iter(table.values()))
                if first[1] > now:
                    claims.front_expiry = first[1]
                    break
                table.popitem(last=False)
            else:
                claims.front_expiry = _NEVER
        old = table.get(op.key)
        if old is not None:
            return (None if old[0] == op.value else old[0]), False
        table[op.key] = (op.value, now + op.ttl)
        if len(table) > self.max_keys:
            table.popitem(last=False)
            claims.front_expiry = _NEVER
        return None, True

    def _window(self, op: Window, now: float) -> int:
        windows = self._windows
        w = windows.entries.get(op.key)
        if w is None:
            w = windows.entries[op.key] = _Members(op.span)
        w.last = now
        windows.touch(op.key, now)
        members = w.members
        members[op.member] = now
        members.move_to_end(op.member)
        cutoff = now - op.span
        while True:
            first = next(iter(members.values()))
            if first > cutoff:
                break
            members.popitem(last=False)
        while len(members) > op.keep:
            members.popitem(last=False)
        return len(members)

    def _tally(self, op: Tally, now: float, claimed: bool) -> tuple[int, ...]:
        tallies = self._tallies
        b = tallies.entries.get(op.key)
        adds = _adds(op.add)
        bonus = op.add_if_claimed if claimed else -1
        if b is None and not adds and bonus < 0:
            return _zeros(len(op.fields))  # reading a key nobody counted: nothing to keep
        if b is None or len(b.totals) != len(op.fields):
            b = tallies.entries[op.key] = _Buckets(len(op.fields), op.buckets, op.span)
        b.last = now
        tallies.touch(op.key, now)
        current = int(now // b.width)
        ids = b.ids
        n = len(ids)
        slot = current % n
        totals = b.totals
        if ids[slot] != current:
            # Recycle every slot whose bucket left the window since the last op (at most all of them).
            oldest = current - n + 1
            for i in range(n):
                if ids[i] != -1 and ids[i] < oldest:
                    counts = b.counts[i]
                    for f in range(len(totals)):
                        totals[f] -= counts[f]
                        counts[f] = 0
                    ids[i] = -1
            ids[slot] = current
        counts = b.counts[slot]
        if adds:
            for f, value in enumerate(op.add):
                if value:
                    counts[f] += value
                    totals[f] += value
        if bonus >= 0:
            counts[bonus] += 1
            totals[bonus] += 1
        return tuple(totals)

    def _push(self, op: Recent, now: float) -> tuple[str, ...]:
        recent = self._recent
        r = recent.entries.get(op.key)
        if r is None or r.keep != op.keep:
            r = recent.entries[op.key] = _Recent(op.keep, op.ttl)
        r.last = now
        recent.touch(op.key, now)
        keep = r.keep
        # a slice that covers the whole tuple is the tuple itself: one new tuple per push
        items = (op.member,) + r.items[: keep - 1] if keep > 0 else ()  # noqa: RUF005 (compiled, unpacking builds a list first)
        r.items = items
        return items


def run_ops(store: StateStore, ops: Sequence[Op], now: float) -> list[Any]:
    """Tests and tools: the results of `ops` on a synchronous store."""
    if not store.synchronous:
        raise TypeError("run_ops needs a synchronous store")
    return store.execute(ops, now)
