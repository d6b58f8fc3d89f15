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
counters, two Recent lists (the gateway's and the number's last destinations) and two feedback Tallies;
when the call ends, one Tally (ended, answered, short). Memory or Redis, like replay and velocity.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import msgspec

from .actions import ActionParams
from .base import CONTINUE, BasePolicy, CallContext, CallOutcome, Decision, Params
from .filters import is_neighbor
from .keys import key_getter, national
from .lists import ListSpec, MatchSet
from .state import Claim, Op, Recent, Tally

__all__ = ["FEEDBACK_FIELDS", "GATEWAY_FIELDS", "RiskScore", "sweep_share"]

#: The gateway's counters, in the Tally's field order.
GATEWAY_FIELDS = ("calls", "first_seen", "attest_c", "attest_b", "unsigned", "failed", "neighbor", "ended",
                  "answered", "short", "novel_ended", "novel_answered", "novel_short", "novel_neighbor")
(_CALLS, _FIRST, _ATT_C, _ATT_B, _UNSIGNED, _FAILED, _NEIGHBOR, _ENDED, _ANSWERED, _SHORT, _NOVEL_ENDED,
 _NOVEL_ANSWERED, _NOVEL_SHORT, _NOVEL_NEIGHBOR) = range(14)
FEEDBACK_FIELDS = ("robocall", "wanted")

