"""risk_score's per-call work on plain values: the call's keys, its state ops, its signals and their score.

Compiled with mypyc (proxy/compiled.py), as the engine is: the score runs on every call, and interpreted it cost
more than the rest of the chain. So this module holds no msgspec structs (msgspec reads annotations at run
time); `policies.risk_score` reads and checks the parameters and hands the values here. Pure Python works the
same, only slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from .context import CONTINUE, CallContext, CallOutcome, Decision
from .state import Claim, Group, Op, Part, Recent, Tally

__all__ = ["BURST_FIELDS", "FEEDBACK_FIELDS", "GATEWAY_FIELDS", "PER_CALL", "SIGNALS", "RiskCore", "explain",
           "poisson_surprise", "sweep_share"]

#: The gateway's counters, in the Tally's field order.
GATEWAY_FIELDS: Final = ("calls", "first_seen", "attest_c", "attest_b", "unsigned", "failed", "neighbor", "ended",
                         "answered", "short", "novel_ended", "novel_answered", "novel_short", "novel_neighbor",
                         "novel_quiet")
_CALLS: Final = 0
_FIRST: Final = 1
_ATT_C: Final = 2
_ATT_B: Final = 3
_UNSIGNED: Final = 4
_FAILED: Final = 5
_NEIGHBOR: Final = 6
_ENDED: Final = 7
_ANSWERED: Final = 8
_SHORT: Final = 9
_NOVEL_ENDED: Final = 10
_NOVEL_ANSWERED: Final = 11
_NOVEL_SHORT: Final = 12
_NOVEL_NEIGHBOR: Final = 13
#: Calls from never-seen numbers that reached the called side outside a burst: the gateway's usual rate of them.
_NOVEL_QUIET: Final = 14
FEEDBACK_FIELDS: Final = ("robocall", "wanted")
#: The gateway's short window (novel_burst): calls from never-seen numbers.
BURST_FIELDS: Final = ("first_seen",)


def _call_adds(bits: int) -> tuple[int, ...]:
    """What a call adds to its gateway's counters (bits: attest C, attest B, unsigned, failed, neighbour)."""
    c, b, u, f, n = (bits >> k & 1 for k in range(5))
    return (1, 0, c, b, u, f, n, 0, 0, 0, 0, 0, 0, 0, 0)


def _end_adds(bits: int) -> tuple[int, ...]:
    """What an ended call adds (bits: answered, short, from a never-seen number, neighbour, novel outside a
    burst)."""
    a, s, novel, n, quiet = (bits >> k & 1 for k in range(5))
    return (0, 0, 0, 0, 0, 0, 0, 1, a, s, novel, novel * a, novel * s, novel * n, novel * quiet)


#: Every combination, made once: the tallies' increments without a new tuple per call.
_CALL_ADDS: Final = tuple(_call_adds(bits) for bits in range(32))
_END_ADDS: Final = tuple(_end_adds(bits) for bits in range(32))
_BURST_ADD: Final = (0,)
_NO_FEEDBACK: Final = (0, 0)


def _names(parts: tuple[str, ...], present: int) -> tuple[str, ...]:
    """The names of the parts whose bit is set in `present`, in order."""
    return tuple(name for k, name in enumerate(parts) if present >> k & 1)


# What a group's parts are filed under in the memory store (policies.state.Group.names): a gateway's counters,
# short window, feedback and recent destinations; a number's claim, feedback and recent destinations. The first
# part is always there; the table is indexed by which of the others are (bit 0: the second part, ...).
# A feedback label lands under the same name in either (`feedback_ops`).
_FEEDBACK_PART: Final = "fb"
_GATEWAY_PARTS: Final = ("calls", "burst", _FEEDBACK_PART, "rec")
_GATEWAY_NAMES: Final = tuple(_names(_GATEWAY_PARTS, 1 | bits << 1) for bits in range(8))
_NUMBER_PARTS: Final = ("seen", _FEEDBACK_PART, "rec")
_NUMBER_NAMES: Final = tuple(_names(_NUMBER_PARTS, 1 | bits << 1) for bits in range(4))
_FEEDBACK_NAMES: Final = (_FEEDBACK_PART,)
#: Gateways remembered per key kind before the memory starts again (origids and addresses: a few hundred).
_KNOWN_MAX: Final = 4096

