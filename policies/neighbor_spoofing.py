"""neighbor_spoofing: a caller sharing the callee's NPA-NXX (the classic robocall trick of looking local)
without full attestation is tagged or routed.

Genuine neighbours exist, so the default is a tag, and attestation A (the signer vouches for the number)
exempts the call.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .actions import ActionParams, ActionPolicy
from .base import CONTINUE, CallContext, Decision

__all__ = ["NeighborSpoofing"]


class NeighborSpoofingParams(ActionParams, frozen=True, kw_only=True):
    display_prefix: str | None = "SPAM? "
    #: National digits compared after the country code: 6 = NPA-NXX, 3 = NPA only.
    digits: int = 6
    country_code: str = "1"
    #: National number length (10 for NANP): numbers of other lengths are not compared.
    national_length: int = 10
    #: Passed verification with one of these levels exempts the call.
    exempt_attestation: list[Literal["A", "B", "C"]] = msgspec.field(default_factory=lambda: ["A"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.digits <= self.national_length:
            raise ValueError("digits: between 1 and national_length")
        if not self.country_code.isdigit():
            raise ValueError("country_code: digits only")


class NeighborSpoofing(ActionPolicy):
    """orig and dest share `digits` national digits, not exempt -> the configured action (default: tag with
    the "SPAM? " display prefix)."""

    Params = NeighborSpoofingParams

    def __init__(self, params: NeighborSpoofingParams) -> None:
        super().__init__(params)
        self._cc = params.country_code
        self._len = len(params.country_code) + params.national_length
        self._end = len(params.country_code) + params.digits
        self._exempt = frozenset(params.exempt_attestation)

    def evaluate(self, ctx: CallContext) -> Decision:
        orig, dest = ctx.orig_tn, ctx.dest_tn
        if orig is None or dest is None or len(orig) != self._len or len(dest) != self._len:
            return CONTINUE
        end = self._end
        if orig[:end] != dest[:end] or not orig.startswith(self._cc):
            return CONTINUE
        v = ctx.verification
        if v is not None and v.status == "passed" and ctx.attest in self._exempt:
            return CONTINUE
        return self.hit
