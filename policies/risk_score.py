"""risk_score: campaigns, not single calls. Weighted signals about the call's gateway and number -> a 0-100
risk score with its reasons -> an action by threshold (tag at 50, block at 90 by default).

Why per gateway: campaigns rotate caller IDs (2,687 campaigns averaging 13 calls, caller IDs rarely reused:
NCSU 2020), so per-number counters never fill. The evidence sits with the gateway that carries them: the
SHAKEN origid when the call verified, else the source address (configurable, `gateway`), as *shares* over a
sliding window: how many of its calls came from numbers never seen before, were short, went unanswered,
matched the callee's NPA-NXX, were attested C or failed verification, walked a number range. Legitimate
traffic that looks like robocalls (pharmacies, schools: volume, many destinations, short calls) keeps its
numbers and its attestation, so no single signal decides: the score adds them up (ROBO-SPOT, TransNexus).

Every decision says why: the note lists the signals that scored, with their values and the gateway
(`risk 74: first_seen_share 0.93 +35, short_share 0.71 +18 ... (origid 6c1e..., 14 calls)`), in logs and call
records, in dry-run too (run report-only first: the first-seen signal needs a learning period of
`seen_ttl`-scale history before enforcing).

State (policies.state): per call one Claim (the number seen network-wide), one Tally of the gateway's
counters and one of its short window (calls from never-seen numbers, for bursts), two Recent lists (the
gateway's and the number's last destinations) and two feedback Tallies, less those only a signal of weight 0
would read; when the call ends, one Tally (ended, answered, short), its bits worked out while scoring and kept
with the call. The number's ops and the gateway's each go as one Group: one entry per number and per gateway in
memory, found with one lookup. Memory or Redis, like replay and velocity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from .actions import ActionParams
from .base import CONTINUE, BasePolicy, CallContext, CallOutcome, Decision, Params
from .keys import key_getter
from .lists import ListSpec, MatchSet
from .risk_core import FEEDBACK_FIELDS, GATEWAY_FIELDS, RiskCore, sweep_share
from .state import Op

__all__ = ["FEEDBACK_FIELDS", "GATEWAY_FIELDS", "RiskScore", "sweep_share"]

SignalName = Literal[
    "first_seen_share", "novel_unanswered_share", "novel_short_share", "novel_neighbor_share", "novel_neighbor",
    "short_share", "unanswered_share", "neighbor_share", "attest_c_share",
    "attest_b_share", "unsigned_share", "failed_share", "sweep", "orig_sweep", "reports",
    "attest_c", "unsigned", "failed", "neighbor", "first_seen", "novel_burst",
]


class Signal(Params, frozen=True, kw_only=True):
    """`weight` points when the signal's value reaches `high`, none at or below `low`, linear between."""

    weight: float
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.high <= self.low:
            raise ValueError("a signal needs weight >= 0 and high > low")


def _signals() -> dict[SignalName, Signal]:
    return {
        # shares of the gateway's calls in the window (counted once it has min_calls)
        "first_seen_share": Signal(weight=35, low=0.35, high=0.8),
        # how the gateway's calls from never-seen numbers ended: scored on a call from a never-seen number.
        # A gateway that mixes a campaign into legitimate traffic shows it here (its regular callers are known).
        "novel_unanswered_share": Signal(weight=25, low=0.45, high=0.7),
        "novel_short_share": Signal(weight=20, low=0.3, high=0.55),
        # of the gateway's calls from never-seen numbers, those matching the callee's NPA-NXX (neighbour
        # spoofing hidden in a gateway's other traffic: genuine neighbours mostly call from known numbers)
        "novel_neighbor_share": Signal(weight=25, low=0.1, high=0.4),
        # a burst of never-seen numbers from the gateway: how many in the last `burst_window` against its usual
        # rate of them, as -log10 of the Poisson chance (3: one in a thousand); scored on a call from a
        # never-seen number. What tells a campaign from the legitimate traffic it shares a gateway with.
        "novel_burst": Signal(weight=35, low=1.5, high=3.0),
        "short_share": Signal(weight=25, low=0.35, high=0.75),
        "unanswered_share": Signal(weight=15, low=0.5, high=0.85),
        "neighbor_share": Signal(weight=25, low=0.12, high=0.4),
        "attest_c_share": Signal(weight=10, low=0.3, high=0.9),
        "attest_b_share": Signal(weight=25, low=0.5, high=0.9),
        "unsigned_share": Signal(weight=0, low=0.5, high=1.0),
        "failed_share": Signal(weight=20, low=0.1, high=0.5),
        # destinations walked in order or within one thousands-block (gateway's / the number's recent ones)
        "sweep": Signal(weight=60, low=0.4, high=0.8),
        "orig_sweep": Signal(weight=60, low=0.4, high=0.8),
        # robocall reports minus "wanted" labels (POST /feedback) for the gateway and the number
        "reports": Signal(weight=40, low=0.5, high=3),
        # this call alone
        "attest_c": Signal(weight=5),
        "unsigned": Signal(weight=0),
        "failed": Signal(weight=10),
        "neighbor": Signal(weight=5),
        "first_seen": Signal(weight=5),
        "novel_neighbor": Signal(weight=20),
    }


