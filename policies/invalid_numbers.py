"""invalid_numbers: caller (or callee) numbers that cannot exist in the NANP, and orig equal to dest.

Robocallers spoof numbers nobody can own: N11 codes, an NPA or NXX starting 0 or 1, the fictional
555-0100..0199 range, wrong lengths, all one digit. A caller calling its own number is the same trick.
Numbers of other countries get only the length and same-digit checks.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, Decision

__all__ = ["InvalidNumbers", "nanp_problem"]

Check = Literal["n11", "leading_0_1", "fictional_555", "length", "same_digit", "orig_equals_dest"]
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


def nanp_problem(tn: str, checks: frozenset[str], min_length: int = 7, max_length: int = 15,
                 national_nanp: bool = True) -> str | None:
    """Why a canonical TN is invalid (the check's name), or None."""
    if not tn.isdigit():
        return None
    if tn[0] == "1":
        national: str | None = tn[1:]
    elif national_nanp and len(tn) == 10:
        national = tn
    else:
        national = None
    if national is None:
        if "length" in checks and not min_length <= len(tn) <= max_length:
            return "length"
        if "same_digit" in checks and tn.count(tn[0]) == len(tn):
            return "same_digit"
        return None
    if len(national) != 10:
        return "length" if "length" in checks else None
    npa, nxx, line = national[:3], national[3:6], national[6:]
    if "same_digit" in checks and national.count(national[0]) == 10:
        return "same_digit"
    if "leading_0_1" in checks and (npa[0] in "01" or nxx[0] in "01"):
        return "leading_0_1"
    if "n11" in checks and (npa[1:] == "11" or nxx[1:] == "11"):
        return "n11"
    if "fictional_555" in checks and nxx == "555" and line[:2] == "01":
        return "fictional_555"
    return None


class InvalidNumbers(ActionPolicy):
    """An impossible caller number, or orig == dest -> the configured action (default: reject 603)."""

    Params = InvalidNumbersParams

    def __init__(self, params: InvalidNumbersParams) -> None:
        super().__init__(params)
        self._checks = frozenset(params.checks)
        self._orig = "orig" in params.apply_to
        self._dest = "dest" in params.apply_to
        self._same = "orig_equals_dest" in self._checks
        self._args = (self._checks, params.min_length, params.max_length, params.national_nanp)
        self._hits: dict[str, Decision] = {c: params.decision(note=f"invalid_numbers:{c}") for c in _ALL_CHECKS}

    def evaluate(self, ctx: CallContext) -> Decision:
        orig, dest = ctx.orig_tn, ctx.dest_tn
        if self._same and orig is not None and orig == dest:
            return self._hits["orig_equals_dest"]
        if self._orig and orig is not None:
            problem = nanp_problem(orig, *self._args)
            if problem:
                return self._hits[problem]
        if self._dest and dest is not None:
            problem = nanp_problem(dest, *self._args)
            if problem:
                return self._hits[problem]
        return CONTINUE
