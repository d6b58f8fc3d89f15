"""What `replay` does per call, on plain values, compiled with mypyc (proxy/compiled.py): the PASSporT
signatures claimed, and whether another call held one. `policies.replay` reads the parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from .context import CONTINUE, CallContext, Decision
from .state import Claim, Op

__all__ = ["ReplayCore", "signatures"]


def signatures(values: Iterable[str]) -> list[str]:
    """The JWS signature of every full-form Identity header value (compact or garbled ones are skipped)."""
    out: list[str] = []
    for value in values:
        for part in value.split(",") if "," in value else (value,):
            semi = part.find(";")
            token = (part if semi < 0 else part[:semi]).strip().strip("<>")
            if token.count(".") == 2:
                sig = token[token.rfind(".") + 1:]
                if len(sig) >= 16:
                    out.append(sig)
    return out


class ReplayCore:
    """One `replay` entry: its key prefix, how long a claim lasts, what a replay gets."""

    __slots__ = ("hit", "prefix", "window")

    def __init__(self, prefix: str, window: float, hit: Decision) -> None:
        self.prefix: Final = prefix
        self.window: Final = window
        self.hit: Final = hit

    def observe(self, ctx: CallContext) -> Sequence[Op]:
        values = ctx.headers.get("identity")
        if not values:
            return ()
        return [Claim(self.prefix + sig, ctx.call_id, self.window) for sig in signatures(values)]

    def evaluate(self, ctx: CallContext) -> Decision:
        """The chain's entry point (facts keyed by this core)."""
        return self.decide(ctx.state_for(self))

    def decide(self, results: Sequence[Any] | None) -> Decision:
        if results is not None:
            for held in results:
                if held is not None:
                    return self.hit
        return CONTINUE
