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
A fifth, `Group`, bundles ops about one subject (a gateway, a number) that go together on every call, so the
memory store finds them with one lookup; to Redis it is the same ops listed one by one.
Time is passed in (`now`, wall-clock seconds), never read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

__all__ = ["Claim", "Group", "MemoryStore", "Op", "Part", "Recent", "StateStore", "Tally", "Window", "run_ops"]


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


#: An op that can be bundled in a Group.
Part = Claim | Window | Tally | Recent


class Group(_Value):
    """Ops about one subject (a gateway, a number) that are asked together call after call. The memory store
    keeps them as one entry under `key`, found with one lookup and aged as one (idle once every part's own
    lifetime has passed; each part still expires on its own). Stores that keep every key apart (Redis) run the
    ops as if they were listed one by one, under their own keys: `key` names the bundle in memory only. A
    Claim in a group counts for `add_if_claimed` of the ops after it, as in a flat list. Every op that touches
    one of these keys must come in a Group of the same `key` (the memory store looks for it there only).
    `names`, aligned with `ops` when given: what the memory store files the parts under in the entry, in place
    of the ops' keys. Short constant strings (one op, one name, in every group of that `key`): found by
    identity, and not kept per entry as the keys' own strings would be (a number's entry is held long, and
    each object in it is a cache miss on the next call). Redis ignores them. At most one Claim and one Recent
    per group: the memory store keeps them in the entry itself. Result: the list of the ops' results, in
    order."""

    __slots__ = ("key", "names", "ops")
    _fields = ("key", "ops", "names")

    def __init__(self, key: str, ops: tuple[Part, ...], names: tuple[str, ...] = ()) -> None:
        self.key: Final = key
        self.ops: Final = ops
        self.names: Final = names


Op = Claim | Window | Tally | Recent | Group


class StateStore(Protocol):
    """Where ops run. A synchronous store answers at once (`execute`); an asynchronous one (Redis) is driven
    by an adapter, and the engine waits for its answer with a deadline."""

    synchronous: bool

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        """Every op in order, results aligned with ops (synchronous stores only)."""
        ...

    def record(self, ops: Sequence[Op], now: float) -> None:
        """Every op in order, their results not wanted: what a call's end and feedback write (synchronous
        stores only)."""
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


class _Group(_Entry):
    """A group's parts: its Claim and its Recent list kept in the entry itself, any other part (tallies,
    windows) by name in `parts`, made when first needed. A number's entry is then one object and its values:
    it is looked up cold (there are tens of thousands), and each object in it is one more cache miss. A group
    holds at most one Claim and one Recent (a subject is claimed once, and has one list of recent members).
    Its span is the longest of its parts'."""

    __slots__ = ("claim", "claim_name", "claim_until", "parts", "recent", "recent_keep", "recent_name",
                 "recent_until")

    def __init__(self) -> None:
        super().__init__(0.0)
        #: The Claim's value, its name (`Group.names`, else its op's key) and until when it holds.
        self.claim = ""
        self.claim_name: str | None = None
        self.claim_until = _NEVER
        #: The Recent list, newest first (the tuple its op answers with), its length, name and until when it holds.
        self.recent: tuple[str, ...] = ()
        self.recent_keep = 0
        self.recent_name: str | None = None
        self.recent_until = _NEVER
        self.parts: dict[str, _Entry] | None = None


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


#: A recorded tally's result (`MemoryStore.record`: nobody reads it).
_NOTHING: Final[tuple[int, ...]] = ()
#: "No entry to wait for": the front must be looked at.
_NEVER = float("-inf")


