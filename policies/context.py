"""What a policy sees of a call (`CallContext`), what it answers (`Decision`) and how the call ended
(`CallOutcome`); `policies.base` exports them.

Every call makes some of each, so this module is compiled with the engine (proxy/compiled.py): as native classes
they are built in well under a microsecond, where frozen dataclasses of as many fields took several (a
dataclass's generated `__init__` stays interpreted even when compiled), and compiled code reads them directly.
Their attributes are `Final`: read-only in the compiled build, as the frozen dataclasses they replace were (the
pure build does not enforce it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

from proxy.stir.tn import DEFAULT_TN_POLICY, TNPolicy, try_canonical_tn
from proxy.stir.verifier import VerificationResult

__all__ = ["CONTINUE", "DEFAULT_HEADERS", "Action", "CallContext", "CallOutcome", "Decision"]

Action = Literal["continue", "route", "reject"]

#: Headers every CallContext carries (canonical lower-case names); a policy class may ask for more with
#: its `headers` class attribute. Copying only these keeps building a context cheap.
DEFAULT_HEADERS: Final = frozenset(
    {"from", "to", "p-asserted-identity", "privacy", "identity", "diversion", "history-info", "date"}
)

_EMPTY: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
_NO_FACTS: Final[Mapping[object, list[Any]]] = MappingProxyType({})
_FIELDS: Final = ("call_id", "trunk", "trunk_role", "source_ip", "source_port", "orig", "orig_tn", "dest",
                  "dest_tn", "display_name", "verification", "attest", "origid", "spc", "rcd_name",
                  "identity_present", "headers", "now", "facts")


class CallContext:
    """Everything a policy may know about one call, fixed at admission.

    `orig`/`dest` are the user parts as signaled (PAI/From, R-URI/To); `orig_tn`/`dest_tn` their canonical
    form (digits only, None when not a number). `verification` is None on trunks that do not verify.
    `attest`/`origid`/`spc` come from the verification result (`verified` says whether they are trusted);
    `rcd_name` is the caller name of a verified Rich Call Data PASSporT (RFC 9795), None without one.
    `headers` maps canonical lower-case names to every value, in order. `now` is wall-clock epoch seconds.
    `facts`: the results of each stateful policy's `observe` ops, by policy (filled in by the chain before
    evaluating: `state_for`). `remember`/`recall`: what a policy worked out while judging the call and needs
    again when it ends (not a field: copies do not carry it).
    """

    __slots__ = ("_memo", "attest", "call_id", "dest", "dest_tn", "display_name", "facts", "headers",
                 "identity_present", "now", "orig", "orig_tn", "origid", "rcd_name", "source_ip", "source_port", "spc",
                 "trunk", "trunk_role", "verification")

    def __init__(
        self,
        call_id: str,
        trunk: str,
        trunk_role: str = "carrier",
        source_ip: str = "",
        source_port: int = 0,
        orig: str | None = None,
        orig_tn: str | None = None,
        dest: str | None = None,
        dest_tn: str | None = None,
        display_name: str | None = None,
        verification: VerificationResult | None = None,
        attest: str | None = None,
        origid: str | None = None,
        spc: str | None = None,
        rcd_name: str | None = None,
        identity_present: bool = False,
        headers: Mapping[str, tuple[str, ...]] = _EMPTY,
        now: float = 0.0,
        facts: Mapping[object, list[Any]] = _NO_FACTS,
    ) -> None:
        self.call_id: Final = call_id
        self.trunk: Final = trunk
        self.trunk_role: Final = trunk_role
        self.source_ip: Final = source_ip
        self.source_port: Final = source_port
        self.orig: Final = orig
        self.orig_tn: Final = orig_tn
        self.dest: Final = dest
        self.dest_tn: Final = dest_tn
        self.display_name: Final = display_name
        self.verification: Final = verification
        self.attest: Final = attest
        self.origid: Final = origid
        self.spc: Final = spc
        self.rcd_name: Final = rcd_name
        self.identity_present: Final = identity_present
        self.headers: Final = headers
        self.now: Final = now
        #: Set once by the chain (`Chain.evaluate`) before any policy sees the context.
        self.facts = facts
        self._memo: dict[object, object] | None = None

    def __repr__(self) -> str:
        return f"CallContext({', '.join(f'{name}={getattr(self, name)!r}' for name in _FIELDS)})"

    def replace(self, **changes: Any) -> CallContext:
        """A copy with some fields changed (tests: `ctx.replace(facts={policy: results})`)."""
        values = {name: getattr(self, name) for name in _FIELDS}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"CallContext has no field {sorted(unknown)[0]!r}")
        values.update(changes)
        return CallContext(**values)

    def state_for(self, policy: object) -> list[Any] | None:
        """The results of `policy`'s observe ops for this call, aligned with them; None when the store did
        not answer (the chain then applies the state store's `on_error` and does not ask the policy)."""
        return self.facts.get(policy)

    def remember(self, policy: object, value: object) -> None:
        """Keep `value` for `policy` with this call (e.g. what its end adds, worked out from its state once)."""
        memo = self._memo
        if memo is None:
            self._memo = {policy: value}
        else:
            memo[policy] = value

    def recall(self, policy: object) -> object:
        """What `policy` kept with this call, None when nothing."""
        memo = self._memo
        return None if memo is None else memo.get(policy)

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
        kept: dict[str, tuple[str, ...]] = {}
        for name, value in headers:
            key = name.lower()
            if key in header_names:
                kept[key] = (*kept[key], value) if key in kept else (value,)
        frozen: Mapping[str, tuple[str, ...]] = MappingProxyType(kept) if kept else _EMPTY
        if orig_tn is None:
            orig_tn = try_canonical_tn(orig, tn_policy)
        if dest_tn is None:
            dest_tn = try_canonical_tn(dest, tn_policy)
        v = verification
        if v is None:
            return CallContext(call_id, trunk, trunk_role, source[0], source[1], orig, orig_tn, dest, dest_tn,
                               display_name, None, None, None, None, None, "identity" in frozen, frozen, now)
        return CallContext(call_id, trunk, trunk_role, source[0], source[1], orig, orig_tn, dest, dest_tn,
                           display_name, v, v.attest, v.origid, v.spc, v.rcd_name,
                           "identity" in frozen or v.status != "missing", frozen, now)


class CallOutcome:
    """How a call ended, for policies that record it (`ended`): answered or not, seconds talked, final code, and
    whether it reached the called side at all (False: refused here, by verification or a policy)."""

    __slots__ = ("answered", "duration", "reached", "status")

    def __init__(self, answered: bool, duration: float = 0.0, status: int | None = None,
                 reached: bool = True) -> None:
        self.answered: Final = answered
        self.duration: Final = duration
        self.status: Final = status
        self.reached: Final = reached

    def __repr__(self) -> str:
        return (f"CallOutcome(answered={self.answered!r}, duration={self.duration!r}, status={self.status!r}, "
                f"reached={self.reached!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallOutcome) and (self.answered, self.duration, self.status, self.reached) == (
            other.answered, other.duration, other.status, other.reached)

    def __hash__(self) -> int:
        return hash((self.answered, self.duration, self.status, self.reached))


_DECISION_FIELDS: Final = ("action", "trunks", "code", "reason", "reason_header", "jcard_url", "retry_after",
                           "add_headers", "set_headers", "display_prefix", "verstat", "attestation_indicator", "note")


class Decision:
    """One policy's answer; the chain's merged answer has the same shape.

    action: `continue` (nothing, or only tags), `route` (send the call to `trunks`, in order) or `reject`
    (answer `code`/`reason`, with an optional RFC 9410 `reason_header`, RFC 8688 `jcard_url` for 608 and
    `retry_after` for 503). Tags ride on any non-reject action: `add_headers` (appended), `set_headers`
    (replace every header of that name), `display_prefix` (prepended to the caller's display name),
    `verstat` (overrides the verifier's), `attestation_indicator` (P-Attestation-Indicator value).
    `note` says why, for logs and call records. Decisions compare by these fields.
    """

    __slots__ = ("action", "add_headers", "attestation_indicator", "code", "display_prefix", "jcard_url", "note",
                 "outcome", "reason", "reason_header", "retry_after", "set_headers", "tagged", "trunks", "verstat")

    def __init__(
        self,
        action: Action = "continue",
        trunks: tuple[str, ...] = (),
        code: int | None = None,
        reason: str | None = None,
        reason_header: str | None = None,
        jcard_url: str | None = None,
        retry_after: int | None = None,
        add_headers: tuple[tuple[str, str], ...] = (),
        set_headers: tuple[tuple[str, str], ...] = (),
        display_prefix: str | None = None,
        verstat: str | None = None,
        attestation_indicator: str | None = None,
        note: str = "",
    ) -> None:
        self.action: Final = action
        self.trunks: Final = trunks
        self.code: Final = code
        self.reason: Final = reason
        self.reason_header: Final = reason_header
        self.jcard_url: Final = jcard_url
        self.retry_after: Final = retry_after
        self.add_headers: Final = add_headers
        self.set_headers: Final = set_headers
        self.display_prefix: Final = display_prefix
        self.verstat: Final = verstat
        self.attestation_indicator: Final = attestation_indicator
        self.note: Final = note
        tagged = bool(add_headers or set_headers or display_prefix or verstat or attestation_indicator)
        #: Whether it carries any tag (header edits, display prefix, verstat, attestation indicator).
        self.tagged: Final = tagged
        #: `continue`, `tag`, `route` or `reject`: the label counters and logs use (worked out once: every call
        #: reads it several times).
        self.outcome: Final[str] = ("tag" if tagged else "continue") if action == "continue" else action

    def _fields(self) -> tuple[object, ...]:
        return (self.action, self.trunks, self.code, self.reason, self.reason_header, self.jcard_url,
                self.retry_after, self.add_headers, self.set_headers, self.display_prefix, self.verstat,
                self.attestation_indicator, self.note)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(_DECISION_FIELDS, self._fields(), strict=True))
        return f"Decision({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

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


CONTINUE: Final = Decision()
