"""The numbering-plan checks of `invalid_numbers` on plain values, compiled with mypyc (proxy/compiled.py):
they run on every call of a chain that has the policy. `policies.invalid_numbers` reads the parameters."""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Final

from proxy.stir.tn import user_part

from .context import CONTINUE, CallContext, Decision

__all__ = ["NumberChecks", "nanp_problem", "unprefixed_problem"]


def nanp_problem(tn: str, checks: Container[str], min_length: int = 7, max_length: int = 15,
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


def unprefixed_problem(signalled: str, forms: Container[str], min_length: int, max_length: int) -> bool:
    """Whether a number as signalled is written without `+` in a form `forms` does not allow: 10 digits
    (`national`), `1` + 10 digits (`nanp_1`), `min_length`..`max_length` digits (`international`)."""
    user = user_part(signalled)[0].split(";", 1)[0]
    if user.startswith("+"):
        return False
    if user.isascii() and user.isdigit():  # the usual spelling: digits only
        n = len(user)
        first = user[0]
    else:
        n = 0
        first = ""
        for c in user:
            if ("0" <= c <= "9") if c <= "\x7f" else c.isdigit():
                if n == 0:
                    first = c
                n += 1
    if n == 0:
        return False
    if ("national" in forms and n == 10) or ("nanp_1" in forms and n == 11 and first == "1"):
        return False
    return not ("international" in forms and min_length <= n <= max_length)


class NumberChecks:
    """One `invalid_numbers` entry's settings and its verdict on a call: the decision of the first check that
    fails (orig equal to dest, then the caller's number, then the callee's), else `continue`."""

    __slots__ = ("checks", "dest", "forms", "hits", "max_length", "min_length", "national_nanp", "orig", "same")

    def __init__(self, checks: frozenset[str], apply_to: Container[str], min_length: int, max_length: int,
                 national_nanp: bool, forms: frozenset[str] | None, hits: Mapping[str, Decision]) -> None:
        self.checks: Final = checks
        self.orig: Final = "orig" in apply_to
        self.dest: Final = "dest" in apply_to
        self.same: Final = "orig_equals_dest" in checks
        self.min_length: Final = min_length
        self.max_length: Final = max_length
        self.national_nanp: Final = national_nanp
        #: The forms a number without `+` may take; None: any (nothing to check).
        self.forms: Final = forms if "length" in checks else None
        self.hits: Final = dict(hits)

    def evaluate(self, ctx: CallContext) -> Decision:
        """The chain's entry point."""
        return self.decide(ctx)

    def decide(self, ctx: CallContext) -> Decision:
        orig, dest = ctx.orig_tn, ctx.dest_tn
        if self.same and orig is not None and orig == dest:
            return self.hits["orig_equals_dest"]
        if self.orig and orig is not None:
            problem = self._problem(orig, ctx.orig)
            if problem:
                return self.hits[problem]
        if self.dest and dest is not None:
            problem = self._problem(dest, ctx.dest)
            if problem:
                return self.hits[problem]
        return CONTINUE

    def _problem(self, tn: str, signalled: str | None) -> str | None:
        forms = self.forms
        if forms is not None and signalled is not None and unprefixed_problem(
                signalled, forms, self.min_length, self.max_length):
            return "length"
        return nanp_problem(tn, self.checks, self.min_length, self.max_length, self.national_nanp)
