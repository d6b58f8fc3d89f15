"""How a chain runs for one call: its state request, its entries' verdicts merged, its end-of-call ops.

Compiled with mypyc (proxy/compiled.py), as the engine is: these loops run for every call and, interpreted,
cost more than the policies they call. `policies.chain` holds the Chain (its entries, its counters) and hands
its tables here; the semantics are described there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, NamedTuple

from .base import CONTINUE, Decision
from .context import CallContext, CallOutcome
from .state import Op

__all__ = ["ChainResult", "EndHook", "EntryRun", "Mode", "Observer", "OnStateError", "StateRequest", "Step",
           "ended", "evaluate", "merge", "observe"]

Mode = Literal["enforce", "dry-run"]
OnStateError = Literal["open", "closed"]
_log = logging.getLogger("stirgate.policies")


class Step(NamedTuple):
    """One entry's verdict on a call, for records and logs."""

    name: str
    mode: Mode
    decision: Decision


class StateRequest:
    """Every op a chain needs run for one call, and which policy asked for which slice of them."""

    __slots__ = ("ops", "slices")

    def __init__(self, ops: list[Op], slices: list[tuple[object, int, int]]) -> None:
        self.ops: Final = ops
        self.slices: Final = slices

    def facts(self, results: Sequence[Any] | None) -> dict[object, list[Any]]:
        """Each policy's results; with None (the store did not answer) only the policies that asked for
        nothing get theirs (empty), so the rest count as state misses."""
        out: dict[object, list[Any]] = {}
        for policy, start, end in self.slices:
            if results is not None:
                chunk = results[start:end]
                out[policy] = chunk if isinstance(chunk, list) else list(chunk)
            elif start == end:
                out[policy] = []
        return out


class ChainResult:
    """The merged decision, and every entry's own decision in order (dry-run ones included)."""

    __slots__ = ("decision", "steps")

    def __init__(self, decision: Decision, steps: tuple[Step, ...]) -> None:
        self.decision: Final = decision
        self.steps: Final = steps

    def __repr__(self) -> str:
        return f"ChainResult(decision={self.decision!r}, steps={self.steps!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChainResult) and (self.decision, self.steps) == (other.decision, other.steps)

    def __hash__(self) -> int:
        return hash((self.decision, self.steps))

    @property
    def dry_run(self) -> tuple[Step, ...]:
        """What dry-run entries would have done (those that would have changed something)."""
        return tuple(s for s in self.steps if s.mode == "dry-run" and s.decision.outcome != "continue")

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.as_dict(),
            "steps": [{"policy": s.name, "mode": s.mode, **s.decision.as_dict()} for s in self.steps],
        }


Check = Callable[[CallContext], bool]


class EntryRun:
    """What running one chain entry needs, looked up once when the chain is built."""

    __slots__ = ("continued", "dry", "evaluate", "mode", "name", "policy", "stateful", "when")

    def __init__(self, name: str, mode: Mode, policy: Any, when: Check | None) -> None:
        self.name: Final = name
        self.mode: Final = mode
        self.dry: Final = mode == "dry-run"
        self.policy: Final = policy
        self.evaluate: Final[Callable[[CallContext], Decision]] = policy.evaluate
        self.stateful: Final = callable(getattr(policy, "observe", None))
        self.when: Final = when
        #: Its step for a plain `continue` (what most entries say about most calls), made once.
        self.continued: Final = Step(name, mode, CONTINUE)


class Observer:
    """A stateful entry: its policy's `observe`."""

    __slots__ = ("name", "observe", "policy", "when")

    def __init__(self, name: str, policy: Any, when: Check | None) -> None:
        self.name: Final = name
        self.policy: Final = policy
        self.observe: Final[Callable[[CallContext], Iterable[Op]]] = policy.observe
        self.when: Final = when


class EndHook:
    """An entry whose policy records how calls end: its `ended`."""

    __slots__ = ("ended", "name", "when")

    def __init__(self, name: str, policy: Any, when: Check | None) -> None:
        self.name: Final = name
        self.ended: Final[Callable[[CallContext, CallOutcome], Iterable[Op]]] = policy.ended
        self.when: Final = when


def observe(observers: Sequence[Observer], ctx: CallContext) -> StateRequest:
    """The state ops of the observers for this call. A policy whose observe raises gets no facts: it is treated
    as a state miss."""
    ops: list[Op] = []
    slices: list[tuple[object, int, int]] = []
    for o in observers:
        try:
            when = o.when
            if when is not None and not when(ctx):
                continue
            wanted = o.observe(ctx)
        except Exception:
            _log.exception("policy %s observe raised on call %s", o.name, ctx.call_id)
            continue
        start = len(ops)
        ops.extend(wanted)
        slices.append((o.policy, start, len(ops)))
    return StateRequest(ops, slices)


def evaluate(entries: Sequence[EntryRun], ctx: CallContext, on_state_error: OnStateError,
             counts: dict[tuple[str, str, str, str], int]) -> ChainResult:
    """Run every entry (until an enforced reject), count each outcome, and merge; never raises for a policy's
    bug. `ctx.facts` holds the observers' results (a stateful entry missing from it: `on_state_error`)."""
    trunk = ctx.trunk
    facts = ctx.facts
    steps: list[Step] = []
    enforced: list[Decision] = []
    for e in entries:
        name = e.name
        try:
            when = e.when
            if when is not None and not when(ctx):
                continue
            if e.stateful and e.policy not in facts:
                d, outcome = _state_missing(e.policy, on_state_error)
            else:
                d = e.evaluate(ctx)
                outcome = d.outcome
        except Exception:
            _log.exception("policy %s raised on call %s (treated as continue)", name, ctx.call_id)
            d, outcome = CONTINUE, "error"
        key = (trunk, name, e.mode, outcome)
        counts[key] = counts.get(key, 0) + 1
        steps.append(e.continued if d is CONTINUE else Step(name, e.mode, d))
        if e.dry or outcome == "continue" or outcome == "error" or outcome == "state-miss":
            continue
        enforced.append(d)
        if outcome == "reject":
            break
    if not enforced:
        return ChainResult(CONTINUE, tuple(steps))
    if len(enforced) == 1:
        return ChainResult(enforced[0], tuple(steps))
    return ChainResult(merge(enforced), tuple(steps))


def ended(hooks: Sequence[EndHook], ctx: CallContext, outcome: CallOutcome) -> list[Op]:
    """The state ops the hooks want recorded for an ended call (e.g. short-call shares)."""
    ops: list[Op] = []
    for h in hooks:
        try:
            when = h.when
            if when is not None and not when(ctx):
                continue
            ops.extend(h.ended(ctx, outcome))
        except Exception:
            _log.exception("policy %s ended raised on call %s", h.name, ctx.call_id)
    return ops


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
    verstat: str | None = None
    indicator: str | None = None
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


def _state_missing(policy: object, on_error: OnStateError) -> tuple[Decision, str]:
    """A stateful entry whose state did not come: `open` goes on, `closed` applies the policy's action."""
    hit = getattr(policy, "hit", None)
    if on_error == "closed" and isinstance(hit, Decision):
        return hit, hit.outcome
    return CONTINUE, "state-miss"
