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

from proxy.stir.tn import user_part

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, Decision

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
        forms = frozenset(params.unprefixed)
        self._forms = None if forms == frozenset(_ALL_FORMS) else forms

    def evaluate(self, ctx: CallContext) -> Decision:
        orig, dest = ctx.orig_tn, ctx.dest_tn
        if self._same and orig is not None and orig == dest:
            return self._hits["orig_equals_dest"]
        if self._orig and orig is not None:
            problem = self._unprefixed(ctx.orig) or nanp_problem(orig, *self._args)
            if problem:
                return self._hits[problem]
        if self._dest and dest is not None:
            problem = self._unprefixed(ctx.dest) or nanp_problem(dest, *self._args)
            if problem:
                return self._hits[problem]
        return CONTINUE

    def _unprefixed(self, signalled: str | None) -> str | None:
        """`length` when the number was written without `+` in a form the numbering plan does not allow."""
        forms = self._forms
        if forms is None or signalled is None or "length" not in self._checks:
            return None
        user = user_part(signalled)[0].split(";", 1)[0]
        if user.startswith("+"):
            return None
        digits = "".join(c for c in user if c.isdigit())
        if not digits:
            return None
        n = len(digits)
        if ("national" in forms and n == 10) or ("nanp_1" in forms and n == 11 and digits[0] == "1"):
            return None
        p = self.params
        if "international" in forms and p.min_length <= n <= p.max_length:
            return None
        return "length"