SignalName = Literal[
    "first_seen_share", "novel_unanswered_share", "novel_short_share", "novel_neighbor_share", "novel_neighbor",
    "short_share", "unanswered_share", "neighbor_share", "attest_c_share",
    "attest_b_share", "unsigned_share", "failed_share", "sweep", "orig_sweep", "reports",
    "attest_c", "unsigned", "failed", "neighbor", "first_seen",
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
        if not 2 <= self.sweep_min <= self.sweep_depth:
            raise ValueError("need 2 <= sweep_min <= sweep_depth")
        if not self.actions:
            raise ValueError("actions: at least one threshold")


def sweep_share(dests: Sequence[str], gap: int, minimum: int) -> float:
    """How much the recent destinations (10 national digits, newest first) look like a range being walked by
    this call: the larger of the share of consecutive pairs within `gap` of each other (sequential dialling)
    and the share in the commonest thousands-block (block-wise), over the distinct numbers. 0 with fewer than
    `minimum` distinct numbers, or when this call's destination does not continue the pattern (the cheap
    common case)."""
    if len(dests) < minimum:
        return 0.0
    newest, previous = dests[0], dests[1]
    if newest == previous or (newest[:7] != previous[:7] and abs(int(newest) - int(previous)) > gap):
        return 0.0
    distinct = list(dict.fromkeys(dests))  # calling one number again and again is not walking a range
    if len(distinct) < minimum:
        return 0.0
    values = [int(n) for n in distinct]
    close = sum(1 for a, b in pairwise(values) if abs(a - b) <= gap)
    blocks: dict[str, int] = {}
    for n in distinct:
        blocks[n[:7]] = blocks.get(n[:7], 0) + 1
    return max(close / (len(values) - 1), max(blocks.values()) / len(distinct))


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
        self._signals = {name: (s.weight, s.low, s.high) for name, s in signals.items() if s.weight > 0}
        self._thresholds = sorted(((t.at, t.decision(note="risk_score")) for t in params.actions),
                                  key=lambda x: -x[0])
        #: What `on_error: closed` applies when the state did not come: the lowest threshold's action.
        self.hit: Decision = self._thresholds[-1][1]
        self.allow = MatchSet(params.allow, getattr(env, "tn_policy", None))
        self._has_allow = bool(self.allow)
        #: The last call's (context, gateway, neighbour match): observe, evaluate and ended of one call ask
        #: in turn, usually with nothing in between.
        self._memo: tuple[object, str | None, bool] = (None, None, False)

    async def setup(self) -> None:
        await asyncio.to_thread(self.allow.load)

    def route_targets(self) -> tuple[str, ...]:
        return tuple(n for t in self.params.actions if t.action == "route" for n in t.trunks)

    # --- keys ---------------------------------------------------------------------------------------------
    def gateway(self, ctx: CallContext) -> str | None:
        memo = self._memo
        if memo[0] is ctx:
            return memo[1]
        gw = None
        for kind, get in self._gateways:
            value = get(ctx)
            if value is not None:
                gw = f"{kind}:{value}"
                break
        self._memo = (ctx, gw, is_neighbor(ctx))
        return gw

    def _neighbor(self, ctx: CallContext) -> bool:
        if self._memo[0] is not ctx:
            self.gateway(ctx)
        return self._memo[2]

    # --- state ------------------------------------------------------------------------------------------
    def observe(self, ctx: CallContext) -> Sequence[Op]:
        gw = self.gateway(ctx)
        if gw is None:
            return ()
        p = self.params
        ns = self._ns
        v = ctx.verification
        status = "none" if v is None else v.status
        verified = status == "passed"
        add = (1, 0, int(verified and ctx.attest == "C"), int(verified and ctx.attest == "B"),
               int(status == "missing"), int(status not in ("passed", "missing", "none")), int(self._neighbor(ctx)),
               0, 0, 0, 0, 0, 0, 0)
        orig = ctx.orig_tn
        dest = national(ctx.dest_tn)  # sweeps are judged on NANP numbers
        ops: list[Op] = []
        if orig is not None:
            ops.append(Claim(f"{ns}seen:{orig}", ctx.call_id, p.seen_ttl))
        ops.append(Tally(f"{ns}g:{gw}", GATEWAY_FIELDS, add, p.window, p.buckets,
                         add_if_claimed=_FIRST if orig is not None else -1))
        ops.append(Tally(f"{ns}f:{gw}", FEEDBACK_FIELDS, (0, 0), p.feedback_window))
        if dest is not None:
            ops.append(Recent(f"{ns}r:{gw}", dest, p.sweep_depth, p.window))
        if orig is not None:
            ops.append(Tally(f"{ns}f:tn:{orig}", FEEDBACK_FIELDS, (0, 0), p.feedback_window))
            if dest is not None:
                ops.append(Recent(f"{ns}o:{orig}", dest, p.sweep_depth, p.window))
        return ops

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> Sequence[Op]:
        gw = self.gateway(ctx)
        if gw is None or not outcome.reached:  # refused here: says nothing of how the called side answers
            return ()
        p = self.params
        answered = int(outcome.answered)
        short = int(outcome.answered and outcome.duration < p.short_call_seconds)
        results = ctx.state_for(self)
        novel = int(ctx.orig_tn is not None and results is not None and len(results) > 0 and results[0] is None)
        add = (0, 0, 0, 0, 0, 0, 0, 1, answered, short, novel, novel * answered, novel * short,
               novel * int(self._neighbor(ctx)))
        return (Tally(f"{self._ns}g:{gw}", GATEWAY_FIELDS, add, p.window, p.buckets),)

    def gateway_from(self, values: dict[str, str | None]) -> str | None:
        """The gateway key of a past call from its recorded values by key kind (origid, source_ip, ...)."""
        for kind, _ in self._gateways:
            parts = [values.get(k) for k in kind.split("+")]
            if all(parts):
                return f"{kind}:{'|'.join(p for p in parts if p)}"
        return None

    def feedback(self, gateway: str | None, orig_tn: str | None, label: str) -> list[Op]:
        """What a POST /feedback label ("robocall" or "wanted") records for a call's gateway and number."""
        add = (1, 0) if label == "robocall" else (0, 1)
        window = self.params.feedback_window
        ops: list[Op] = []
        if gateway is not None:
            ops.append(Tally(f"{self._ns}f:{gateway}", FEEDBACK_FIELDS, add, window))
        if orig_tn is not None:
            ops.append(Tally(f"{self._ns}f:tn:{orig_tn}", FEEDBACK_FIELDS, add, window))
        return ops

    # --- the score ----------------------------------------------------------------------------------------
    def signals(self, ctx: CallContext) -> tuple[dict[str, float], str, int]:
        """(signal name -> value, gateway key, gateway calls in the window) for this call."""
        results = ctx.state_for(self)
        gw = self.gateway(ctx)
        if not results or gw is None:
            return {}, gw or "", 0
        p = self.params
        orig, dest = ctx.orig_tn, national(ctx.dest_tn)
        i = 0
        first_seen = False
        if orig is not None:
            first_seen = results[0] is None  # this call claimed the number: never seen before
            i = 1
        g = results[i]
        fb = results[i + 1]
        i += 2
        gw_dests: Sequence[str] = ()
        orig_dests: Sequence[str] = ()
        tn_fb: Sequence[int] = (0, 0)
        if dest is not None:
            gw_dests = results[i]
            i += 1
        if orig is not None:
            tn_fb = results[i]
            i += 1
            if dest is not None:
                orig_dests = results[i]
        values: dict[str, float] = {}
        calls = g[_CALLS]
        if calls >= p.min_calls:
            values["first_seen_share"] = g[_FIRST] / calls
            values["attest_c_share"] = g[_ATT_C] / calls
            values["attest_b_share"] = g[_ATT_B] / calls
            values["unsigned_share"] = g[_UNSIGNED] / calls
            values["failed_share"] = g[_FAILED] / calls
            values["neighbor_share"] = g[_NEIGHBOR] / calls
        ended, answered = g[_ENDED], g[_ANSWERED]
        if ended >= p.min_ended:
            values["unanswered_share"] = 1.0 - answered / ended
        if answered >= p.min_ended:
            values["short_share"] = g[_SHORT] / answered
        if first_seen:
            novel_ended, novel_answered = g[_NOVEL_ENDED], g[_NOVEL_ANSWERED]
            if novel_ended >= p.min_ended:
                values["novel_unanswered_share"] = 1.0 - novel_answered / novel_ended
            if novel_answered >= p.min_ended:
                values["novel_short_share"] = g[_NOVEL_SHORT] / novel_answered
            if novel_ended >= p.min_ended:
                values["novel_neighbor_share"] = g[_NOVEL_NEIGHBOR] / novel_ended
        values["sweep"] = sweep_share(gw_dests, p.sweep_gap, p.sweep_min)
        values["orig_sweep"] = sweep_share(orig_dests, p.sweep_gap, p.sweep_min)
        values["reports"] = float(fb[0] + tn_fb[0] - fb[1] - tn_fb[1])
        v = ctx.verification
        status = "none" if v is None else v.status
        values["attest_c"] = float(status == "passed" and ctx.attest == "C")
        values["unsigned"] = float(status == "missing")
        values["failed"] = float(status not in ("passed", "missing", "none"))
        values["neighbor"] = float(self._neighbor(ctx))
        values["first_seen"] = float(first_seen)
        values["novel_neighbor"] = float(first_seen and values["neighbor"] > 0)
        return values, gw, calls

    def score(self, values: dict[str, float]) -> tuple[float, list[tuple[str, float, float]]]:
        """(score 0-100, [(signal, value, points)] for the signals that scored, most points first)."""
        total = 0.0
        parts: list[tuple[str, float, float]] = []
        for name, (weight, low, high) in self._signals.items():
            value = values.get(name)
            if value is None or value <= low:
                continue
            points = weight if value >= high else weight * (value - low) / (high - low)
            total += points
            parts.append((name, value, points))
        parts.sort(key=lambda x: -x[2])
        return min(100.0, total), parts

    def evaluate(self, ctx: CallContext) -> Decision:
        if self._has_allow and self.allow.matches(ctx):
            return CONTINUE
        values, gw, calls = self.signals(ctx)
        if not values:
            return CONTINUE
        total, parts = self.score(values)
        for at, decision in self._thresholds:
            if total >= at:
                return dataclasses.replace(decision, note=_explain(total, parts, gw, calls))
        if total >= self.params.note_from:
            return Decision(note=_explain(total, parts, gw, calls))
        return CONTINUE


_PER_CALL = frozenset({"attest_c", "unsigned", "failed", "neighbor", "first_seen", "novel_neighbor"})


def _explain(total: float, parts: list[tuple[str, float, float]], gateway: str, calls: int) -> str:
    reasons = ", ".join(f"{name} +{points:.0f}" if name in _PER_CALL else f"{name} {value:.2f} +{points:.0f}"
                        for name, value, points in parts)
    return f"risk {total:.0f}: {reasons or 'no signal'} ({gateway}, {calls} calls)"