#: Every signal, in the order of the value list `RiskCore.values` fills.
SIGNALS: Final = (
    "first_seen_share", "novel_unanswered_share", "novel_short_share", "novel_neighbor_share", "novel_neighbor",
    "short_share", "unanswered_share", "neighbor_share", "attest_c_share", "attest_b_share", "unsigned_share",
    "failed_share", "sweep", "orig_sweep", "reports", "attest_c", "unsigned", "failed", "neighbor", "first_seen",
    "novel_burst",
)
# Indexes into SIGNALS (Final: constants in the compiled code).
_S_FIRST_SHARE: Final = 0
_S_NOVEL_UNANSWERED: Final = 1
_S_NOVEL_SHORT: Final = 2
_S_NOVEL_NEIGHBOR_SHARE: Final = 3
_S_NOVEL_NEIGHBOR: Final = 4
_S_SHORT: Final = 5
_S_UNANSWERED: Final = 6
_S_NEIGHBOR_SHARE: Final = 7
_S_ATT_C_SHARE: Final = 8
_S_ATT_B_SHARE: Final = 9
_S_UNSIGNED_SHARE: Final = 10
_S_FAILED_SHARE: Final = 11
_S_SWEEP: Final = 12
_S_ORIG_SWEEP: Final = 13
_S_REPORTS: Final = 14
_S_ATT_C: Final = 15
_S_UNSIGNED: Final = 16
_S_FAILED: Final = 17
_S_NEIGHBOR: Final = 18
_S_FIRST: Final = 19
_S_NOVEL_BURST: Final = 20
#: Signals about this call alone: their value (1) is not shown in the explanation.
PER_CALL: Final = frozenset({"attest_c", "unsigned", "failed", "neighbor", "first_seen", "novel_neighbor"})
#: A value the call does not have (too few calls for a share): scores nothing whatever its signal's `low`.
_ABSENT: Final = float("-inf")

KeyGetter = Callable[[CallContext], str | None]


def _national(tn: str | None) -> str | None:
    """The 10 national digits of a NANP number (as `policies.keys.national`)."""
    if tn is None:
        return None
    if len(tn) == 11 and tn[0] == "1":
        return tn[1:]
    return tn if len(tn) == 10 else None


def covered(span: float, buckets: int, now: float) -> float:
    """How many seconds a bucketed window of `span` in `buckets` buckets holds at `now` (policies.state.Tally
    slides a bucket at a time: the oldest bucket has left, the current one is partly filled)."""
    width = span / buckets
    return (buckets - 1) * width + (now - math.floor(now / width) * width)


def poisson_surprise(k: int, expected: float) -> float:
    """How surprising `k` or more events are where `expected` were due (Poisson): -log10 of that probability,
    e.g. 3.0 for a one-in-a-thousand count; 0 when `k` is not above `expected`."""
    if k <= expected or expected <= 0.0:
        return 0.0
    # P(X >= k): the tail's terms from k on, each a fraction expected / i < 1 of the one before.
    term = math.exp(-expected + k * math.log(expected) - math.lgamma(k + 1.0))
    tail = 0.0
    i = k
    while term > tail * 1e-6:
        tail += term
        i += 1
        term *= expected / i
    if tail <= 1e-300:
        return 300.0
    return -math.log10(tail) if tail < 1.0 else 0.0


def sweep_share(dests: Sequence[str], gap: int, minimum: int) -> float:
    """How much the recent destinations (10 national digits, newest first) look like a range being walked by
    this call: the larger of the share of consecutive pairs within `gap` of each other (sequential dialling)
    and the share in the commonest thousands-block (block-wise), over the distinct numbers. 0 with fewer than
    `minimum` distinct numbers, or when this call's destination does not continue the pattern (the cheap
    common case)."""
    if len(dests) < minimum:
        return 0.0
    newest, previous = dests[0], dests[1]
    if newest == previous:
        return 0.0
    a, b = int(newest), int(previous)  # 10 digits: the same thousands-block is the same a // 1000
    if a // 1000 != b // 1000 and abs(a - b) > gap:
        return 0.0
    distinct = list(dict.fromkeys(dests))  # calling one number again and again is not walking a range
    if len(distinct) < minimum:
        return 0.0
    values = [int(n) for n in distinct]
    close = 0
    for k in range(1, len(values)):
        if abs(values[k - 1] - values[k]) <= gap:
            close += 1
    blocks: dict[str, int] = {}
    for n in distinct:
        blocks[n[:7]] = blocks.get(n[:7], 0) + 1
    return max(close / (len(values) - 1), max(blocks.values()) / len(distinct))


