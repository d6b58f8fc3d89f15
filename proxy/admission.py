"""Who may start a call now: per-trunk contracted limits, fair shedding under overload, and the memory of the
INVITEs refused so that a retransmission gets the same answer.

Why limits per trunk and fair shares per source: a carrier interconnect is contracted per trunk (calls per
second, concurrent calls), and one peer flooding must not take the capacity the others are owed. Under overload
the engine sheds only the source addresses that offer more than their fair share of the recent INVITEs (the
average over the sources offering any), so a peer sending at a modest rate keeps being served while a flood
beside it is refused, whether the two are different trunks or two addresses of one (an SBC cluster).

Sans-I/O: time comes in as `now`. The engine asks `over_limit`/`within_share` before it parses an INVITE, and
says when a call is taken (`admitted`) and ends (`released`). All state is bounded by count: one `Gate` per
configured trunk, the sources that offered INVITEs in the last two windows (at most `MAX_SOURCES`), at most
`overload.shed_memory` remembered INVITEs.
"""

from __future__ import annotations

from collections import deque

from proxy.config import Config, Trunk

__all__ = ["Admission", "Gate"]

#: `remembered` answer for an INVITE that was dropped (no answer at all).
DROPPED = -1
#: `remembered` answer for an INVITE not remembered.
UNKNOWN = -2
#: Source addresses whose recent load is tracked; a source beyond them is taken as over its share.
MAX_SOURCES = 65536


class Gate:
    """One trunk at the door: its token bucket, its calls in progress, its counters.

    `rate`, `burst` and `max_calls` are what this process enforces: the contract's (`contract_*`) times its
    `share` of the trunk's traffic. The share is 1 alone; when several workers or nodes take one trunk's calls
    (a dispatcher front spreads them by Call-ID) each gets the part of the contract that its part of the
    trunk's offered INVITEs calls for (`proxy.limit_shares`), so together they hold the contract."""

    __slots__ = ("admitted", "burst", "calls", "contract_burst", "contract_calls", "contract_rate", "drop",
                 "max_calls", "name", "offered", "rate", "retry_after", "share", "shed", "stamp", "tokens")

    def __init__(self, trunk: Trunk, retry_after: int) -> None:
        self.name = trunk.name
        limits = trunk.limits
        self.contract_rate = limits.max_cps if limits is not None else 0.0
        burst = float(limits.burst) if limits is not None else 0.0
        self.contract_burst = burst if burst > 0 else max(1.0, self.contract_rate)
        self.contract_calls = limits.max_calls if limits is not None else 0
        self.share = 1.0
        self.rate = self.contract_rate
        self.burst = self.contract_burst
        self.max_calls = self.contract_calls
        self.tokens = self.burst
        self.stamp = 0.0
        self.drop = limits is not None and limits.action == "drop"
        self.retry_after = limits.retry_after if limits is not None and limits.retry_after is not None \
            else retry_after
        #: Calls from this trunk in progress (taken, not yet ended).
        self.calls = 0
        #: Since start: INVITEs offered, calls admitted, INVITEs shed by reason.
        self.offered = 0
        self.admitted = 0
        self.shed: dict[str, int] = {}

    @property
    def limited(self) -> bool:
        """Whether the trunk has a contracted rate or call count."""
        return self.contract_rate > 0.0 or self.contract_calls > 0

    def set_share(self, share: float) -> None:
        """Enforce `share` (0-1) of the contract here. A share never takes the bucket below one call, nor the
        call count below one: a process that gets a trunk's call can always take one (so the sum over N
        processes may exceed the contract by at most N calls at once)."""
        share = min(1.0, max(0.0, share))
        self.share = share
        self.rate = self.contract_rate * share
        self.burst = max(1.0, self.contract_burst * share)
        if self.tokens > self.burst:
            self.tokens = self.burst
        self.max_calls = max(1, round(self.contract_calls * share)) if self.contract_calls > 0 else 0

    def carry_over(self, old: Gate) -> None:
        """A reload: what the trunk holds and has done stays (its limits are the new ones, at the old share)."""
        self.calls = old.calls
        self.offered = old.offered
        self.admitted = old.admitted
        self.shed = old.shed
        self.set_share(old.share)
        self.tokens = min(old.tokens, self.burst)
        self.stamp = old.stamp


