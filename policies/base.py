"""What a policy sees (`CallContext`), what it answers (`Decision`), and what a policy is (`Policy`).

Policies never touch SIP messages or sockets: the engine builds one immutable CallContext per call after
verification, runs the trunk's chain over it, and applies the chain's Decision. Keeping both sides plain,
frozen values is what lets a chain run in a few microseconds and be tested without a SIP stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

from proxy.stir.tn import DEFAULT_TN_POLICY, TNPolicy, try_canonical_tn
from proxy.stir.verifier import VerificationResult

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

#: Headers every CallContext carries (canonical lower-case names); a policy class may ask for more with
#: its `headers` class attribute. Copying only these keeps building a context cheap.
DEFAULT_HEADERS: frozenset[str] = frozenset(
    {"from", "to", "p-asserted-identity", "privacy", "identity", "diversion", "history-info", "date"}
)

_EMPTY: Mapping[str, tuple[str, ...]] = MappingProxyType({})
_NO_FACTS: Mapping[object, list[Any]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CallContext:
    """Everything a policy may know about one call, frozen at admission.

    `orig`/`dest` are the user parts as signaled (PAI/From, R-URI/To); `orig_tn`/`dest_tn` their canonical
    form (digits only, None when not a number). `verification` is None on trunks that do not verify.
    `attest`/`origid`/`spc` come from the verification result (`verified` says whether they are trusted);
    `rcd_name` is the caller name of a verified Rich Call Data PASSporT (RFC 9795), None without one.
    `headers` maps canonical lower-case names to every value, in order. `now` is wall-clock epoch seconds.
    """

    call_id: str
    trunk: str
    trunk_role: str = "carrier"
    source_ip: str = ""
    source_port: int = 0
    orig: str | None = None
    orig_tn: str | None = None
    dest: str | None = None
    dest_tn: str | None = None
    display_name: str | None = None
    verification: VerificationResult | None = None
    attest: str | None = None
    origid: str | None = None
    spc: str | None = None
    rcd_name: str | None = None
    identity_present: bool = False
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY)
    now: float = 0.0
    #: Results of each stateful policy's `observe` ops, by policy (filled by the chain before evaluating).
    facts: Mapping[object, list[Any]] = field(default_factory=lambda: _NO_FACTS)

    def state_for(self, policy: object) -> list[Any] | None:
        """The results of `policy`'s observe ops for this call, aligned with them; None when the store did
        not answer (the chain then applies the state store's `on_error` and does not ask the policy)."""
        return self.facts.get(policy)

    @property
    def verified(self) -> bool:
        """True when an Identity header passed verification (attest/origid/spc can be trusted)."""
        v = self.verification
        return v is not None and v.status == "passed"

    @property
    def verstat(self) -> str | None:
        """The verifier's verstat, None on a trunk that does not verify."""
        v = self.verification
        return v.verstat if v is not None else None

    def header(self, name: str) -> str | None:
        """The first value of a header (canonical lower-case name), or None."""
        values = self.headers.get(name)
        return values[0] if values else None

    @classmethod
    def build(
        cls,
        *,
        call_id: str,
        trunk: str,
        trunk_role: str = "carrier",
        source: tuple[str, int] = ("", 0),
        orig: str | None = None,
        dest: str | None = None,
        display_name: str | None = None,
        verification: VerificationResult | None = None,
        headers: Iterable[tuple[str, str]] = (),
        now: float = 0.0,
        tn_policy: TNPolicy = DEFAULT_TN_POLICY,
        header_names: frozenset[str] = DEFAULT_HEADERS,
        orig_tn: str | None = None,
        dest_tn: str | None = None,
    ) -> CallContext:
        """The engine's one way to make a context: canonicalises the TNs, keeps only the wanted headers.

        `headers` are (canonical name, value) pairs in message order (compact forms already expanded);
        `orig_tn`/`dest_tn` may be passed when the caller already canonicalised them.
        """
        kept: dict[str, list[str]] = {}
        for name, value in headers:
            key = name.lower()
            if key in header_names:
                kept.setdefault(key, []).append(value)
        frozen = MappingProxyType({k: tuple(v) for k, v in kept.items()}) if kept else _EMPTY
        v = verification
        return cls(
            call_id=call_id,
            trunk=trunk,
            trunk_role=trunk_role,
            source_ip=source[0],
            source_port=source[1],
            orig=orig,
            orig_tn=orig_tn if orig_tn is not None else try_canonical_tn(orig, tn_policy),
            dest=dest,
            dest_tn=dest_tn if dest_tn is not None else try_canonical_tn(dest, tn_policy),
            display_name=display_name,
            verification=v,
            attest=v.attest if v is not None else None,
            origid=v.origid if v is not None else None,
            spc=v.spc if v is not None else None,
            rcd_name=v.rcd_name if v is not None else None,
            identity_present="identity" in frozen or (v is not None and v.status != "missing"),
            headers=frozen,
            now=now,
        )


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How a call ended, for policies that record it (`ended`): answered or not, seconds talked, final code, and
    whether it reached the called side at all (False: refused here, by verification or a policy)."""

    answered: bool
    duration: float = 0.0
    status: int | None = None
    reached: bool = True


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

    @property
    def tagged(self) -> bool:
        return bool(
            self.add_headers
            or self.set_headers
            or self.display_prefix
            or self.verstat
            or self.attestation_indicator
        )

    @property
    def outcome(self) -> str:
        """`continue`, `tag`, `route` or `reject`: the label counters and logs use."""
        if self.action == "continue":
            return "tag" if self.tagged else "continue"
        return self.action

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