class Threshold(ActionParams, frozen=True, kw_only=True):
    """`at`: the score from which this action applies (the highest threshold reached wins)."""

    at: float


def _actions() -> list[Threshold]:
    return [
        Threshold(at=50, action="tag", display_prefix="SPAM? "),
        Threshold(at=90, action="reject", code=603, reason="Network Blocked",
                  reason_header='SIP;cause=603;text="Network Blocked"'),
    ]


class RiskScoreParams(Params, frozen=True, kw_only=True):
    #: Which key is the call's gateway: the first kind that has a value (key kinds of `velocity`).
    gateway: list[str] = msgspec.field(default_factory=lambda: ["origid", "source_ip"])
    #: Sliding window of the gateway's shares (seconds), in `buckets` buckets.
    window: float = 6 * 3600.0
    buckets: int = 12
    #: Gateway calls in the window before its shares count; answered/ended calls for short/unanswered.
    min_calls: int = 5
    min_ended: int = 5
    #: How long a number stays "seen" (first-seen share).
    seen_ttl: float = 30 * 86400.0
    short_call_seconds: float = 6.0
    #: Recent destinations looked at for sweeps, how many make a pattern, and how close is "sequential".
    sweep_depth: int = 8
    sweep_min: int = 5
    sweep_gap: int = 20
    #: How long POST /feedback labels count.
    feedback_window: float = 7 * 86400.0
    #: novel_burst: the short window (seconds, in `burst_buckets` buckets) in which calls from never-seen numbers
    #: are counted; the fewest of them due in it whatever the gateway's usual rate (a handful of new callers at
    #: a quiet gateway is no news); a call from a never-seen number below this surprise counts towards the
    #: usual rate (a campaign does not teach it its own rate), which is never taken below `burst_floor_share`
    #: of all the gateway's never-seen numbers over `window`.
    burst_window: float = 120.0
    burst_buckets: int = 6
    burst_min_expected: float = 1.0
    burst_learn_below: float = 1.5
    burst_floor_share: float = 0.25
    #: A neighbour match (caller in the callee's NPA-NXX) does not count when a passed verification has one of
    #: these attestations: the signer vouches that the caller may use that number (as neighbor_spoofing).
    neighbor_exempt_attest: list[Literal["A", "B", "C"]] = msgspec.field(default_factory=lambda: ["A"])
    #: Named signals replace the defaults (`weight: 0` turns one off); the others keep their defaults.
    signals: dict[SignalName, Signal] = {}
    actions: list[Threshold] = msgspec.field(default_factory=_actions)
    #: Calls matching these (known bulk callers, enterprise customers) are counted but not scored.
    allow: ListSpec = ListSpec()
    #: State namespace (entries with one scope share their counters); default: the policy's own.
    scope: str = "risk"
    #: Calls scoring at least this (and below every threshold) still get a note with their score, for
    #: tuning in the records; 0 notes every call.
    note_from: float = 20.0

    def __post_init__(self) -> None:
        for kind in self.gateway:
            key_getter(kind)
        if not self.gateway:
            raise ValueError("gateway needs at least one key kind")
        if self.window <= 0 or self.buckets < 1 or self.min_calls < 1 or self.min_ended < 1:
            raise ValueError("window, buckets, min_calls and min_ended must be positive")
        if self.burst_window <= 0 or self.burst_buckets < 1 or self.burst_min_expected <= 0:
            raise ValueError("burst_window, burst_buckets and burst_min_expected must be positive")
        if not 0 <= self.burst_floor_share <= 1:
            raise ValueError("burst_floor_share must be between 0 and 1")
        if not 2 <= self.sweep_min <= self.sweep_depth:
            raise ValueError("need 2 <= sweep_min <= sweep_depth")
        if not self.actions:
            raise ValueError("actions: at least one threshold")


