"""What a policy sees (`CallContext`), what it answers (`Decision`), and what a policy is (`Policy`).

Policies never touch SIP messages or sockets: the engine builds one immutable CallContext per call after
verification, runs the trunk's chain over it, and applies the chain's Decision. Keeping both sides plain,
frozen values is what lets a chain run in a few microseconds and be tested without a SIP stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

from .context import DEFAULT_HEADERS, CallContext, CallOutcome

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

Action = Literal["continue", "route", "reject"]


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy's answer; the chain's merged answer has the same shape.

    action: `continue` (nothing, or only tags), `route` (send the call to `trunks`, in order) or `reject`
    (answer `code`/`reason`, with an optional RFC 9410 `reason_header`, RFC 8688 `jcard_url` for 608 and
    `retry_after` for 503). Tags ride on any non-reject action: `add_headers` (appended), `set_headers`
    (replace every header of that name), `display_prefix` (prepended to the caller's display name),
    `verstat` (overrides the verifier's), `attestation_indicator` (P-Attestation-Indicator value).
    `note` says why, for logs and call records.
    """

    action: Action = "continue"
    trunks: tuple[str, ...] = ()
    code: int | None = None
    reason: str | None = None
    reason_header: str | None = None
    jcard_url: str | None = None
    retry_after: int | None = None
    add_headers: tuple[tuple[str, str], ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()
    display_prefix: str | None = None
    verstat: str | None = None
    attestation_indicator: str | None = None
    note: str = ""
    #: Whether it carries any tag (header edits, display prefix, verstat, attestation indicator).
    tagged: bool = field(init=False, repr=False, compare=False)
    #: `continue`, `tag`, `route` or `reject`: the label counters and logs use. Both are worked out once, when
    #: the decision is made (most are made when the policy file loads), as every call reads them several times.
    outcome: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tagged = bool(
            self.add_headers
            or self.set_headers
            or self.display_prefix
            or self.verstat
            or self.attestation_indicator
        )
        object.__setattr__(self, "tagged", tagged)
        action = self.action
        object.__setattr__(self, "outcome", ("tag" if tagged else "continue") if action == "continue" else action)

    def with_note(self, note: str) -> Decision:
        """This decision saying why: policies keep their decisions from load time and note them per call."""
        return Decision(self.action, self.trunks, self.code, self.reason, self.reason_header, self.jcard_url,
                        self.retry_after, self.add_headers, self.set_headers, self.display_prefix, self.verstat,
                        self.attestation_indicator, note)

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers for the reject response: Reason (RFC 9410), Call-Info jCard (RFC 8688), Retry-After."""
        out: list[tuple[str, str]] = []
        if self.reason_header:
            out.append(("Reason", self.reason_header))
        if self.jcard_url:
            out.append(("Call-Info", f"<{self.jcard_url}>;purpose=jcard"))
        if self.retry_after is not None:
            out.append(("Retry-After", str(self.retry_after)))
        return tuple(out)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        for key in ("code", "reason", "reason_header", "jcard_url", "retry_after", "display_prefix", "verstat",
                    "attestation_indicator"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.trunks:
            out["trunks"] = list(self.trunks)
        if self.add_headers:
            out["add_headers"] = [list(h) for h in self.add_headers]
        if self.set_headers:
            out["set_headers"] = [list(h) for h in self.set_headers]
        if self.note:
            out["note"] = self.note
        return out

    # --- constructors policy authors use ----------------------------------------------------------------
    @staticmethod
    def tag(
        *,
        verstat: str | None = None,
        display_prefix: str | None = None,
        attestation_indicator: str | None = None,
        add_headers: Iterable[tuple[str, str]] = (),
        set_headers: Iterable[tuple[str, str]] = (),
        note: str = "",
    ) -> Decision:
        return Decision(
            "continue",
            verstat=verstat,
            display_prefix=display_prefix,
            attestation_indicator=attestation_indicator,
            add_headers=tuple(add_headers),
            set_headers=tuple(set_headers),
            note=note,
        )

    @staticmethod
    def route(trunks: Iterable[str], note: str = "") -> Decision:
        return Decision("route", trunks=tuple(trunks), note=note)

    @staticmethod
    def reject(
        code: int,
        reason: str,
        *,
        reason_header: str | None = None,
        jcard_url: str | None = None,
        retry_after: int | None = None,
        note: str = "",
    ) -> Decision:
        return Decision(
            "reject",
            code=code,
            reason=reason,
            reason_header=reason_header,
            jcard_url=jcard_url,
            retry_after=retry_after,
            note=note,
        )


CONTINUE = Decision()


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