#: Numbers as the explanation shows them, by value: shares are ratios of small counts and points follow from
#: them, so the same few values come back call after call, and formatting a float costs ~10 times a lookup.
_SHOWN: Final[dict[float, str]] = {}
#: Points and scores as shown: whole numbers, mostly 0-100.
_WHOLE_MAX: Final = 1000.0
_WHOLES: Final = [str(n) for n in range(int(_WHOLE_MAX) + 1)]
_SHOWN_MAX: Final = 4096


def _shown(value: float) -> str:
    """`value` with two decimals."""
    text = _SHOWN.get(value)
    if text is None:
        if len(_SHOWN) >= _SHOWN_MAX:
            _SHOWN.clear()
        text = _SHOWN[value] = f"{value:.2f}"
    return text


def _whole(value: float) -> str:
    """`value` rounded to a whole number (as `f"{value:.0f}"`: both round half to even)."""
    if 0.0 <= value <= _WHOLE_MAX:
        return _WHOLES[round(value)]
    return f"{value:.0f}"


def explain(total: float, parts: Sequence[tuple[str, float, float]], gateway: str, calls: int) -> str:
    """`risk 74: first_seen_share 0.93 +35, attest_c +5 (origid:6c1e..., 14 calls)`"""
    reasons = ", ".join(f"{name} +{_whole(points)}" if name in PER_CALL else f"{name} {_shown(value)} +{_whole(points)}"
                        for name, value, points in parts)
    return f"risk {_whole(total)}: {reasons or 'no signal'} ({gateway}, {calls} calls)"


def _points(part: tuple[str, float, float]) -> float:
    return -part[2]


class _Signal:
    """A signal that counts: `weight` points at `high` and above, none at `low` and below, linear between."""

    __slots__ = ("high", "index", "low", "name", "weight")

    def __init__(self, name: str, weight: float, low: float, high: float) -> None:
        self.name: Final = name
        self.index: Final = SIGNALS.index(name)
        self.weight: Final = weight
        self.low: Final = low
        self.high: Final = high


def _points_of(signal: _Signal, value: float) -> float:
    """What `value` (above the signal's `low`) scores: `weight` from `high` on, linearly up to it."""
    return signal.weight if value >= signal.high else signal.weight * (value - signal.low) / (signal.high - signal.low)


class _Gateway:
    """A gateway's key (`origid:...`), its state keys and the ops that are the same on each of its calls, made
    once when the gateway is first met."""

    __slots__ = ("burst", "feedback", "group", "name", "read_burst", "read_feedback", "recent", "tally")

    def __init__(self, name: str, core: RiskCore) -> None:
        self.name: Final = name
        #: The memory store's entry for all of them (policies.state.Group).
        self.group: Final = core.gateway_group_prefix + name
        self.tally: Final = core.gateway_prefix + name
        self.burst: Final = core.burst_prefix + name
        self.feedback: Final = core.feedback_prefix + name
        self.recent: Final = core.recent_prefix + name
        #: The short window of calls from never-seen numbers (bumped when the call's Claim is new).
        self.read_burst: Final = Tally(self.burst, BURST_FIELDS, _BURST_ADD, core.burst_window, core.burst_buckets, 0)
        self.read_feedback: Final = Tally(self.feedback, FEEDBACK_FIELDS, _NO_FEEDBACK, core.feedback_window)


class _Ending:
    """What a scored call's end adds to its gateway, worked out from its state while scoring (`_END_ADDS` bits
    2-4: from a never-seen number, neighbour match, never-seen number outside a burst)."""

    __slots__ = ("bits", "gateway")

    def __init__(self, gateway: _Gateway, bits: int) -> None:
        self.gateway: Final = gateway
        self.bits: Final = bits