class MemoryStore:
    """The ops in this process: exact windows, bucketed tallies with running totals (O(fields) per op),
    claims expiring in insertion order per lifetime, groups as one entry each. Every table is bounded by
    `max_keys`, least recently active first out, so memory follows the number of active keys, not the call
    rate."""

    synchronous = True

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self._claims: dict[float, _Claims] = {}
        self._windows: _Table[_Members] = _Table(max_keys)
        self._tallies: _Table[_Buckets] = _Table(max_keys)
        self._recent: _Table[_Recent] = _Table(max_keys)
        self._groups: _Table[_Group] = _Table(max_keys)
        #: Whether the last Claim of the ops being run newly claimed its key (for `Tally.add_if_claimed`).
        self._claimed = False
        #: Whether the ops being run are answered (`execute`) or only recorded (`record`): a tally's sums are
        #: then not gathered (one read of every counter, most of them long out of the cache).
        self._answer = True

    def __len__(self) -> int:
        return (sum(len(c.entries) for c in self._claims.values()) + len(self._windows.entries)
                + len(self._tallies.entries) + len(self._recent.entries) + len(self._groups.entries))

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        self._answer = True
        return self._run(ops, now)

    def record(self, ops: Sequence[Op], now: float) -> None:
        self._answer = False
        try:
            self._run(ops, now)
        finally:
            self._answer = True

    def _run(self, ops: Sequence[Op], now: float) -> list[Any]:
        out: list[Any] = []
        self._claimed = False
        for op in ops:
            if isinstance(op, Group):
                out.append(self._group(op, now))
            elif isinstance(op, Tally):
                b = self._tallies.entries.get(op.key)
                if b is None and not self._counts(op):
                    out.append(_zeros(len(op.fields)))  # reading a key nobody counted: nothing to keep
                    continue
                if b is None or len(b.totals) != len(op.fields):
                    b = self._tallies.entries[op.key] = _Buckets(len(op.fields), op.buckets, op.span)
                b.last = now
                self._tallies.touch(op.key, now)
                out.append(self._tally(b, op, now))
            elif isinstance(op, Window):
                w = self._windows.entries.get(op.key)
                if w is None:
                    w = self._windows.entries[op.key] = _Members(op.span)
                w.last = now
                self._windows.touch(op.key, now)
                out.append(_add_member(w, op, now))
            elif isinstance(op, Claim):
                out.append(self._claim(op, now))
            else:
                r = self._recent.entries.get(op.key)
                if r is None or r.keep != op.keep:
                    r = self._recent.entries[op.key] = _Recent(op.keep, op.ttl)
                r.last = now
                self._recent.touch(op.key, now)
                out.append(_push(r, op))
        return out

    def _counts(self, op: Tally) -> bool:
        """Whether a tally op adds anything (with its claimed bonus)."""
        return _adds(op.add) or (self._claimed and op.add_if_claimed >= 0)

    def _claim(self, op: Claim, now: float) -> str | None:
        """The value another call holds, or None (this call claimed the key, or already held it)."""
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
            self._claimed = False
            return None if old[0] == op.value else old[0]
        table[op.key] = (op.value, now + op.ttl)
        if len(table) > self.max_keys:
            table.popitem(last=False)
            claims.front_expiry = _NEVER
        self._claimed = True
        return None

    def _group(self, group: Group, now: float) -> list[Any]:
        """A group's ops on its parts: found in the group's entry (one lookup in the table); each part starts
        again once its own lifetime has passed."""
        groups = self._groups
        g = groups.entries.get(group.key)
        if g is None:
            g = groups.entries[group.key] = _Group()
        g.last = now
        names = group.names
        out: list[Any] = []
        for i, op in enumerate(group.ops):
            name = names[i] if names else op.key
            if isinstance(op, Claim):
                out.append(self._group_claim(g, name, op, now))
            elif isinstance(op, Recent):
                out.append(_group_push(g, name, op, now))
            else:
                out.append(self._group_part(g, name, op, now))
        groups.touch(group.key, now)  # once its span covers its parts (a new group's is 0 until then)
        return out

    def _group_claim(self, g: _Group, name: str, op: Claim, now: float) -> str | None:
        """A group's Claim, held in the entry itself: the value another call holds, or None."""
        if g.claim_name is not None and g.claim_name != name:
            raise ValueError(f"a group holds one Claim: {name!r} beside {g.claim_name!r}")
        if g.claim_until > now:
            self._claimed = False
            return None if g.claim == op.value else g.claim
        g.claim, g.claim_name, g.claim_until = op.value, name, now + op.ttl
        g.span = max(g.span, op.ttl)
        self._claimed = True
        return None

    def _group_part(self, g: _Group, name: str, op: Tally | Window, now: float) -> Any:
        """A tally or window of a group, filed by name."""
        parts = g.parts
        part = parts.get(name) if parts is not None else None
        if part is not None and not part.last + part.span > now:
            part = None  # expired: as a key gone from Redis
        if isinstance(op, Tally):
            if not isinstance(part, _Buckets) or len(part.totals) != len(op.fields):
                if not self._counts(op):
                    return _zeros(len(op.fields))
                part = _Buckets(len(op.fields), op.buckets, op.span)
                _file(g, name, part)
            part.last = now
            return self._tally(part, op, now)
        if not isinstance(part, _Members):
            part = _Members(op.span)
            _file(g, name, part)
        part.last = now
        return _add_member(part, op, now)

    def _tally(self, b: _Buckets, op: Tally, now: float) -> tuple[int, ...]:
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
        for f, value in enumerate(op.add):
            if value:
                counts[f] += value
                totals[f] += value
        if self._claimed:
            bonus = op.add_if_claimed
            if bonus >= 0:
                counts[bonus] += 1
                totals[bonus] += 1
        return tuple(totals) if self._answer else _NOTHING


def _add_member(w: _Members, op: Window, now: float) -> int:
    """Window: add the member at now, forget those out of the span or beyond `keep`; how many are left."""
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


def _push(r: _Recent, op: Recent) -> tuple[str, ...]:
    """Recent: the member pushed onto the list, the list (newest first) kept and answered."""
    items = r.items = _pushed(r.items, op.member, r.keep)
    return items


def _pushed(items: tuple[str, ...], member: str, keep: int) -> tuple[str, ...]:
    """`member` pushed onto `items` (newest first), at most `keep` kept."""
    # a slice that covers the whole tuple is the tuple itself: one new tuple per push
    return (member,) + items[: keep - 1] if keep > 0 else ()  # noqa: RUF005 (compiled, unpacking builds a list first)


def _group_push(g: _Group, name: str, op: Recent, now: float) -> tuple[str, ...]:
    """A group's Recent list: started again after its ttl (or with another length), then pushed."""
    if g.recent_name is not None and g.recent_name != name:
        raise ValueError(f"a group holds one Recent: {name!r} beside {g.recent_name!r}")
    if not g.recent_until > now or g.recent_keep != op.keep:
        g.recent, g.recent_keep, g.recent_name = (), op.keep, name
        g.span = max(g.span, op.ttl)
    g.recent_until = now + op.ttl
    items = g.recent = _pushed(g.recent, op.member, op.keep)
    return items


def _file(g: _Group, name: str, part: _Entry) -> None:
    """A new tally or window part in its group; the group lives as long as its longest part."""
    if g.parts is None:
        g.parts = {}
    g.parts[name] = part
    g.span = max(g.span, part.span)


def run_ops(store: StateStore, ops: Sequence[Op], now: float) -> list[Any]:
    """Tests and tools: the results of `ops` on a synchronous store."""
    if not store.synchronous:
        raise TypeError("run_ops needs a synchronous store")
    return store.execute(ops, now)
