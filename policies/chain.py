"""A trunk's ordered policy chain and how its decisions combine.

Semantics (docs/POLICIES.md "Chain semantics"):
- entries run in order; the first enforced `reject` ends the chain and is the answer (tags are dropped:
  nothing reaches a B-leg);
- the last enforced `route` wins (its trunk list replaces the routing table's);
- tags accumulate: added headers concatenate, set headers/verstat/P-Attestation-Indicator are last-wins,
  display-name prefixes concatenate in chain order (the same prefix only once);
- `dry-run` entries are evaluated and counted, and their decisions reported, but change nothing;
- a policy that raises counts as `error` and the call continues as if it had said `continue`;
- stateful policies (`observe`) get their state before the chain runs; when the state store did not answer,
  the store's `on_error` decides: `open` counts the entry as `state-miss` and goes on as if it had said
  `continue`, `closed` applies the policy's own action (its `hit` decision).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from .base import CONTINUE, CallContext, CallOutcome, Decision
from .filters import Filter
from .state import Op

__all__ = ["Chain", "ChainEntry", "ChainResult", "Counters", "Mode", "StateRequest", "Step", "merge"]

Mode = Literal["enforce", "dry-run"]
_log = logging.getLogger("stirgate.policies")


OnStateError = Literal["open", "closed"]


class StateRequest(NamedTuple):
    """Every op a chain needs run for one call, and which policy asked for which slice of them."""

    ops: list[Op]
    slices: list[tuple[object, int, int]]

    def facts(self, results: Sequence[Any] | None) -> dict[object, list[Any]]:
        """Each policy's results; with None (the store did not answer) only the policies that asked for
        nothing get theirs (empty), so the rest count as state misses."""
        if results is None:
            return {policy: [] for policy, start, end in self.slices if start == end}
        return {policy: list(results[start:end]) for policy, start, end in self.slices}


class Step(NamedTuple):
    """One entry's verdict on a call, for records and logs."""

    name: str
    mode: Mode
    decision: Decision