class RiskScore(BasePolicy):
    """Score every call 0-100 from its gateway's and number's signals; the highest threshold reached decides
    (default: tag "SPAM? " at 50, 603 Network Blocked at 90). Below every threshold the call continues, its
    score still noted."""

    Params = RiskScoreParams

    def __init__(self, params: RiskScoreParams, env: Any = None) -> None:
        super().__init__(params)
        self._gateways = tuple((kind, key_getter(kind)) for kind in params.gateway)
        self._ns = f"risk:{params.scope}:"
        signals: dict[SignalName, Signal] = {**_signals(), **params.signals}
        #: The per-call work, on plain values (compiled: policies/risk_core.py).
        self._core = RiskCore(
            self._ns, self._gateways,
            [(name, s.weight, s.low, s.high) for name, s in signals.items() if s.weight > 0],
            window=params.window, buckets=params.buckets, min_calls=params.min_calls, min_ended=params.min_ended,
            seen_ttl=params.seen_ttl, short_call_seconds=params.short_call_seconds, sweep_depth=params.sweep_depth,
            sweep_min=params.sweep_min, sweep_gap=params.sweep_gap, feedback_window=params.feedback_window,
            thresholds=sorted(((t.at, t.decision(note="risk_score")) for t in params.actions), key=lambda x: -x[0]),
            note_from=params.note_from, burst_window=params.burst_window, burst_buckets=params.burst_buckets,
            burst_min_expected=params.burst_min_expected, burst_learn_below=params.burst_learn_below,
            burst_floor_share=params.burst_floor_share, neighbor_exempt=params.neighbor_exempt_attest,
        )  # fmt: skip
        #: What `on_error: closed` applies when the state did not come: the lowest threshold's action.
        self.hit: Decision = self._core.hit
        self.allow = MatchSet(params.allow, getattr(env, "tn_policy", None))
        self._has_allow = bool(self.allow)
        if self._has_allow:
            self._core.allow = self.allow.matches
        #: What the chain calls for each call (compiled), in place of this object's own methods.
        self.per_call = self._core

    async def setup(self) -> None:
        await asyncio.to_thread(self.allow.load)

    def route_targets(self) -> tuple[str, ...]:
        return tuple(n for t in self.params.actions if t.action == "route" for n in t.trunks)

    def gateway(self, ctx: CallContext) -> str | None:
        """The call's gateway key (`origid:...`, `source_ip:...`), None when no key kind has a value."""
        return self._core.keys(ctx)[0]

    # --- state ------------------------------------------------------------------------------------------
    def observe(self, ctx: CallContext) -> Sequence[Op]:
        return self._core.observe(ctx)

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> Sequence[Op]:
        if not outcome.reached:  # refused here: says nothing of how the called side answers
            return ()
        return self._core.end_ops(ctx, outcome.answered, outcome.duration, ctx.state_for(self))

    def gateway_from(self, values: dict[str, str | None]) -> str | None:
        """The gateway key of a past call from its recorded values by key kind (origid, source_ip, ...)."""
        for kind, _ in self._gateways:
            parts = [values.get(k) for k in kind.split("+")]
            if all(parts):
                return f"{kind}:{'|'.join(p for p in parts if p)}"
        return None

    def feedback(self, gateway: str | None, orig_tn: str | None, label: str) -> list[Op]:
        """What a POST /feedback label ("robocall" or "wanted") records for a call's gateway and number."""
        return self._core.feedback_ops(gateway, orig_tn, (1, 0) if label == "robocall" else (0, 1))

    # --- the score ----------------------------------------------------------------------------------------
    def evaluate(self, ctx: CallContext) -> Decision:
        if self._has_allow and self.allow.matches(ctx):
            return CONTINUE
        results = ctx.state_for(self)
        if not results:
            return CONTINUE
        return self._core.decide(ctx, results)
