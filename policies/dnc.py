"""dnc: calls to numbers on a do-not-call list are rejected or tagged, unless they carry full attestation
from a signer the carrier trusts (a bank's fraud alert to a registered number is wanted).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, DataFile, Decision
from .numbers import NumberSet, load_numbers

__all__ = ["Dnc"]


class DncParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    code: int | None = 607
    file: DataFile | None = None
    numbers: list[str] = []
    #: A passed verification with one of these levels from one of these SPCs is let through ("*": any SPC).
    exempt_attestation: list[Literal["A", "B", "C"]] = msgspec.field(default_factory=lambda: ["A"])
    exempt_spcs: list[str] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.file is None and not self.numbers:
            raise ValueError("dnc needs `file` or `numbers`")


class Dnc(ActionPolicy):
    """dest on the list and not exempt -> the configured action (default: 607 Unwanted)."""

    Params = DncParams

    def __init__(self, params: DncParams, env: Any = None) -> None:
        super().__init__(params)
        self._tn_policy = getattr(env, "tn_policy", None)
        args = () if self._tn_policy is None else (self._tn_policy,)
        self.sets: list[NumberSet] = [NumberSet.from_iterable(params.numbers, *args)] if params.numbers else []
        self._exempt_attest = frozenset(params.exempt_attestation)
        self._exempt_spcs = frozenset(s.lower() for s in params.exempt_spcs)
        self._any_spc = "*" in self._exempt_spcs

    async def setup(self) -> None:
        if self.params.file is not None:
            path = self.params.file
            args = () if self._tn_policy is None else (self._tn_policy,)
            self.sets.append(await asyncio.to_thread(load_numbers, path, *args))

    def evaluate(self, ctx: CallContext) -> Decision:
        dest = ctx.dest_tn
        if dest is None or not any(dest in s for s in self.sets):
            return CONTINUE
        if self._exempt_spcs and ctx.verified and ctx.attest in self._exempt_attest and (
            self._any_spc or (ctx.spc or "").lower() in self._exempt_spcs
        ):
            return CONTINUE
        return self.hit