class Admission:
    """The gates of every trunk, the fair-share window and the refused-INVITE memory of one engine."""

    __slots__ = ("_active_new", "_active_prev", "_gates", "_linger", "_memory", "_memory_size", "_order",
                 "_sources", "_total_cur", "_total_prev", "_win_start", "_window")

    def __init__(self, config: Config, previous: Admission | None = None, linger: float = 32.0) -> None:
        o = config.overload
        self._window = o.fair_window
        self._memory_size = o.shed_memory
        #: How long a refused INVITE is remembered at most: its retransmissions stop after 64*T1.
        self._linger = linger
        self._gates: dict[str, Gate] = {}
        for trunk in config.trunks:
            gate = Gate(trunk, o.retry_after)
            if previous is not None:
                old = previous._gates.get(trunk.name)
                if old is not None:
                    gate.carry_over(old)
            self._gates[trunk.name] = gate
        #: source address -> [INVITEs offered in the current window, in the previous one]
        self._sources: dict[str, list[int]] = previous._sources if previous is not None else {}
        self._win_start: float = previous._win_start if previous is not None else 0.0
        self._total_cur = 0
        self._total_prev = 0
        self._active_prev = 0
        self._active_new = 0
        if previous is not None:
            self._total_cur = previous._total_cur
            self._total_prev = previous._total_prev
            self._active_prev = previous._active_prev
            self._active_new = previous._active_new
        #: hash of a refused INVITE datagram -> (forget after, Retry-After sent or DROPPED); and their order.
        self._memory: dict[int, tuple[float, int]] = previous._memory if previous is not None else {}
        self._order: deque[tuple[float, int]] = previous._order if previous is not None else deque()

    def gate(self, trunk: str) -> Gate | None:
        return self._gates.get(trunk)

    def gates(self) -> list[Gate]:
        return list(self._gates.values())

    # --- the offered load, for fair shares ----------------------------------------------------------------------
    def offer(self, gate: Gate, source: str, now: float) -> None:
        """Count one INVITE arriving from this trunk's `source` address (taken or not: what it asks of us)."""
        if now - self._win_start >= self._window:
            self._roll(now)
        gate.offered += 1
        self._total_cur += 1
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= MAX_SOURCES:
                return
            entry = self._sources[source] = [0, 0]
            self._active_new += 1
        entry[0] += 1

    def _roll(self, now: float) -> None:
        gap = now - self._win_start >= 2 * self._window  # a whole window with nothing offered
        active = 0
        total = 0
        idle: list[str] = []
        for source, entry in self._sources.items():
            prev = 0 if gap else entry[0]
            entry[1] = prev
            entry[0] = 0
            if prev > 0:
                active += 1
                total += prev
            else:
                idle.append(source)
        for source in idle:  # quiet for two windows: forgotten (the table holds recent sources only)
            del self._sources[source]
        self._active_prev = active
        self._active_new = 0
        self._total_prev = total
        self._total_cur = 0
        self._win_start = now if gap else self._win_start + self._window

    def within_share(self, source: str, now: float) -> bool:
        """True when this source offers less than the average of the sources offering INVITEs lately (the
        previous window fading out as the current one fills). A source alone is never within: under overload
        it is shed; so is one beyond the table."""
        if now - self._win_start >= self._window:
            self._roll(now)
        entry = self._sources.get(source)
        if entry is None:
            return False
        fade = 1.0 - (now - self._win_start) / self._window
        mine = entry[1] * fade + entry[0]
        total = self._total_prev * fade + self._total_cur
        return mine * (self._active_prev + self._active_new) < total

    # --- contracted limits --------------------------------------------------------------------------------------
    def over_limit(self, gate: Gate, now: float) -> str:
        """Why a new call from this trunk is beyond its contract ("" when it is not). Takes nothing."""
        if gate.max_calls > 0 and gate.calls >= gate.max_calls:
            return "max-calls"
        rate = gate.rate
        if rate > 0.0:
            tokens = gate.tokens + (now - gate.stamp) * rate
            gate.tokens = tokens if tokens < gate.burst else gate.burst
            gate.stamp = now
            if gate.tokens < 1.0:
                return "max-cps"
        return ""

    def admitted(self, gate: Gate) -> None:
        """A call from this trunk was taken: one token spent, one call in progress."""
        if gate.rate > 0.0:
            gate.tokens -= 1.0
        gate.calls += 1
        gate.admitted += 1

    def released(self, trunk: str) -> None:
        """A call taken from this trunk ended."""
        gate = self._gates.get(trunk)
        if gate is not None and gate.calls > 0:
            gate.calls -= 1

    def count_shed(self, gate: Gate, reason: str) -> None:
        shed = gate.shed
        shed[reason] = shed.get(reason, 0) + 1

    # --- refused INVITEs ----------------------------------------------------------------------------------------
    # A dict for the answers and a deque for their order: forgetting the oldest of a dict by next(iter(d)) walks
    # every slot deleted before it, which under a flood turns each refusal into a scan of thousands.
    def remember(self, key: int, now: float, answer: int) -> None:
        """A refused INVITE (`answer`: the Retry-After sent, or DROPPED): its retransmissions get the same."""
        size = self._memory_size
        if size <= 0:
            return
        memory = self._memory
        order = self._order
        while order and (len(order) >= size or order[0][0] <= now):
            until, old = order.popleft()
            entry = memory.get(old)
            if entry is not None and entry[0] == until:
                del memory[old]
        until = now + self._linger
        memory[key] = (until, answer)
        order.append((until, key))

    def remembering(self, now: float) -> bool:
        """Whether any refusal is still remembered (the oldest ones that expired are forgotten here)."""
        memory = self._memory
        order = self._order
        while order and order[0][0] <= now:
            until, old = order.popleft()
            entry = memory.get(old)
            if entry is not None and entry[0] == until:
                del memory[old]
        return len(order) > 0

    def remembered(self, key: int, now: float) -> int:
        """The answer given to this INVITE when it was refused (a Retry-After, or DROPPED), or UNKNOWN."""
        entry = self._memory.get(key)
        if entry is None or entry[0] <= now:
            return UNKNOWN
        return entry[1]

    def memory_size(self) -> int:
        return len(self._memory)

    def shed_counts(self) -> dict[tuple[str, str], int]:
        """(trunk, reason) -> INVITEs refused since start."""
        return {(g.name, r): n for g in self._gates.values() for r, n in g.shed.items()}
