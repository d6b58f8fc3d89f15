"""lists: allow and deny lists of caller and callee numbers and prefixes, source addresses, SPCs and
origids, inline or from files of millions of entries (policies.numbers keeps 10 M numbers in ~82 MB).

An allow match always wins over a deny match (a customer's own numbers must never be blocked by a broad
prefix rule); `allow_only` turns the allow lists into the only way in. SPCs and origids come from the
PASSporT, so they count only when verification passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container
from typing import Any, Literal

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, DataFile, Decision, Params
from .numbers import (
    CidrSet,
    NumberSet,
    PrefixSet,
    StringSet,
    load_cidrs,
    load_numbers,
    load_prefixes,
    load_strings,
)

__all__ = ["ListSpec", "Lists", "MatchSet"]


class ListSpec(Params, frozen=True, kw_only=True):
    """Inline entries and/or a file, per kind. Numbers in any form canonical_tn accepts."""

    orig_numbers: list[str] = []
    orig_numbers_file: DataFile | None = None
    orig_prefixes: list[str] = []
    orig_prefixes_file: DataFile | None = None
    dest_numbers: list[str] = []
    dest_numbers_file: DataFile | None = None
    dest_prefixes: list[str] = []
    dest_prefixes_file: DataFile | None = None
    sources: list[str] = []
    sources_file: DataFile | None = None
    spcs: list[str] = []
    spcs_file: DataFile | None = None
    origids: list[str] = []
    origids_file: DataFile | None = None


class ListsParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    allow: ListSpec = ListSpec()
    deny: ListSpec = ListSpec()
    #: Calls matching no allow list are treated as denied.
    allow_only: bool = False
    #: Do-not-originate lists (the ITG/industry format: one number per line): numbers that never originate
    #: calls (inbound-only, unassigned, government); as a caller they are spoofed. Denied like `deny`,
    #: with their own note (`lists:dno`), unless an allow list matches.
    dno_files: list[DataFile] = []


_KINDS = ("orig_numbers", "orig_prefixes", "dest_numbers", "dest_prefixes", "sources", "spcs", "origids")


def _field(kind: str) -> Callable[[CallContext], str | None]:
    if kind.startswith("orig_"):
        return lambda ctx: ctx.orig_tn
    if kind.startswith("dest_"):
        return lambda ctx: ctx.dest_tn
    if kind == "sources":
        return lambda ctx: ctx.source_ip
    if kind == "spcs":
        return lambda ctx: ctx.spc if ctx.verified else None
    return lambda ctx: ctx.origid if ctx.verified else None


class MatchSet:
    """One ListSpec made lookups: (field getter, container) pairs, files loaded by `load()`."""

    def __init__(self, spec: ListSpec, tn_policy: Any = None) -> None:
        self.spec = spec
        self.tn_policy = tn_policy
        self.checks: list[tuple[Callable[[CallContext], str | None], Container[str]]] = []
        for kind in _KINDS:
            inline = getattr(spec, kind)
            if inline:
                self.checks.append((_field(kind), _inline(kind, inline, tn_policy)))

    def __bool__(self) -> bool:
        return bool(self.checks) or any(getattr(self.spec, f"{k}_file") for k in _KINDS)

    def load(self) -> None:
        """Read the files (blocking: run it in a thread)."""
        for kind in _KINDS:
            path: DataFile | None = getattr(self.spec, f"{kind}_file")
            if path is not None:
                self.checks.append((_field(kind), _from_file(kind, path, self.tn_policy)))

    def matches(self, ctx: CallContext) -> bool:
        for get, container in self.checks:
            value = get(ctx)
            if value is not None and value in container:
                return True
        return False


def _inline(kind: str, values: list[str], tn_policy: Any) -> Container[str]:
    if kind.endswith("_numbers"):
        return NumberSet.from_iterable(values, *(() if tn_policy is None else (tn_policy,)))
    if kind.endswith("_prefixes"):
        return PrefixSet(v.lstrip("+") for v in values)
    if kind == "sources":
        return CidrSet(values)
    return StringSet(values)


def _from_file(kind: str, path: DataFile, tn_policy: Any) -> Container[str]:
    if kind.endswith("_numbers"):
        return load_numbers(path, *(() if tn_policy is None else (tn_policy,)))
    if kind.endswith("_prefixes"):
        return load_prefixes(path)
    if kind == "sources":
        return load_cidrs(path)
    return load_strings(path)


class Lists(ActionPolicy):
    """Deny match (and no allow match), or `allow_only` and no allow match -> the configured action
    (default: reject 603 Decline)."""

    Params = ListsParams

    def __init__(self, params: ListsParams, env: Any = None) -> None:
        super().__init__(params)
        tn_policy = getattr(env, "tn_policy", None)
        try:
            self.allow = MatchSet(params.allow, tn_policy)
            self.deny = MatchSet(params.deny, tn_policy)
        except ValueError as exc:  # a bad inline number or CIDR
            raise ValueError(str(exc)) from None
        self.dno = MatchSet(ListSpec(), tn_policy)
        if not (self.allow or self.deny or params.dno_files):
            raise ValueError("lists needs at least one allow, deny or DNO list")
        if params.allow_only and not self.allow:
            raise ValueError("allow_only needs allow lists")
        self._dno_hit = params.decision(note="lists:dno")

    async def setup(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self.allow.load()
        self.deny.load()
        for path in self.params.dno_files:
            self.dno.checks.append((_field("orig_numbers"), _from_file("orig_numbers", path, self.dno.tn_policy)))

    def evaluate(self, ctx: CallContext) -> Decision:
        if self.params.allow_only:
            return CONTINUE if self.allow.matches(ctx) else self.hit
        if self.deny.matches(ctx) and not self.allow.matches(ctx):
            return self.hit
        if self.dno.checks and self.dno.matches(ctx) and not self.allow.matches(ctx):
            return self._dno_hit
        return CONTINUE
