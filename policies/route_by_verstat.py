"""route_by_verstat: calls that failed verification, or came unsigned, go to another trunk list (an
analytics platform, a voicemail or IVR trunk) instead of the routing table's choice.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import CONTINUE, BasePolicy, CallContext, Decision, Params

__all__ = ["RouteByVerstat"]


class RouteByVerstatParams(Params, frozen=True, kw_only=True):
    #: Trunks for calls whose verification failed.
    failed: list[str] = []
    #: Trunks for calls without an Identity header (verified trunks).
    missing: list[str] = []
    #: Trunks for calls that passed.
    passed: list[str] = []
    #: Trunks for calls from trunks that do not verify.
    unverified: list[str] = []

    def __post_init__(self) -> None:
        if not (self.failed or self.missing or self.passed or self.unverified):
            raise ValueError("route_by_verstat needs at least one of failed, missing, passed, unverified")


class RouteByVerstat(BasePolicy):
    """Verification status -> route to that status's trunk list (statuses without one continue)."""

    Params = RouteByVerstatParams

    def __init__(self, params: RouteByVerstatParams) -> None:
        super().__init__(params)
        self._routes: dict[str | None, Decision] = {}
        for status, trunks in (("failed", params.failed), ("missing", params.missing),
                               ("passed", params.passed), (None, params.unverified)):
            if trunks:
                self._routes[status] = Decision.route(trunks, note=f"route_by_verstat:{status or 'unverified'}")

    def evaluate(self, ctx: CallContext) -> Decision:
        v = ctx.verification
        return self._routes.get(v.status if v is not None else None, CONTINUE)

    def route_targets(self) -> Iterable[str]:
        return [t for d in self._routes.values() for t in d.trunks]
