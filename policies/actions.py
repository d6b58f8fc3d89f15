"""The action parameters most built-ins share: what to do when the policy's condition holds.

One schema for "tag, route, reject or throttle" keeps the YAML the same across policies, and building the
Decision once at load time means `evaluate` returns a ready, shared object on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from .base import BasePolicy, Decision, Params

__all__ = ["PHRASES", "VERSTATS", "ActionParams", "ActionPolicy", "Verstat", "reason_phrase", "stir_reason"]

Verstat = Literal["TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation"]
VERSTATS: tuple[str, ...] = ("TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation")

PHRASES: dict[int, str] = {
    403: "Forbidden",
    404: "Not Found",
    428: "Use Identity Header",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
    607: "Unwanted",
    608: "Rejected",
}
#: Codes whose rejection carries an RFC 9410 `Reason: STIR;cause=...` header by default.
STIR_CODES = frozenset({428, 436, 437, 438})

_TOKEN = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+$")


def reason_phrase(code: int) -> str:
    return PHRASES.get(code, "Rejected" if code >= 600 else "Forbidden")


def stir_reason(code: int, text: str) -> str:
    """RFC 9410 Reason header value."""
    return f'STIR;cause={code};text="{text}"'


class ActionParams(Params, frozen=True, kw_only=True):
    """`action`: continue | tag | route | reject | throttle.

    reject: `code` (default 608 when `jcard_url` is set, else 603), `reason` (the code's usual phrase),
    `reason_header` (RFC 9410 value; STIR codes 428/433/436/437/438 get one by default), `jcard_url`
    (RFC 8688 `Call-Info: <url>;purpose=jcard`). throttle: 503 Service Unavailable with `Retry-After:
    retry_after`. route: `trunks`. tag: any of `verstat`, `display_prefix`, `attestation_indicator`,
    `add_headers`, `set_headers`.
    """

    action: Literal["continue", "tag", "route", "reject", "throttle"] = "tag"
    code: int | None = None
    reason: str | None = None
    reason_header: str | None = None
    jcard_url: str | None = None
    retry_after: int = 60
    trunks: list[str] = []
    verstat: Verstat | None = None
    display_prefix: str | None = None
    attestation_indicator: Literal["A", "B", "C"] | None = None
    add_headers: dict[str, str] = {}
    set_headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.code is not None and not 300 <= self.code <= 699:
            raise ValueError("code: a rejection code is 300-699")
        if self.action == "route" and not self.trunks:
            raise ValueError("action route needs `trunks`")
        if self.action == "tag" and not self._has_tags():
            raise ValueError(
                "action tag needs one of verstat, display_prefix, attestation_indicator, add_headers, set_headers"
            )
        if self.jcard_url is not None and not self.jcard_url.startswith(("https://", "http://")):
            raise ValueError("jcard_url must be an http(s) URL")
        if self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        for name in (*self.add_headers, *self.set_headers):
            if not _TOKEN.match(name):
                raise ValueError(f"not a header name: {name!r}")
        for value in (*self.add_headers.values(), *self.set_headers.values(), self.reason or ""):
            if "\r" in value or "\n" in value:
                raise ValueError("header values and reasons must be one line")

    def _has_tags(self) -> bool:
        return bool(
            self.verstat or self.display_prefix or self.attestation_indicator or self.add_headers
            or self.set_headers
        )

    def decision(self, note: str = "", *, code: int | None = None, reason: str | None = None) -> Decision:
        """The Decision this action stands for (`code`/`reason` override the configured ones, for policies
        whose natural code depends on the call, like a failed verification's own STIR code)."""
        action = self.action
        if action == "continue":
            return Decision(note=note)
        if action == "route":
            return Decision.route(self.trunks, note=note)
        if action == "throttle":
            return Decision.reject(503, self.reason or reason_phrase(503), retry_after=self.retry_after,
                                   note=note)
        if action == "reject":
            c = self.code or code or (608 if self.jcard_url else 603)
            text = self.reason or (reason if code is not None and self.code is None and reason else None)
            text = text or reason_phrase(c)
            rh = self.reason_header
            if rh is None and c in STIR_CODES:
                rh = stir_reason(c, text)
            return Decision.reject(c, text, reason_header=rh, jcard_url=self.jcard_url, note=note)
        return Decision.tag(
            verstat=self.verstat,
            display_prefix=self.display_prefix,
            attestation_indicator=self.attestation_indicator,
            add_headers=tuple(self.add_headers.items()),
            set_headers=tuple(self.set_headers.items()),
            note=note,
        )


class ActionPolicy(BasePolicy):
    """Base of the built-ins whose answer, when their condition holds, is their configured action: the
    Decision is built once here, so evaluate() returns a shared object."""

    params: Any

    def __init__(self, params: ActionParams) -> None:
        super().__init__(params)
        self.hit: Decision = params.decision(note=self.note())

    def note(self) -> str:
        return type(self).__module__.rpartition(".")[2]

    def route_targets(self) -> Iterable[str]:
        return tuple(self.params.trunks) if self.params.action == "route" else ()