class Counters:
    """Calls per (trunk, policy name, mode, outcome); outcome is continue|tag|route|reject|error|state-miss.

    Owned by the engine and handed to every PolicySet it loads, so counts stay monotonic across reloads.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}

    def get(self, trunk: str, name: str, mode: str, outcome: str) -> int:
        return self.counts.get((trunk, name, mode, outcome), 0)

    def items(self) -> list[tuple[tuple[str, str, str, str], int]]:
        return sorted(self.counts.items())


@dataclass(frozen=True, slots=True)
class ChainResult:
    """The merged decision, every entry's own decision in order, and the dry-run ones on their own."""

    decision: Decision
    steps: tuple[Step, ...]

    @property
    def dry_run(self) -> tuple[Step, ...]:
        """What dry-run entries would have done (those that would have changed something)."""
        return tuple(s for s in self.steps if s.mode == "dry-run" and s.decision.outcome != "continue")

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.as_dict(),
            "steps": [{"policy": s.name, "mode": s.mode, **s.decision.as_dict()} for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One configured policy in a chain: its display name, mode, instance and where it was configured."""

    name: str
    policy_name: str
    mode: Mode
    policy: Any
    #: (file, line, key) of the entry in the policy file, for errors found later (setup).
    location: tuple[str, int | None, str] = ("", None, "")
    #: `when:`: the calls this entry applies to (None: all).
    when: Filter | None = None


def merge(decisions: Iterable[Decision]) -> Decision:
    """Combine enforced decisions per the chain semantics (used by Chain and by tests)."""
    route: Decision | None = None
    tagged: list[Decision] = []
    for d in decisions:
        if d.action == "reject":
            return d
        if d.action == "route":
            route = d
        if d.tagged:
            tagged.append(d)
    if not tagged:
        return route if route is not None else CONTINUE
    if len(tagged) == 1 and (route is None or route is tagged[0]):
        return tagged[0]
    return _merge_tags(tagged, route)


def _merge_tags(tagged: list[Decision], route: Decision | None) -> Decision:
    add: list[tuple[str, str]] = []
    sets: dict[str, tuple[str, str]] = {}
    prefixes: list[str] = []
    verstat = indicator = None
    notes: list[str] = []
    for d in tagged:
        add.extend(d.add_headers)
        for name, value in d.set_headers:
            sets[name.lower()] = (name, value)
        if d.display_prefix and d.display_prefix not in prefixes:
            prefixes.append(d.display_prefix)
        verstat = d.verstat or verstat
        indicator = d.attestation_indicator or indicator
        if d.note:
            notes.append(d.note)
    return Decision(
        "route" if route is not None else "continue",
        trunks=route.trunks if route is not None else (),
        add_headers=tuple(add),
        set_headers=tuple(sets.values()),
        display_prefix="".join(prefixes) or None,
        verstat=verstat,
        attestation_indicator=indicator,
        note="; ".join(notes),
    )


class Chain:
    """An immutable, ordered list of entries for one trunk. Safe to keep for the life of a call."""

    __slots__ = ("_end_hooks", "_entries", "_observers", "counters", "entries", "trunk")

    def __init__(self, trunk: str, entries: Iterable[ChainEntry], counters: Counters | None = None) -> None:
        self.trunk = trunk
        self.entries: tuple[ChainEntry, ...] = tuple(entries)
        self.counters = counters if counters is not None else Counters()
        # Per entry, what evaluate needs without attribute lookups, and its step for a plain `continue` (what
        # most entries say about most calls: one shared Step instead of a new one per call).
        self._entries = tuple(
            (e.name, e.mode, e.mode == "dry-run", e.policy.evaluate, e.policy,
             callable(getattr(e.policy, "observe", None)), e.when.matches if e.when is not None else None,
             Step(e.name, e.mode, CONTINUE))
            for e in self.entries
        )
        self._observers = tuple(
            (e.name, e.policy, e.policy.observe, e.when.matches if e.when is not None else None)
            for e in self.entries if callable(getattr(e.policy, "observe", None))
        )
        self._end_hooks = tuple(
            (e.name, e.policy.ended, e.when.matches if e.when is not None else None)
            for e in self.entries if callable(getattr(e.policy, "ended", None))
        )

    def __len__(self) -> int:
        return len(self.entries)

    def observe(self, ctx: CallContext) -> StateRequest | None:
        """The state ops of every stateful entry for this call (maybe none), or None without stateful entries.

        A policy whose observe raises gets no facts: it is treated as a state miss."""
        if not self._observers:
            return None
        ops: list[Op] = []
        slices: list[tuple[object, int, int]] = []
        for name, policy, observe, when in self._observers:
            try:
                if when is not None and not when(ctx):
                    continue
                wanted = observe(ctx)
            except Exception:
                _log.exception("policy %s observe raised on call %s", name, ctx.call_id)
                continue
            start = len(ops)
            ops.extend(wanted)
            slices.append((policy, start, len(ops)))
        return StateRequest(ops, slices)

    def evaluate(self, ctx: CallContext, facts: dict[object, list[Any]] | None = None,
                 on_state_error: OnStateError = "open") -> ChainResult:
        """Run every entry (until an enforced reject) and merge; never raises for a policy's bug.

        `facts`: the results of `observe` (None: the store did not answer: `on_state_error` applies).
        """
        if facts is not None:
            # The context is this call's own and no policy has seen it yet: filling in its facts here is
            # part of building it.
            ctx.facts = facts
        counts = self.counters.counts
        trunk = ctx.trunk
        steps: list[Step] = []
        enforced: list[Decision] = []
        for name, mode, dry, evaluate, policy, stateful, when, continued in self._entries:
            try:
                if when is not None and not when(ctx):
                    continue
                if stateful and policy not in ctx.facts:
                    d, outcome = _state_missing(policy, on_state_error)
                else:
                    d = evaluate(ctx)
                    outcome = d.outcome
            except Exception:
                _log.exception("policy %s raised on call %s (treated as continue)", name, ctx.call_id)
                d, outcome = CONTINUE, "error"
            key = (trunk, name, mode, outcome)
            counts[key] = counts.get(key, 0) + 1
            steps.append(continued if d is CONTINUE else Step(name, mode, d))
            if dry or outcome == "continue" or outcome == "error" or outcome == "state-miss":
                continue
            enforced.append(d)
            if outcome == "reject":
                break
        if not enforced:
            return ChainResult(CONTINUE, tuple(steps))
        if len(enforced) == 1:
            return ChainResult(enforced[0], tuple(steps))
        return ChainResult(merge(enforced), tuple(steps))

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> list[Op]:
        """A call of this chain ended: the state ops its policies want recorded (e.g. short-call shares)."""
        ops: list[Op] = []
        for name, hook, when in self._end_hooks:
            try:
                if when is not None and not when(ctx):
                    continue
                ops.extend(hook(ctx, outcome))
            except Exception:
                _log.exception("policy %s ended raised on call %s", name, ctx.call_id)
        return ops


def _state_missing(policy: object, on_error: OnStateError) -> tuple[Decision, str]:
    """A stateful entry whose state did not come: `open` goes on, `closed` applies the policy's action."""
    hit = getattr(policy, "hit", None)
    if on_error == "closed" and isinstance(hit, Decision):
        return hit, hit.outcome
    return CONTINUE, "state-miss"

