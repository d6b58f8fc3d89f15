"""What a policy sees (`CallContext`), what it answers (`Decision`), and what a policy is (`Policy`).

Policies never touch SIP messages or sockets: the engine builds one immutable CallContext per call after
verification, runs the trunk's chain over it, and applies the chain's Decision. Keeping both sides plain,
frozen values is what lets a chain run in a few microseconds and be tested without a SIP stack.
(`CallContext`, `Decision` and `CallOutcome` are defined in `policies.context`, compiled with the engine.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from .context import CONTINUE, DEFAULT_HEADERS, Action, CallContext, CallOutcome, Decision

__all__ = [
    "CONTINUE",
    "DEFAULT_HEADERS",
    "Action",
    "BasePolicy",
    "CallContext",
    "CallOutcome",
    "DataFile",
    "Decision",
    "Params",
    "Policy",
]


class DataFile:
    """A parameter naming a data file: resolved against the policy file's folder, checked to exist.

    Declare a params field as `DataFile` (or `DataFile | None`) and the loader does both, so a missing list
    file is reported with the line of its key, not when the first call arrives.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"DataFile({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


class Params(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every built-in's parameter schema: unknown keys are errors, values are immutable."""


@runtime_checkable
class Policy(Protocol):
    """A policy: built once from its validated params (an instance of its `Params` class attribute).

    Required: `evaluate(ctx) -> Decision`, pure and fast (microseconds; no I/O, no clock reads: use
    `ctx.now`). Optional, found by name: `async setup()` (load data before the set goes live),
    `observe(ctx) -> ops` (state to look up and record before evaluate, `policies.state`; the results are
    `ctx.state_for(self)`), `ended(ctx, outcome) -> ops` (state to record when the call ends, answered or
    not), and a `headers` class attribute (extra header names the policy reads from `ctx.headers`).
    A `per_call` attribute names the object whose evaluate/observe/ended the chain calls instead (the built-ins
    hand over their compiled cores, saving an interpreted call each); its facts are kept under that object.
    """

    Params: ClassVar[type[msgspec.Struct]]

    def evaluate(self, ctx: CallContext) -> Decision: ...


class BasePolicy:
    """Convenience base: keeps `params`, no-op setup. Subclassing it is optional."""

    Params: ClassVar[type[msgspec.Struct]] = Params
    headers: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any) -> None:
        self.params = params

    async def setup(self) -> None:
        return None

    def evaluate(self, ctx: CallContext) -> Decision:
        raise NotImplementedError
