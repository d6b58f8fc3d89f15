"""anonymous: withheld or anonymous callers get 433 Anonymity Disallowed, a tag, or another route.

Anonymous is the From/PAI user `anonymous` (and its RFC 3323 friends), a Privacy header asking to hide the
identity (`id`, `user`, `header`), or, optionally, no usable caller number at all.
"""

from __future__ import annotations

from typing import Literal

from proxy.stir.tn import is_anonymous

from .actions import ActionParams, ActionPolicy, Verstat
from .base import CONTINUE, CallContext, Decision

__all__ = ["Anonymous", "is_withheld"]

_PRIVACY_HIDES = frozenset({"id", "user", "header"})


class AnonymousParams(ActionParams, frozen=True, kw_only=True):
    action: Literal["continue", "tag", "route", "reject", "throttle"] = "reject"
    code: int | None = 433
    verstat: Verstat | None = "No-TN-Validation"
    #: A Privacy header with id/user/header counts as withheld.
    privacy: bool = True
    #: A caller with no usable telephone number counts as anonymous.
    no_number: bool = True


def is_withheld(ctx: CallContext, privacy: bool = True, no_number: bool = True) -> bool:
    if privacy:
        for value in ctx.headers.get("privacy", ()):
            for token in value.replace(",", ";").split(";"):
                if token.strip().lower() in _PRIVACY_HIDES:
                    return True
    if ctx.orig_tn is None:
        if no_number:
            return True
        if ctx.orig is not None and is_anonymous(ctx.orig):
            return True
    for name in ("from", "p-asserted-identity"):
        for value in ctx.headers.get(name, ()):
            low = value.lower()
            if ("anonymous" in low or "restricted" in low or "unavailable" in low or "unknown" in low) and (
                is_anonymous(value)
            ):
                return True
    return False


class Anonymous(ActionPolicy):
    """Anonymous or withheld caller -> the configured action (default: 433 Anonymity Disallowed)."""

    Params = AnonymousParams

    def evaluate(self, ctx: CallContext) -> Decision:
        p = self.params
        return self.hit if is_withheld(ctx, p.privacy, p.no_number) else CONTINUE
