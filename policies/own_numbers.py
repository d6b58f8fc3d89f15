"""own_numbers: a call from another carrier that claims one of the operator's own numbers is spoofed.

Calls from our own subscribers reach us on customer trunks; the same numbers arriving from an interconnect
(a carrier trunk) were put there by someone else: the classic "your own number is calling you" robocall.
Numbers ported out to another provider are the exception (they now legitimately originate elsewhere), and so
is a call our own STI-AS signed (a passed verification from one of `own_spcs`: our call looping back).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, DataFile, Decision
from .lists import ListSpec, MatchSet

__all__ = ["OwnNumbers"]


class OwnNumbersParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    numbers: list[str] = []
    numbers_file: DataFile | None = None
    prefixes: list[str] = []
    prefixes_file: DataFile | None = None
    #: Our numbers now served by another provider: they may arrive from carriers.
    ported_out: list[str] = []
    ported_out_file: DataFile | None = None
    #: Our own SPC(s): a call we signed ourselves that comes back through a carrier is not spoofed.
    own_spcs: list[str] = []
    trunk_roles: list[Literal["carrier", "customer"]] = msgspec.field(default_factory=lambda: ["carrier"])


class OwnNumbers(ActionPolicy):
    """An own number as caller on a carrier trunk (not ported out, not signed by us) -> the configured action
    (default: reject 603)."""

    Params = OwnNumbersParams

    def __init__(self, params: OwnNumbersParams, env: Any = None) -> None:
        super().__init__(params)
        tn_policy = getattr(env, "tn_policy", None)
        try:
            self.own = MatchSet(ListSpec(orig_numbers=params.numbers, orig_numbers_file=params.numbers_file,
                                         orig_prefixes=params.prefixes, orig_prefixes_file=params.prefixes_file),
                                tn_policy)
            self.ported = MatchSet(ListSpec(orig_numbers=params.ported_out,
                                            orig_numbers_file=params.ported_out_file), tn_policy)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if not self.own:
            raise ValueError("own_numbers needs numbers, prefixes or a file of them")
        self._roles = frozenset(params.trunk_roles)
        self._spcs = frozenset(params.own_spcs)

    async def setup(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self.own.load()
        self.ported.load()

    def evaluate(self, ctx: CallContext) -> Decision:
        if ctx.trunk_role not in self._roles or ctx.orig_tn is None:
            return CONTINUE
        if not self.own.matches(ctx) or self.ported.matches(ctx):
            return CONTINUE
        if ctx.verified and ctx.spc in self._spcs:
            return CONTINUE
        return self.hit