class RiskCore:
    """One risk_score entry's settings as plain values, and what it does per call."""

    def __init__(self, ns: str, gateways: Sequence[tuple[str, KeyGetter]],
                 signals: Sequence[tuple[str, float, float, float]], *, window: float, buckets: int,
                 min_calls: int, min_ended: int, seen_ttl: float, short_call_seconds: float, sweep_depth: int,
                 sweep_min: int, sweep_gap: int, feedback_window: float,
                 thresholds: Sequence[tuple[float, Decision]], note_from: float,
                 allow: Callable[[CallContext], bool] | None = None, burst_window: float = 120.0,
                 burst_buckets: int = 6, burst_min_expected: float = 1.0, burst_learn_below: float = 1.5,
                 burst_floor_share: float = 0.25, neighbor_exempt: Sequence[str] = ("A",)) -> None:
        self.gateways = tuple(gateways)
        #: The signals that count, in the order they add up.
        self.signals = tuple(_Signal(name, w, low, high) for name, w, low, high in signals)
        self.window = window
        self.buckets = buckets
        self.min_calls = min_calls
        self.min_ended = min_ended
        self.seen_ttl = seen_ttl
        self.short_call_seconds = short_call_seconds
        self.sweep_depth = sweep_depth
        self.sweep_min = sweep_min
        self.sweep_gap = sweep_gap
        self.feedback_window = feedback_window
        self.burst_window = burst_window
        self.burst_buckets = burst_buckets
        self.burst_min_expected = burst_min_expected
        self.burst_learn_below = burst_learn_below
        self.burst_floor_share = burst_floor_share
        #: Attestations whose passed verification vouches for the number: a neighbour match is not counted.
        self.neighbor_exempt = frozenset(neighbor_exempt)
        #: (score, decision), highest first: the first reached applies.
        self.thresholds = tuple(thresholds)
        self.note_from = note_from
        #: Below this score a call gets neither an action nor a note.
        self.quiet_below = min(note_from, self.thresholds[-1][0])
        #: What `on_error: closed` applies when the state did not come: the lowest threshold's action.
        self.hit = self.thresholds[-1][1]
        #: Calls never scored (counted all the same): the allow list's match, None without one.
        self.allow = allow
        # Key prefixes in the state store (one namespace per scope). A number's keys are bundled as one Group in
        # memory, and so are a gateway's: one lookup each per call.
        self.number_prefix = f"{ns}n:"
        self.gateway_group_prefix = f"{ns}gw:"
        self.seen_prefix = f"{ns}seen:"
        self.gateway_prefix = f"{ns}g:"
        self.feedback_prefix = f"{ns}f:"
        self.tn_feedback_prefix = f"{ns}f:tn:"
        self.recent_prefix = f"{ns}r:"
        self.orig_recent_prefix = f"{ns}o:"
        self.burst_prefix = f"{ns}b:"
        #: Which optional state the signals that count read (a signal of weight 0 needs none): the gateway's
        #: short window and usual rate of never-seen numbers, destination lists, feedback.
        counted = {signal.name for signal in self.signals}
        self.wants_burst = "novel_burst" in counted
        self.wants_sweep = "sweep" in counted
        self.wants_orig_sweep = "orig_sweep" in counted
        self.wants_reports = "reports" in counted
        #: Gateways met so far by key kind (value -> its keys): a call's state keys without building strings.
        self._known: list[dict[str, _Gateway]] = [{} for _ in self.gateways]
        #: The last call's context, gateway and neighbour match: observe and evaluate of one call ask in turn.
        self._ctx: object = None
        self._gateway: _Gateway | None = None
        self._neighbor = False

    # --- keys ---------------------------------------------------------------------------------------------
    def keys(self, ctx: CallContext) -> tuple[str | None, bool]:
        """(the call's gateway key, or None; whether the caller shares the callee's NPA-NXX: a neighbour match,
        unless a passed verification with an exempt attestation vouches for the number)"""
        gw, neighbor = self._keys(ctx)
        return (gw.name if gw is not None else None), neighbor

    def _keys(self, ctx: CallContext) -> tuple[_Gateway | None, bool]:
        if self._ctx is ctx:
            return self._gateway, self._neighbor
        gw: _Gateway | None = None
        for i, (kind, get) in enumerate(self.gateways):
            value = get(ctx)
            if value is not None:
                known = self._known[i]
                found = known.get(value)
                if found is None:
                    if len(known) >= _KNOWN_MAX:
                        known.clear()
                    found = known[value] = _Gateway(f"{kind}:{value}", self)
                gw = found
                break
        o, d = _national(ctx.orig_tn), _national(ctx.dest_tn)
        neighbor = o is not None and d is not None and o[:6] == d[:6]
        if neighbor and self.neighbor_exempt:
            v = ctx.verification
            attest = ctx.attest
            if v is not None and v.status == "passed" and attest is not None and attest in self.neighbor_exempt:
                neighbor = False
        self._ctx, self._gateway, self._neighbor = ctx, gw, neighbor
        return gw, neighbor

    # --- state ----------------------------------------------------------------------------------------------
    def observe(self, ctx: CallContext) -> Sequence[Op]:
        """The ops of a call, as two Groups: its number's (claimed as seen, its feedback and recent destinations)
        and its gateway's (counters, short window of calls from never-seen numbers, feedback, recent
        destinations), less those only a signal of weight 0 would read. The number's come first: its Claim
        bumps the gateway's first-seen counters."""
        gw, neighbor = self._keys(ctx)
        if gw is None:
            return ()
        v = ctx.verification
        status = "none" if v is None else v.status
        verified = status == "passed"
        attest = ctx.attest
        add = _CALL_ADDS[int(verified and attest == "C") | int(verified and attest == "B") << 1
                         | int(status == "missing") << 2
                         | int(status != "passed" and status != "missing" and status != "none") << 3
                         | int(neighbor) << 4]
        orig = ctx.orig_tn
        dest = _national(ctx.dest_tn)  # sweeps are judged on NANP numbers
        gateway: list[Part] = [Tally(gw.tally, GATEWAY_FIELDS, add, self.window, self.buckets,
                                     -1 if orig is None else _FIRST)]
        present = 0  # which of the optional parts are there (_GATEWAY_NAMES)
        if orig is not None and self.wants_burst:
            gateway.append(gw.read_burst)
            present = 1
        if self.wants_reports:
            gateway.append(gw.read_feedback)
            present |= 2
        if dest is not None and self.wants_sweep:
            gateway.append(Recent(gw.recent, dest, self.sweep_depth, self.window))
            present |= 4
        if orig is None:
            return (Group(gw.group, tuple(gateway), _GATEWAY_NAMES[present]),)
        number: list[Part] = [Claim(self.seen_prefix + orig, ctx.call_id, self.seen_ttl)]
        in_number = 0  # (_NUMBER_NAMES)
        if self.wants_reports:
            number.append(Tally(self.tn_feedback_prefix + orig, FEEDBACK_FIELDS, _NO_FEEDBACK, self.feedback_window))
            in_number = 1
        if dest is not None and self.wants_orig_sweep:
            number.append(Recent(self.orig_recent_prefix + orig, dest, self.sweep_depth, self.window))
            in_number |= 2
        return (Group(self.number_prefix + orig, tuple(number), _NUMBER_NAMES[in_number]),
                Group(gw.group, tuple(gateway), _GATEWAY_NAMES[present]))

    def feedback_ops(self, gateway: str | None, orig_tn: str | None, add: tuple[int, ...]) -> list[Op]:
        """What a feedback label adds (`add`, aligned with FEEDBACK_FIELDS) to a gateway's and a number's
        counters, in the Groups their calls read them from."""
        ops: list[Op] = []
        if gateway is not None:
            ops.append(Group(self.gateway_group_prefix + gateway,
                             (Tally(self.feedback_prefix + gateway, FEEDBACK_FIELDS, add, self.feedback_window),),
                             _FEEDBACK_NAMES))
        if orig_tn is not None:
            ops.append(Group(self.number_prefix + orig_tn,
                             (Tally(self.tn_feedback_prefix + orig_tn, FEEDBACK_FIELDS, add, self.feedback_window),),
                             _FEEDBACK_NAMES))
        return ops

    def ended(self, ctx: CallContext, outcome: CallOutcome) -> Sequence[Op]:
        """The chain's hook: see `end_ops` (nothing for calls refused here, which say nothing of how the called
        side answers)."""
        if not outcome.reached:
            return ()
        return self.end_ops(ctx, outcome.answered, outcome.duration, ctx.state_for(self))

    def end_ops(self, ctx: CallContext, answered: bool, duration: float,
                results: Sequence[Any] | None) -> Sequence[Op]:
        """What an ended call (that reached the called side) adds to its gateway: ended, answered, short, and
        the same for calls from never-seen numbers (`results`: the call's observe results); such a call outside
        a burst also counts towards the gateway's usual rate of them (a campaign does not teach it its own).
        A scored call kept its gateway and those bits (`values`); an unscored one (allow list) works them out."""
        short = int(answered and duration < self.short_call_seconds)
        kept = ctx.recall(self)
        if isinstance(kept, _Ending):
            gw, bits = kept.gateway, kept.bits
        else:
            found, neighbor = self._keys(ctx)
            if found is None:
                return ()
            gw = found
            # results: (number's, gateway's) when the call has a number
            novel = int(ctx.orig_tn is not None and results is not None and len(results) > 1
                        and results[0][0] is None)
            quiet = novel  # without novel_burst every call from a never-seen number counts as outside a burst
            if novel and results is not None and self.wants_burst:
                g = results[1]
                quiet = int(self.burst(g[0], g[1][0], ctx.now) < self.burst_learn_below)
            bits = novel << 2 | int(neighbor) << 3 | quiet << 4
        add = _END_ADDS[int(answered) | short << 1 | bits]
        return (Group(gw.group, (Tally(gw.tally, GATEWAY_FIELDS, add, self.window, self.buckets),), _GATEWAY_NAMES[0]),)

    # --- the score --------------------------------------------------------------------------------------------
    def burst(self, g: tuple[int, ...], recent: int, now: float) -> float:
        """novel_burst: how surprising `recent` calls from never-seen numbers in the gateway's short window are
        against its usual rate of them (Poisson, -log10 of the chance; 0 when not above what was due). The
        usual rate: those outside bursts over the long window (`g`, the gateway's counters), never taken below
        `burst_floor_share` of all of them; what is due in the short window, never below `burst_min_expected`."""
        if recent <= self.burst_min_expected:
            return 0.0
        usual = max(float(g[_NOVEL_QUIET]), self.burst_floor_share * g[_FIRST]) / covered(self.window, self.buckets,
                                                                                          now)
        due = usual * covered(self.burst_window, self.burst_buckets, now)
        return poisson_surprise(recent, max(self.burst_min_expected, due))

    def values(self, ctx: CallContext, results: Sequence[Any]) -> tuple[list[float], str, int] | None:
        """(every signal's value, aligned with SIGNALS, `-inf` when the call has none; gateway key; gateway
        calls in the window), None without a gateway."""
        gw, neighbor = self._keys(ctx)
        if gw is None:
            return None
        orig, dest = ctx.orig_tn, _national(ctx.dest_tn)
        # the results, in observe's order: the number's Group (when the call has a number), the gateway's
        first_seen = False
        recent = 0
        fb: tuple[int, ...] = _NO_FEEDBACK
        tn_fb: tuple[int, ...] = _NO_FEEDBACK
        gw_dests: Sequence[str] = ()
        orig_dests: Sequence[str] = ()
        if orig is None:
            at_gw: Sequence[Any] = results[0]
        else:
            at_number: Sequence[Any] = results[0]
            at_gw = results[1]
            first_seen = at_number[0] is None  # this call claimed the number: never seen before
            i = 1
            if self.wants_reports:
                tn_fb = at_number[1]
                i = 2
            if dest is not None and self.wants_orig_sweep:
                orig_dests = at_number[i]
        g: tuple[int, ...] = at_gw[0]
        i = 1
        if orig is not None and self.wants_burst:
            recent = at_gw[1][0]
            i = 2
        if self.wants_reports:
            fb = at_gw[i]
            i += 1
        if dest is not None and self.wants_sweep:
            gw_dests = at_gw[i]
        values = [_ABSENT] * len(SIGNALS)
        calls = g[_CALLS]
        if calls >= self.min_calls:
            values[_S_FIRST_SHARE] = g[_FIRST] / calls
            values[_S_ATT_C_SHARE] = g[_ATT_C] / calls
            values[_S_ATT_B_SHARE] = g[_ATT_B] / calls
            values[_S_UNSIGNED_SHARE] = g[_UNSIGNED] / calls
            values[_S_FAILED_SHARE] = g[_FAILED] / calls
            values[_S_NEIGHBOR_SHARE] = g[_NEIGHBOR] / calls
        ended, answered = g[_ENDED], g[_ANSWERED]
        if ended >= self.min_ended:
            values[_S_UNANSWERED] = 1.0 - answered / ended
        if answered >= self.min_ended:
            values[_S_SHORT] = g[_SHORT] / answered
        if first_seen:
            novel_ended, novel_answered = g[_NOVEL_ENDED], g[_NOVEL_ANSWERED]
            if novel_ended >= self.min_ended:
                values[_S_NOVEL_UNANSWERED] = 1.0 - novel_answered / novel_ended
            if novel_answered >= self.min_ended:
                values[_S_NOVEL_SHORT] = g[_NOVEL_SHORT] / novel_answered
            if novel_ended >= self.min_ended:
                values[_S_NOVEL_NEIGHBOR_SHARE] = g[_NOVEL_NEIGHBOR] / novel_ended
            quiet = 1
            if self.wants_burst:
                burst = values[_S_NOVEL_BURST] = self.burst(g, recent, ctx.now)
                quiet = int(burst < self.burst_learn_below)
            ctx.remember(self, _Ending(gw, 4 | int(neighbor) << 3 | quiet << 4))
        else:
            ctx.remember(self, _Ending(gw, int(neighbor) << 3))
        values[_S_SWEEP] = sweep_share(gw_dests, self.sweep_gap, self.sweep_min)
        values[_S_ORIG_SWEEP] = sweep_share(orig_dests, self.sweep_gap, self.sweep_min)
        values[_S_REPORTS] = float(fb[0] + tn_fb[0] - fb[1] - tn_fb[1])
        v = ctx.verification
        status = "none" if v is None else v.status
        values[_S_ATT_C] = float(status == "passed" and ctx.attest == "C")
        values[_S_UNSIGNED] = float(status == "missing")
        values[_S_FAILED] = float(status != "passed" and status != "missing" and status != "none")
        values[_S_NEIGHBOR] = float(neighbor)
        values[_S_FIRST] = float(first_seen)
        values[_S_NOVEL_NEIGHBOR] = float(first_seen and neighbor)
        return values, gw.name, calls

    def _total(self, values: list[float]) -> float:
        """The points of every signal (`values` from `values`), before the cap at 100."""
        total = 0.0
        for signal in self.signals:
            value = values[signal.index]
            if value > signal.low:
                total += _points_of(signal, value)
        return total

    def _parts(self, values: list[float]) -> list[tuple[str, float, float]]:
        """(signal, value, points) of the signals that scored, most points first."""
        parts: list[tuple[str, float, float]] = []
        for signal in self.signals:
            value = values[signal.index]
            if value > signal.low:
                parts.append((signal.name, value, _points_of(signal, value)))
        if len(parts) > 1:
            parts.sort(key=_points)
        return parts

    def evaluate(self, ctx: CallContext) -> Decision:
        """The chain's entry point (facts keyed by this core)."""
        allow = self.allow
        if allow is not None and allow(ctx):
            return CONTINUE
        results = ctx.state_for(self)
        if not results:
            return CONTINUE
        return self.decide(ctx, results)

    def decide(self, ctx: CallContext, results: Sequence[Any]) -> Decision:
        """The highest threshold's decision the score reaches, noted with its reasons; below every threshold
        `continue`, noted from `note_from` up. (The reasons are gathered only for a call that gets a note: most
        calls score below it.)"""
        found = self.values(ctx, results)
        if found is None:
            return CONTINUE
        values, gw, calls = found
        total = min(100.0, self._total(values))
        if total < self.quiet_below:
            return CONTINUE
        note = explain(total, self._parts(values), gw, calls)
        for at, decision in self.thresholds:
            if total >= at:
                return decision.with_note(note)
        return Decision(note=note)
