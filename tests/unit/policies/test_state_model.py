"""MemoryStore against a plain model of it: the same answers and the same size after every batch of random ops.

The store skips looking at a table's front while nothing there can have gone idle (the front's expiry is kept),
which is easy to get subtly wrong; the model below looks at the front on every op, as the store once did. Small
tables (eviction by max_keys), mixed spans in one table, keys reused with other shapes (fields, keep) and idle
gaps are all drawn, so every path that drops an entry is taken.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import pytest

from policies.state import Claim, MemoryStore, Op, Recent, Tally, Window


class _Entry:
    def __init__(self, span: float) -> None:
        self.span, self.last = span, 0.0


class ModelStore:
    """The store's semantics, the straightforward way (the implementation of stirgate 0.x)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.claims: dict[float, OrderedDict[str, tuple[str, float]]] = {}
        self.tables: dict[str, OrderedDict[str, Any]] = {"w": OrderedDict(), "t": OrderedDict(), "r": OrderedDict()}

    def __len__(self) -> int:
        return sum(len(c) for c in self.claims.values()) + sum(len(t) for t in self.tables.values())

    def _touch(self, table: OrderedDict[str, Any], key: str, now: float) -> None:
        table.move_to_end(key)
        while len(table) > self.max_keys:
            table.popitem(last=False)
        while table:
            first = next(iter(table.values()))
            if first.last + first.span > now:
                break
            table.popitem(last=False)

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        out: list[Any] = []
        claimed = False
        for op in ops:
            if isinstance(op, Claim):
                table = self.claims.setdefault(op.ttl, OrderedDict())
                while table and next(iter(table.values()))[1] <= now:
                    table.popitem(last=False)
                old = table.get(op.key)
                if old is not None:
                    out.append(None if old[0] == op.value else old[0])
                    claimed = False
                    continue
                table[op.key] = (op.value, now + op.ttl)
                if len(table) > self.max_keys:
                    table.popitem(last=False)
                out.append(None)
                claimed = True
            elif isinstance(op, Window):
                windows = self.tables["w"]
                w = windows.get(op.key)
                if w is None:
                    w = windows[op.key] = _Entry(op.span)
                    w.members = OrderedDict()  # type: ignore[attr-defined]
                w.last = now
                self._touch(windows, op.key, now)
                members = w.members  # type: ignore[attr-defined]
                members[op.member] = now
                members.move_to_end(op.member)
                while next(iter(members.values())) <= now - op.span:
                    members.popitem(last=False)
                while len(members) > op.keep:
                    members.popitem(last=False)
                out.append(len(members))
            elif isinstance(op, Tally):
                out.append(self._tally(op, now, claimed))
            else:
                recent = self.tables["r"]
                r = recent.get(op.key)
                if r is None or r.items.maxlen != op.keep:
                    r = recent[op.key] = _Entry(op.ttl)
                    r.items = deque(maxlen=op.keep)
                r.last = now
                self._touch(recent, op.key, now)
                r.items.appendleft(op.member)
                out.append(tuple(r.items))
        return out

    def _tally(self, op: Tally, now: float, claimed: bool) -> tuple[int, ...]:
        tallies = self.tables["t"]
        b = tallies.get(op.key)
        if b is None and not any(op.add) and not (claimed and op.add_if_claimed >= 0):
            return (0,) * len(op.fields)
        if b is None or len(b.totals) != len(op.fields):
            b = tallies[op.key] = _Entry(op.span)
            b.width, b.ids = op.span / op.buckets, [-1] * op.buckets
            b.counts, b.totals = [[0] * len(op.fields) for _ in range(op.buckets)], [0] * len(op.fields)
        b.last = now
        self._touch(tallies, op.key, now)
        current = int(now // b.width)
        slot = current % len(b.ids)
        if b.ids[slot] != current:
            for i in range(len(b.ids)):
                if b.ids[i] != -1 and b.ids[i] < current - len(b.ids) + 1:
                    b.totals = [t - c for t, c in zip(b.totals, b.counts[i], strict=True)]
                    b.counts[i] = [0] * len(b.totals)
                    b.ids[i] = -1
            b.ids[slot] = current
        add = list(op.add)
        if claimed and op.add_if_claimed >= 0:
            add[op.add_if_claimed] += 1
        b.counts[slot] = [c + a for c, a in zip(b.counts[slot], add, strict=True)]
        b.totals = [t + a for t, a in zip(b.totals, add, strict=True)]
        return tuple(b.totals)


def _random_ops(rnd: random.Random, keys: list[str], spans: list[float]) -> list[Op]:
    ops: list[Op] = []
    for _ in range(rnd.randint(1, 4)):
        key, span = rnd.choice(keys), rnd.choice(spans)
        kind = rnd.choice("cwtr")
        if kind == "c":
            ops.append(Claim(key, rnd.choice("ab"), span))
        elif kind == "w":
            ops.append(Window(key, rnd.choice("xyzuv"), span, rnd.choice([2, 3, 5])))
        elif kind == "t":
            n = rnd.choice([1, 2])
            ops.append(Tally(key, ("a", "b")[:n], tuple(rnd.choice([0, 0, 1, 2]) for _ in range(n)), span,
                             rnd.choice([2, 5]), rnd.choice([-1, 0])))
        else:
            ops.append(Recent(key, rnd.choice("pqrs"), rnd.choice([2, 3]), span))
    return ops


@pytest.mark.parametrize("seed", range(40))
def test_store_answers_as_the_model(seed: int) -> None:
    rnd = random.Random(seed)
    max_keys = rnd.choice([3, 5, 10, 1000])
    store, model = MemoryStore(max_keys), ModelStore(max_keys)
    keys = [f"k{i}" for i in range(rnd.choice([4, 8, 20]))]
    spans = [5.0, 10.0, 30.0] if seed % 2 else [10.0]
    now = 0.0
    for step in range(1500):
        now += rnd.choice([0.0, 0.5, 1.0, 3.0, 7.0, 15.0])
        ops = _random_ops(rnd, keys, spans)
        assert store.execute(ops, now) == model.execute(ops, now), f"step {step}: {ops}"
        assert len(store) == len(model), f"step {step}"
