"""invalid_numbers: caller (or callee) numbers that cannot exist in the NANP, and orig equal to dest.

Robocallers spoof numbers nobody can own: N11 codes, an NPA or NXX starting 0 or 1, the fictional
555-0100..0199 range, wrong lengths, all one digit. A caller calling its own number is the same trick.
Numbers of other countries get only the length and same-digit checks. `unprefixed` says how a number
written without `+` is read in the operator's numbering plan: only as 10 national digits, as `1` + 10, or as
an international number without its `+`; a 7-, 9- or 11-digit form that fits none is invalid (`length`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .actions import ActionParams, ActionPolicy
from .base import CallContext, Decision
from .numbering import NumberChecks, nanp_problem

__all__ = ["InvalidNumbers", "nanp_problem"]

Check = Literal["n11", "leading_0_1", "fictional_555", "length", "same_digit", "orig_equals_dest"]
Unprefixed = Literal["national", "nanp_1", "international"]
_ALL_FORMS: tuple[Unprefixed, ...] = ("national", "nanp_1", "international")
_ALL_CHECKS: tuple[Check, ...] = ("n11", "leading_0_1", "fictional_555", "length", "same_digit",
                                  "orig_equals_dest")


class InvalidNumbersParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    checks: list[Check] = msgspec.field(default_factory=lambda: list(_ALL_CHECKS))
    #: Which numbers the NANP checks apply to.
    apply_to: list[Literal["orig", "dest"]] = msgspec.field(default_factory=lambda: ["orig"])
    #: Numbers outside the NANP: shorter or longer than these are invalid (E.164 allows up to 15 digits).
    min_length: int = 7
    max_length: int = 15
    #: A 10-digit number without country code is taken as NANP national (stirgate without country_code).
    national_nanp: bool = True
    #: How a number written without `+` may be read: `national` (10 NANP digits), `nanp_1` (1 + 10 digits),
    #: `international` (an E.164 number missing its `+`, min_length..max_length). Fitting none is `length`.
    unprefixed: list[Unprefixed] = msgspec.field(default_factory=lambda: list(_ALL_FORMS))


class InvalidNumbers(ActionPolicy):
    """An impossible caller number, or orig == dest -> the configured action (default: reject 603)."""

    Params = InvalidNumbersParams

    def __init__(self, params: InvalidNumbersParams) -> None:
        super().__init__(params)
        forms = frozenset(params.unprefixed)
        #: The checks, compiled (policies/numbering.py).
        self._checks = NumberChecks(
            frozenset(params.checks), frozenset(params.apply_to), params.min_length, params.max_length,
            params.national_nanp, None if forms == frozenset(_ALL_FORMS) else forms,
            {c: params.decision(note=f"invalid_numbers:{c}") for c in _ALL_CHECKS})
        #: What the chain calls for each call, in place of this object's own method.
        self.per_call = self._checks

    def evaluate(self, ctx: CallContext) -> Decision:
        return self._checks.decide(ctx)
