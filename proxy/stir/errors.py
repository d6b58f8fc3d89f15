"""Typed STIR failures, each carrying the SIP outcome REFERENCE.md assigns to its cause.

Every check that can fail raises (or records) one of these, never a bare exception, so that a malformed header
from the network maps to a 438 and not to a crash of the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    """A REFERENCE.md outcome row: SIP code and reason phrase."""

    MISSING = (428, "Use Identity Header")
    BAD_INFO = (436, "Bad Identity Info")
    BAD_CREDENTIAL = (437, "Unsupported Credential")
    INVALID = (438, "Invalid Identity Header")
    STALE = (403, "Stale Date")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed check: a stable machine name, a human detail, and the outcome it implies."""

    check: str
    detail: str
    outcome: Outcome

    @property
    def sip_code(self) -> int:
        return self.outcome.code

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "detail": self.detail, "sip_code": self.outcome.code}


class StirError(Exception):
    """Base of every STIR error; `failure` says which check failed and what SIP outcome follows."""

    outcome = Outcome.INVALID

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail

    @property
    def failure(self) -> Failure:
        return Failure(self.check, self.detail, self.outcome)

    @property
    def sip_code(self) -> int:
        return self.outcome.code


class TNError(StirError):
    """A telephone number that cannot be canonicalised (claims mismatch class: 438)."""


class IdentityHeaderError(StirError):
    """The Identity header value does not parse (438)."""


class PassportError(StirError):
    """The PASSporT JWS or its claims are malformed or of the wrong type (438)."""


class X5uError(StirError):
    """The x5u URL is not allowed or the certificate cannot be fetched (436)."""

    outcome = Outcome.BAD_INFO


class CredentialError(StirError):
    """The certificate is untrusted, expired, or lacks a usable TNAuthList (437)."""

    outcome = Outcome.BAD_CREDENTIAL


class StaleError(StirError):
    """iat or Date outside the freshness window (403 Stale Date)."""

    outcome = Outcome.STALE


class SigningError(Exception):
    """The signer's configuration or input is unusable (a local problem, not a SIP outcome)."""
