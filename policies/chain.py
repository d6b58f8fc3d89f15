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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import chain_core
from .base import CallContext, CallOutcome
from .chain_core import ChainResult, Mode, OnStateError, StateRequest, Step, merge
from .filters import Filter
from .state import Op

__all__ = ["Chain", "ChainEntry", "ChainResult", "Counters", "Mode", "OnStateError", "StateRequest", "Step",
           "merge"]


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


class Chain:
    """An immutable, ordered list of entries for one trunk. Safe to keep for the life of a call.

    What runs per call is compiled (`policies.chain_core`); this holds the entries and their counters."""

    __slots__ = ("_end_hooks", "_entries", "_observers", "counters", "entries", "trunk")

    def __init__(self, trunk: str, entries: Iterable[ChainEntry], counters: Counters | None = None) -> None:
        self.trunk = trunk
        self.entries: tuple[ChainEntry, ...] = tuple(entries)
        self.counters = counters if counters is not None else Counters()
        # What is called per call: the policy, or the object it names as `per_call` (the built-ins' compiled
        # cores); the facts of a stateful one are kept under that object.
        targets = [getattr(e.policy, "per_call", e.policy) for e in self.entries]
        self._entries = tuple(chain_core.EntryRun(e.name, e.mode, t, _when(e))
                              for e, t in zip(self.entries, targets, strict=True))
        self._observers = tuple(chain_core.Observer(e.name, t, _when(e))
                                for e, t in zip(self.entries, targets, strict=True)
                                if callable(getattr(t, "observe", None)))
        self._end_hooks = tuple(chain_core.EndHook(e.name, t, _when(e))
                                for e, t in zip(self.entries, targets, strict=True)
                                if callable(getattr(t, "ended", None)))

    def __len__(self) -> int:
        return len(self.entries)

    def observe(self, ctx: CallContext) -> StateRequest | None:
        """The state ops of every stateful entry for this call (maybe none), or None without stateful entries.

        A policy whose observe raises gets no facts: it is treated as a state miss."""
        if not self._observers:
            return None
        return chain_core.observe(self._observers, ctx)

    def evaluate(self, ctx: CallContext, facts: dict[object, list[Any]] | None = None,
                 on_state_error: OnStateError = "open") -> ChainResult:
        """Run every entry (until an enforced reject) and merge; never raises for a policy's bug.

        `facts`: the results of `observe` (None: the store did not answer: `on_state_error` applies).
        """
        if facts is not None:
            # The context is this call's own and no policy has seen it yet: filling in its facts here is
            # part of building it.
            ctx.facts = facts
        return chain_core.evaluate(self._entries, ctx, on_state_error, self.counters.counts)

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> list[Op]:
        """A call of this chain ended: the state ops its policies want recorded (e.g. short-call shares)."""
        if not self._end_hooks:
            return []
        return chain_core.ended(self._end_hooks, ctx, outcome)


def _when(entry: ChainEntry) -> chain_core.Check | None:
    return entry.when.matches if entry.when is not None else None
