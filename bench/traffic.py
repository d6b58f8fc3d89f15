"""A seeded day (or more) of inbound call traffic at a US terminating carrier: legitimate callers with the traps
robocall analytics trip on, and robocall campaigns hidden among them. Pure data: no SIP, no clock.

No public labelled dataset of robocall and legitimate CDRs exists (../shared/ANALYTICS.md), so this is a model,
each number below chosen from a published figure where one exists (docs/ANALYTICS.md lists them and what is
not modelled). The operator (the callee side) owns thousands-blocks in three Chicago NPAs; every call arrives
from a carrier trunk, identified by its source address, signed (SHAKEN attest/origid, one SPC per originating
provider) or not.

    traffic = generate(seed=1, hours=24, scale=60_000)
    traffic.calls[0]         # Call(t=..., source='10.1.0.1', orig='+13125550123', dest='+17735550188', ...)
    traffic.mix()            # the shares it claims (campaign sizes, unsigned share, neighbours ...)

Legitimate kinds: residential (signed A, subscriber pools whose numbers recur), unsigned (carrier trunks
without SHAKEN, several source addresses), enterprise (PBXs: A for owned DIDs, B for others; one call centre
rotating its own DIDs), bulk (pharmacy, schools, bank, utility, clinic, county alerts: 1-5 numbers, bursts,
many destinations, short calls and voicemail drops), gateway (international calls attested C).
Campaign kinds: attest_c, unsigned_gw, neighbor, sequential, short_pool, invalid (see OPERATIONS).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["CAMPAIGN_KINDS", "LEGIT_KINDS", "OPERATIONS", "SPCS", "TRUNKS", "Call", "Campaign", "Traffic",
           "generate"]

LEGIT_KINDS = ("residential", "unsigned", "enterprise", "bulk", "gateway")
CAMPAIGN_KINDS = ("attest_c", "unsigned_gw", "neighbor", "sequential", "short_pool", "invalid")

#: Outcomes at the callee: answered (by a person or voicemail), ringing until the caller gives up, or a final
#: error from the terminating side (busy 486, unavailable 480, unassigned number 404).
OUTCOMES = ("answered", "noanswer", "busy", "unavailable", "notfound")
OUTCOME_CODES = {"busy": 486, "unavailable": 480, "notfound": 404}


class Call(NamedTuple):
    """One call as it arrives at stirgate, and its label."""

    t: float                #: start, seconds of simulated time from midnight of day 0
    source: str             #: the carrier trunk peer's address (the INVITE's source IP)
    orig: str               #: caller as signalled in From (with or without '+', national forms)
    dest: str               #: callee as signalled in the R-URI / To
    display: str | None     #: From display name
    attest: str | None      #: SHAKEN attest when signed, None when unsigned
    origid: str | None
    spc: str | None         #: the signer's SPC (which demo certificate signs it)
    outcome: str            #: one of OUTCOMES
    ring: float             #: seconds ringing before the answer, or before the caller gives up
    duration: float         #: seconds talked (answered calls)
    callee_hangs_up: bool
    kind: str               #: a LEGIT_KINDS or CAMPAIGN_KINDS value
    party: str              #: legit: caller class / bulk caller name; campaign: the operation's name
    campaign: int           #: campaign id, -1 for legitimate calls
    seq: int                #: 1-based position in its campaign (0 for legitimate calls)
    neighbor: bool          #: orig shares the callee's NPA-NXX (10-digit NANP numbers)

    @property
    def legit(self) -> bool:
        return self.campaign < 0


@dataclass(frozen=True)
class Campaign:
    id: int
    kind: str
    operation: str
    size: int
    start: float


@dataclass(frozen=True)
class Operation:
    """A robocall operation: its infrastructure (how its calls reach us) and how it dials."""

    name: str
    kind: str
    source: str
    attest: str | None = None       # None: unsigned
    spc: str | None = None
    plus: bool = True               # orig/dest signalled with '+1'; False: national 10 digits (unsigned only)
    gap: tuple[float, float] = (3.0, 30.0)   # mean seconds between a campaign's calls: drawn per campaign
    answer: float = 0.3             # share of calls answered
    share: float = 1.0              # of its kind's campaign calls


#: Originating providers' SPCs (one demo certificate each, all under the demo STI-CA).
SPCS = {
    "1001": "national mobile carrier",
    "1002": "cable carrier",
    "1003": "enterprise SIP trunk provider",
    "1004": "CPaaS (bulk callers, apps, and some robocallers)",
    "1005": "international gateway provider (attests C)",
    "1006": "regional mobile carrier",
}

#: Carrier trunks (all verify) and the customer trunk the operator's subscribers sit behind.
TRUNKS: dict[str, tuple[str, ...]] = {
    "ixc1": ("10.1.0.1", "10.1.0.2"),                           # .1 signed, .2 its TDM interconnect (unsigned)
    "ixc2": ("10.2.0.1",),                                      # signed
    "wholesale": ("10.3.0.1", "10.3.0.2", "10.3.0.3", "10.3.0.4"),  # unsigned least-cost carrier
    "legacy": ("10.4.0.1", "10.4.0.2"),                         # the incumbent's TDM gateways (unsigned)
}
SUBSCRIBERS = ("subscribers", "10.9.0.1")

#: The robocall operations: each runs many campaigns over the day through fixed infrastructure.
OPERATIONS: tuple[Operation, ...] = (
    # attest-C gateways: a fresh spoofed number on every call, signed C by the gateway provider
    Operation("gw-c-1", "attest_c", "10.1.0.1", "C", "1005", gap=(2.0, 12.0), share=0.6),
    Operation("gw-c-2", "attest_c", "10.2.0.1", "C", "1005", gap=(5.0, 40.0), share=0.4),
    # unsigned gateways rotating spoofed numbers: one on its own address, one sharing a legit CLEC's
    Operation("uns-1", "unsigned_gw", "10.3.0.3", plus=False, gap=(2.0, 15.0), share=0.55),
    Operation("uns-2", "unsigned_gw", "10.3.0.2", gap=(4.0, 30.0), share=0.45),
    # neighbour spoofing: orig = the callee's NPA-NXX (some NPA-NXX-X) + random digits
    Operation("nb-1", "neighbor", "10.3.0.4", plus=False, gap=(3.0, 20.0), answer=0.4, share=0.4),
    Operation("nb-2", "neighbor", "10.1.0.2", gap=(5.0, 40.0), answer=0.4, share=0.3),
    Operation("nb-3", "neighbor", "10.2.0.1", "B", "1004", gap=(3.0, 25.0), answer=0.4, share=0.3),
    # sequential dialers: one or a few numbers walking a range (in order, or block-wise)
    Operation("seq-1", "sequential", "10.2.0.1", "B", "1004", gap=(1.0, 6.0), answer=0.2, share=0.6),
    Operation("seq-2", "sequential", "10.3.0.3", plus=False, gap=(1.5, 10.0), answer=0.2, share=0.4),
    # short-call pools: 20-50 numbers rotating, very short calls, low answer rate, attest B
    Operation("pool-1", "short_pool", "10.2.0.1", "B", "1004", gap=(2.0, 20.0), answer=0.2, share=0.55),
    Operation("pool-2", "short_pool", "10.1.0.1", "B", "1006", gap=(4.0, 30.0), answer=0.2, share=0.45),
    # invalid numbers: N11, 555-01XX, wrong lengths, unprefixed 7/9/11-digit forms
    Operation("inv-1", "invalid", "10.3.0.4", plus=False, gap=(2.0, 20.0), answer=0.25, share=0.6),
    Operation("inv-2", "invalid", "10.4.0.2", plus=False, gap=(5.0, 40.0), answer=0.25, share=0.4),
)

#: Calls per kind, as shares of the legitimate calls / of the campaign calls.
LEGIT_SHARES = {"residential": 0.47, "unsigned": 0.30, "enterprise": 0.14, "bulk": 0.06, "gateway": 0.03}
CAMPAIGN_SHARES = {"attest_c": 0.25, "unsigned_gw": 0.25, "neighbor": 0.08, "sequential": 0.12, "short_pool": 0.15,
                   "invalid": 0.15}

#: Relative call volume by hour of day (people), and when robocall operations dial.
DIURNAL = (0.3, 0.2, 0.15, 0.15, 0.2, 0.4, 1.0, 2.0, 3.5, 5.0, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.0, 4.5,
           4.0, 3.0, 2.0, 1.0)
BUSINESS = tuple(1.0 if 8 <= h < 18 else 0.05 for h in range(24))
ROBO_HOURS = (9.0, 20.0)

OPERATOR_NPAS = ("312", "773", "872")
REMOTE_NPAS = (
    "201", "202", "203", "205", "206", "210", "212", "213", "214", "215", "216", "248", "267", "281", "301",
    "302", "303", "305", "313", "314", "317", "323", "347", "404", "407", "408", "412", "414", "415", "469",
    "480", "502", "503", "504", "512", "513", "559", "571", "602", "608", "612", "614", "615", "617", "619",
    "626", "646", "651", "678", "702", "703", "704", "713", "714", "718", "720", "732", "757", "786", "801",
    "813", "816", "818", "832", "856", "901", "904", "908", "909", "916", "917", "919", "949", "954", "971",
)
#: International callers: country code and leading digits, and the full length of the number (digits).
FOREIGN_PREFIXES = (("4420794", 12), ("447700", 12), ("5255", 12), ("5281", 12), ("9198", 12), ("63917", 12),
                    ("234803", 13), ("86138", 13), ("49151", 13), ("336", 11))

FIRST = ("JOHN", "MARIA", "DAVID", "LINDA", "JAMES", "ANA", "ROBERT", "MEI", "MICHAEL", "FATIMA", "JOSE", "KAREN")
LAST = ("SMITH", "GARCIA", "JOHNSON", "LEE", "BROWN", "NGUYEN", "DAVIS", "PATEL", "LOPEZ", "KOWALSKI", "OKAFOR")
ROBO_NAMES = ("HEALTH BENEFITS", "SOCIAL SEC ADMIN", "CAR WARRANTY", "V123456789", "CHICAGO IL", "WIRELESS CALLER",
              "US GOVT", "CREDIT SERVICES", "UNKNOWN", "TOLL FREE")

#: The operator's numbering: 20 exchanges per NPA, 6 of the 10 thousands-blocks of each (the rest pooled to
#: other carriers). Fixed, independent of the traffic seed, so numbers lists can ship as files.
_PLAN_SEED = 20240613


def _valid_nxx(rng: random.Random) -> str:
    while True:
        nxx = f"{rng.randint(200, 999)}"
        if nxx[1:] != "11" and nxx != "555" and nxx not in ("950", "958", "959", "976"):
            return nxx


def _remote_tn(rng: random.Random, npas: Sequence[str] = REMOTE_NPAS) -> str:
    return f"{rng.choice(npas)}{_valid_nxx(rng)}{rng.randint(0, 9999):04d}"


@dataclass(frozen=True)
class NumberingPlan:
    """Who owns which numbers: the operator's blocks (own numbers), exchanges, numbers ported out."""

    exchanges: tuple[str, ...]          # operator NPA-NXX codes (6 digits)
    own_blocks: tuple[str, ...]         # operator NPA-NXX-X (7 digits): its thousands-blocks
    other_blocks: tuple[str, ...]       # other carriers' blocks in the same exchanges
    ported_out: frozenset[str]          # operator numbers (10 digits) now served by other carriers
    dno: tuple[str, ...] = ()           # do-not-originate numbers (10 digits): inbound-only, never call out

    @classmethod
    def build(cls) -> NumberingPlan:
        rng = random.Random(_PLAN_SEED)
        exchanges: list[str] = []
        own: list[str] = []
        other: list[str] = []
        for npa in OPERATOR_NPAS:
            seen: set[str] = set()
            while len(seen) < 20:
                seen.add(_valid_nxx(rng))
            for nxx in sorted(seen):
                ex = npa + nxx
                exchanges.append(ex)
                mine = set(rng.sample(range(10), 6))
                own += [f"{ex}{x}" for x in range(10) if x in mine]
                other += [f"{ex}{x}" for x in range(10) if x not in mine]
        plan = cls(tuple(exchanges), tuple(own), tuple(other), frozenset())
        ported: set[str] = set()
        while len(ported) < 300:
            tn = f"{rng.choice(own)}{rng.randint(0, 999):03d}"
            if plan.assigned(tn):
                ported.add(tn)
        # inbound-only numbers of agencies and banks (toll-free and geographic), as on an ITG DNO list
        dno: set[str] = set()
        while len(dno) < 200:
            tn = (f"{rng.choice(('800', '888', '877', '866'))}{_valid_nxx(rng)}{rng.randint(0, 9999):04d}"
                  if rng.random() < 0.6 else _remote_tn(rng))
            dno.add(tn)
        return cls(plan.exchanges, plan.own_blocks, plan.other_blocks, frozenset(ported), tuple(sorted(dno)))

    @staticmethod
    def assigned(tn10: str) -> bool:
        """Whether a number of an operator block has a subscriber (~75 % do; the rest answer 404)."""
        return (int(tn10) * 2654435761 >> 9) % 100 < 75

    def is_own(self, tn10: str) -> bool:
        return tn10[:7] in self._own_set() and tn10 not in self.ported_out

    def _own_set(self) -> frozenset[str]:
        cached: frozenset[str] | None = self.__dict__.get("_own")
        if cached is None:
            cached = frozenset(self.own_blocks)
            object.__setattr__(self, "_own", cached)
        return cached

    def subscriber(self, rng: random.Random, exchange: str | None = None) -> str:
        """A random assigned, not ported-out operator number (10 digits), in `exchange` if given."""
        while True:
            if exchange is None:
                block = rng.choice(self.own_blocks)
            else:
                block = exchange + rng.choice("0123456789")
                if block not in self._own_set():
                    continue
            tn = f"{block}{rng.randint(0, 999):03d}"
            if self.assigned(tn) and tn not in self.ported_out:
                return tn

    def write_own_numbers(self, path: str | Path) -> Path:
        """The operator's numbers as a prefix list (one NPA-NXX-X per line, '1' country code first)."""
        p = Path(path)
        p.write_text("# the operator's thousands-blocks (bench/traffic.py NumberingPlan)\n"
                     + "".join(f"1{b}\n" for b in self.own_blocks))
        return p

    def write_ported_out(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text("# operator numbers ported out to other carriers\n"
                     + "".join(f"+1{tn}\n" for tn in sorted(self.ported_out)))
        return p

    def write_dno(self, path: str | Path) -> Path:
        """The do-not-originate numbers, one per line (the ITG list's format)."""
        p = Path(path)
        p.write_text("".join(f"1{tn}\n" for tn in self.dno))
        return p


PLAN = NumberingPlan.build()


# --- helpers --------------------------------------------------------------------------------------------------

_ORIGID_NS = uuid.UUID("5b0e7c1e-3d7a-4a53-9a8e-2f4f1c1d0b13")
#: origid (a UUID, as SHAKEN signers send) -> the origination it stands for, for reports.
ORIGID_NAMES: dict[str, str] = {}


def origid(name: str) -> str:
    """The SHAKEN origid of a named origination (stable across runs and seeds)."""
    value = str(uuid.uuid5(_ORIGID_NS, name))
    ORIGID_NAMES[value] = name
    return value


def _local_tn(rng: random.Random, exchange: str | None = None) -> str:
    """A number in an operator exchange that another carrier serves (a pooled block, or ported out)."""
    if exchange is None:
        exchange = rng.choice(PLAN.exchanges)
    if rng.random() < 0.08:
        mine = _PORTED_BY_EXCHANGE.get(exchange)
        if mine:
            return rng.choice(mine)
    while True:
        block = exchange + rng.choice("0123456789")
        if block not in PLAN._own_set():
            return f"{block}{rng.randint(0, 999):03d}"


def _ported_by_exchange() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tn in sorted(PLAN.ported_out):
        out.setdefault(tn[:6], []).append(tn)
    return out


_PORTED_BY_EXCHANGE = _ported_by_exchange()


def _foreign(rng: random.Random) -> str:
    prefix, length = rng.choice(FOREIGN_PREFIXES)
    return "+" + prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix)))


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _fmt(tn10: str, plus: bool) -> str:
    return f"+1{tn10}" if plus else tn10


class _Clock:
    """Draws start times over [start, start + hours) following an hour-of-day profile."""

    def __init__(self, start: float, hours: float, profile: Sequence[float]) -> None:
        self.slots: list[tuple[float, float]] = []
        weights: list[float] = []
        t, end = start, start + hours * 3600.0
        while t < end:
            nxt = min(end, (math.floor(t / 3600.0) + 1) * 3600.0)
            self.slots.append((t, nxt))
            weights.append(profile[int(t // 3600.0) % 24] * (nxt - t))
            t = nxt
        self.cum = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random) -> float:
        i = bisect.bisect_right(self.cum, rng.random() * self.cum[-1])
        a, b = self.slots[min(i, len(self.slots) - 1)]
        return rng.uniform(a, b)


def _weighted_picker(rng: random.Random, n: int, sigma: float) -> Callable[[], int]:
    """Index 0..n-1 with lognormal activity weights: a few callers call a lot, most rarely."""
    cum = list(itertools.accumulate(rng.lognormvariate(0.0, sigma) for _ in range(n)))
    total = cum[-1]
    return lambda: min(n - 1, bisect.bisect_right(cum, rng.random() * total))


# --- call outcomes --------------------------------------------------------------------------------------------

def _legit_outcome(rng: random.Random, answer: float = 0.66, short: float = 0.25,
                   median: float = 100.0) -> tuple[str, float, float]:
    """(outcome, ring, duration): ~2/3 answered, a quarter of answered calls under 6 s."""
    r = rng.random()
    if r < answer:
        ring = rng.uniform(2.0, 18.0)
        if rng.random() < short:
            return "answered", ring, rng.uniform(0.8, 5.9)
        return "answered", ring, min(7200.0, max(6.0, rng.lognormvariate(math.log(median), 1.1)))
    r = (r - answer) / (1.0 - answer)
    if r < 0.70:
        return "noanswer", rng.uniform(15.0, 35.0), 0.0
    if r < 0.85:
        return "busy", 0.0, 0.0
    if r < 0.97:
        return "unavailable", 0.0, 0.0
    return "notfound", 0.0, 0.0


def _robo_outcome(rng: random.Random, answer: float, assigned: bool, very_short: bool = False
                  ) -> tuple[str, float, float]:
    """Campaign calls: mostly unanswered or near-silent; dialers give up ringing early."""
    if not assigned:
        return "notfound", 0.0, 0.0
    if rng.random() < answer:
        ring = rng.uniform(1.0, 10.0)
        if very_short:
            return "answered", ring, rng.uniform(0.5, 4.0)
        if rng.random() < 0.08:
            return "answered", ring, rng.uniform(20.0, 300.0)   # someone engages (the scam's goal)
        return "answered", ring, min(60.0, rng.lognormvariate(math.log(5.0), 0.7))
    r = rng.random()
    if r < 0.85:
        return "noanswer", rng.uniform(2.0, 8.0) if very_short else rng.uniform(8.0, 25.0), 0.0
    if r < 0.95:
        return "busy", 0.0, 0.0
    return "unavailable", 0.0, 0.0


# --- the traffic ----------------------------------------------------------------------------------------------

@dataclass
class Traffic:
    seed: int
    hours: float
    start_hour: float
    calls: list[Call]
    campaigns: list[Campaign]
    plan: NumberingPlan = field(default_factory=lambda: PLAN)

    def mix(self) -> dict[str, Any]:
        """What the generated traffic holds: the figures the model claims (checked by the unit test)."""
        legit = [c for c in self.calls if c.legit]
        robo = [c for c in self.calls if not c.legit]
        sizes = sorted(c.size for c in self.campaigns)
        answered = [c for c in legit if c.outcome == "answered"]
        nanp = [c for c in legit if _national(c.orig) is not None]
        by_kind = Counter(c.kind for c in self.calls)
        return {
            "calls": len(self.calls),
            "legit_calls": len(legit),
            "campaign_calls": len(robo),
            "campaign_share": round(len(robo) / max(1, len(self.calls)), 4),
            "calls_by_kind": dict(sorted(by_kind.items())),
            "campaigns": len(self.campaigns),
            "campaigns_by_kind": dict(sorted(Counter(c.kind for c in self.campaigns).items())),
            "campaign_size_mean": round(sum(sizes) / max(1, len(sizes)), 2),
            "campaign_size_p95": sizes[int(0.95 * (len(sizes) - 1))] if sizes else 0,
            "legit_unsigned_share": round(sum(c.attest is None for c in legit) / max(1, len(legit)), 4),
            "legit_neighbor_share": round(sum(c.neighbor for c in legit) / max(1, len(legit)), 4),
            "legit_neighbor_share_nanp": round(sum(c.neighbor for c in nanp) / max(1, len(nanp)), 4),
            "legit_answer_share": round(len(answered) / max(1, len(legit)), 4),
            "legit_short_share_of_answered": round(sum(c.duration < 6.0 for c in answered) / max(1, len(answered)),
                                                   4),
            "campaign_answer_share": round(sum(c.outcome == "answered" for c in robo) / max(1, len(robo)), 4),
            "campaign_neighbor_share": round(sum(c.neighbor for c in robo) / max(1, len(robo)), 4),
            "legit_attest": dict(sorted(Counter(c.attest or "unsigned" for c in legit).items())),
            "campaign_attest": dict(sorted(Counter(c.attest or "unsigned" for c in robo).items())),
            "legit_callers": len({c.orig for c in legit}),
            "sources": dict(sorted(Counter(c.source for c in self.calls).items())),
        }


def _national(orig: str) -> str | None:
    """The 10 national digits of a well-formed NANP number as signalled, else None."""
    d = orig[1:] if orig.startswith("+") else orig
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    return d if len(d) == 10 and d.isdigit() else None


class _Builder:
    def __init__(self, seed: int, hours: float, start_hour: float, scale: int, campaign_share: float) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.hours = hours
        self.start = start_hour * 3600.0
        self.end = self.start + hours * 3600.0
        self.days = max(1.0, hours / 24.0)
        self.scale = scale
        self.campaign_share = campaign_share
        self.calls: list[Call] = []
        self.campaigns: list[Campaign] = []
        self.people = _Clock(self.start, hours, DIURNAL)
        self.office = _Clock(self.start, hours, BUSINESS)

    # -- legitimate ----------------------------------------------------------------------------------------
    def call(self, t: float, source: str, orig: str, dest10: str, display: str | None, attest: str | None,
             origid: str | None, spc: str | None, kind: str, party: str, outcome: tuple[str, float, float],
             plus: bool = True, campaign: int = -1, seq: int = 0) -> None:
        rng = self.rng
        o = _national(orig)
        self.calls.append(Call(t, source, orig, _fmt(dest10, plus), display, attest, origid, spc, outcome[0],
                               outcome[1], outcome[2], rng.random() < 0.5, kind, party, campaign, seq,
                               o is not None and o[:6] == dest10[:6]))

    def pool_callers(self, kind: str, n_calls: int, carriers: Sequence[tuple[str, float, str | None, str | None,
                                                                            int, bool, float]]) -> None:
        """Subscribers of originating carriers calling their contacts; numbers recur (over days too).

        carriers: (name, share, spc, attest, origids, plus, local share) with the source address in the name
        as `name@ip`."""
        rng = self.rng
        for name, share, spc, attest, n_origids, plus, local in carriers:
            carrier, source = name.split("@")
            calls = round(n_calls * share)
            if calls <= 0:
                continue
            n_callers = max(20, round(calls / (2.4 * self.days)))
            origids = [origid(f"{carrier}-{i}") for i in range(n_origids)]
            callers: list[tuple[str, str | None, str | None, str | None]] = []
            for _ in range(n_callers):
                home = rng.choice(PLAN.exchanges) if rng.random() < local else None
                tn = _local_tn(rng, home) if home else _remote_tn(rng)
                display = _name(rng) if rng.random() < 0.35 else None
                callers.append((tn, display, home, rng.choice(origids) if origids else None))
            contacts: dict[int, list[str]] = {}
            pick = _weighted_picker(rng, n_callers, 1.0)
            for _ in range(calls):
                i = pick()
                tn, display, home, oid = callers[i]
                book = contacts.get(i)
                if book is None:
                    book = contacts[i] = [
                        PLAN.subscriber(rng, home if home and rng.random() < 0.15 else None)
                        for _ in range(rng.randint(2, 12))]
                dest = book[min(len(book) - 1, int(rng.expovariate(0.5)))] if rng.random() < 0.85 \
                    else PLAN.subscriber(rng)
                self.call(self.people.draw(rng), source, _fmt(tn, plus), dest, display, attest,
                          oid if attest else None, spc if attest else None, kind, carrier,
                          _legit_outcome(rng), plus)

    def enterprises(self, n_calls: int) -> None:
        """PBXs behind an enterprise SIP trunk provider: A for owned DIDs, B for other numbers (twinned
        mobiles, forwarded calls). One call centre rotates through its 100 DIDs, short calls, low answers."""
        rng = self.rng
        shares = [0.25] + [rng.lognormvariate(0.0, 0.8) for _ in range(11)]
        total = sum(shares[1:]) / 0.75
        for k, share in enumerate(shares):
            calls = round(n_calls * (share if k == 0 else share / total))
            centre = k == 0
            home = rng.choice(PLAN.exchanges) if rng.random() < 0.5 else None
            base = (_local_tn(rng, home) if home else _remote_tn(rng))[:8]
            dids = [f"{base}{i:02d}" for i in range(100)]
            party = "call-centre" if centre else f"pbx-{k}"
            company = "ACME COLLECTIONS" if centre else f"COMPANY {k}"
            customers = [PLAN.subscriber(rng, home if home and rng.random() < 0.05 else None)
                         for _ in range(max(10, calls // (1 if centre else 3)))]
            for _ in range(calls):
                if rng.random() < (0.03 if centre else 0.15):
                    orig, attest = _remote_tn(rng), "B"
                else:
                    orig, attest = (rng.choice(dids) if centre else rng.choice(dids[:40])), "A"
                outcome = _legit_outcome(rng, 0.45, 0.45, 60.0) if centre else _legit_outcome(rng)
                self.call(self.office.draw(rng), "10.2.0.1", f"+1{orig}", rng.choice(customers),
                          company if rng.random() < 0.6 else None, attest, origid(f"ent-{party}"), "1003",
                          "enterprise", party, outcome)

    def bulk(self, n_calls: int) -> None:
        """High-volume notification callers: few numbers, bursts, many destinations, short calls/voicemail."""
        rng = self.rng
        # name, share, numbers, display, local same-exchange share, burst hours, burst rate (cps), signed
        callers = (
            ("school-district", 0.22, 2, "SPRINGFIELD SCHOOLS", 0.30, (7.0, 15.5, 18.0), 1.5, True),
            ("pharmacy", 0.20, 3, "CORNER PHARMACY", 0.15, (9.0, 10.5, 12.0, 13.5, 15.0, 16.5, 18.0), 0.8, True),
            ("bank-alerts", 0.25, 5, "FIRST BANK", 0.02, tuple(float(h) for h in range(7, 22)), 0.4, True),
            ("utility-outage", 0.10, 1, "CITY ELECTRIC", 0.25, (rng.uniform(10.0, 19.0),), 4.0, True),
            ("clinic-reminders", 0.13, 2, "NORTH CLINIC", 0.10, (9.0, 11.0, 14.0, 16.0), 0.3, True),
            ("county-alerts", 0.10, 1, "COOK COUNTY OEM", 0.25, (rng.uniform(8.0, 20.0),), 3.0, False),
        )
        for name, share, n_numbers, display, same, hours, rate, signed in callers:
            calls = round(n_calls * share)
            home = rng.choice(PLAN.exchanges) if same > 0.05 else None
            numbers = [(_local_tn(rng, home) if home else _remote_tn(rng, ("302",))) for _ in range(n_numbers)]
            # outages and alerts hit an area: a few exchanges; others their customer base
            area = rng.sample(PLAN.exchanges, 3) if name in ("utility-outage", "county-alerts") else None
            bursts = [d * 86400.0 + h * 3600.0 for d in range(math.ceil(self.days) + 1) for h in hours]
            bursts = [b for b in bursts if self.start <= b < self.end] or [rng.uniform(self.start, self.end)]
            per = max(1, calls // len(bursts))
            oid = origid(f"bulk-{name}")
            for b in bursts:
                t = b + rng.uniform(0.0, 300.0)
                for _ in range(per):
                    t += rng.expovariate(rate)
                    if t >= self.end:
                        break
                    if area is not None:
                        dest = PLAN.subscriber(rng, rng.choice(area))
                    else:
                        dest = PLAN.subscriber(rng, home if home and rng.random() < same else None)
                    outcome = self._bulk_outcome(rng)
                    if signed:
                        self.call(t, "10.2.0.1", f"+1{rng.choice(numbers)}", dest, display, "A", oid, "1004",
                                  "bulk", name, outcome)
                    else:
                        self.call(t, "10.4.0.1", rng.choice(numbers), dest, display, None, None, None, "bulk",
                                  name, outcome, plus=False)

    @staticmethod
    def _bulk_outcome(rng: random.Random) -> tuple[str, float, float]:
        r = rng.random()
        if r < 0.58:
            ring = rng.uniform(2.0, 20.0)
            s = rng.random()
            if s < 0.35:
                return "answered", ring, rng.uniform(1.0, 5.9)      # hung up on the recording
            if s < 0.75:
                return "answered", ring, rng.uniform(15.0, 35.0)    # voicemail drop
            return "answered", ring, rng.uniform(8.0, 90.0)         # listened
        if r < 0.85:
            return "noanswer", rng.uniform(20.0, 35.0), 0.0
        if r < 0.93:
            return "busy", 0.0, 0.0
        return "unavailable", 0.0, 0.0

    def gateway(self, n_calls: int) -> None:
        """International callers (and US numbers roaming / on OTT apps) through the gateway provider: C."""
        rng = self.rng
        n_callers = max(10, round(n_calls / (3.0 * self.days)))
        callers = [_foreign(rng) if rng.random() < 0.7 else "+1" + _remote_tn(rng) for _ in range(n_callers)]
        homes = [[PLAN.subscriber(rng) for _ in range(rng.randint(1, 4))] for _ in range(n_callers)]
        pick = _weighted_picker(rng, n_callers, 0.8)
        for _ in range(n_calls):
            i = pick()
            self.call(self.people.draw(rng), "10.1.0.1", callers[i], rng.choice(homes[i]), None, "C",
                      origid(f"intl-gw-{i % 2}"), "1005", "gateway", "international",
                      _legit_outcome(rng, 0.6, 0.2, 300.0))

    # -- campaigns -----------------------------------------------------------------------------------------
    def campaign_size(self) -> int:
        """Lognormal: mean ~13, 95 % under 27 (NCSU 2020: 2,687 campaigns averaging 13 calls)."""
        return max(1, round(self.rng.lognormvariate(math.log(11.7), 0.45)))

    def operations(self, n_calls: int) -> None:
        rng = self.rng
        windows = []
        for d in range(math.ceil(self.days) + 1):
            a = math.floor(self.start / 86400.0) * 86400.0 + d * 86400.0
            windows.append((max(self.start, a + ROBO_HOURS[0] * 3600.0), min(self.end, a + ROBO_HOURS[1] * 3600.0)))
        windows = [(a, b) for a, b in windows if b - a > 600.0] or [(self.start, self.end)]
        for kind in CAMPAIGN_KINDS:
            for op in (o for o in OPERATIONS if o.kind == kind):
                budget = round(n_calls * CAMPAIGN_SHARES[kind] * op.share)
                state = _OpState(rng, op)
                while budget > 0:
                    size = self.campaign_size()
                    if size > budget and budget < size / 2:
                        break   # whole campaigns only: their size distribution is the point
                    budget -= size
                    a, b = rng.choice(windows)
                    start = rng.uniform(a, b - 900.0 if b - a > 1800.0 else b)
                    cid = len(self.campaigns)
                    self.campaigns.append(Campaign(cid, kind, op.name, size, start))
                    self.campaign(op, state, cid, size, start)

    def campaign(self, op: Operation, st: _OpState, cid: int, size: int, start: float) -> None:
        rng = self.rng
        gap = rng.uniform(*op.gap)
        t = start
        walk = st.range_walk(size) if op.kind == "sequential" else None
        numbers = rng.sample(st.numbers, min(len(st.numbers), rng.randint(1, 3))) if op.kind == "sequential" \
            else None
        display = rng.choice(ROBO_NAMES) if rng.random() < 0.4 else None
        for seq in range(1, size + 1):
            if walk is not None:
                dest = walk[seq - 1]
            else:
                dest = PLAN.subscriber(rng) if rng.random() < 0.9 else f"{rng.choice(PLAN.own_blocks)}" \
                    f"{rng.randint(0, 999):03d}"
            assigned = PLAN.assigned(dest) and dest not in PLAN.ported_out
            orig = self.spoof(op, st, dest, numbers)
            outcome = _robo_outcome(rng, op.answer, assigned, very_short=op.kind == "short_pool")
            oid = origid(f"robo-{op.name}") if op.attest else None
            self.call(t, op.source, orig, dest, display, op.attest, oid, op.spc, op.kind, op.name, outcome, op.plus,
                      cid, seq)
            t += rng.expovariate(1.0 / gap)

    def spoof(self, op: Operation, st: _OpState, dest: str, numbers: list[str] | None) -> str:
        rng = self.rng
        if op.kind in ("attest_c", "unsigned_gw"):
            if rng.random() < 0.04:
                return _fmt(rng.choice(PLAN.dno), op.plus)   # impersonating an agency or a bank
            tn = f"{dest[:3]}{_valid_nxx(rng)}{rng.randint(0, 9999):04d}" if rng.random() < 0.05 \
                else _remote_tn(rng)
            return _fmt(tn, op.plus)
        if op.kind == "neighbor":
            keep = 7 if st.seven else 6
            return _fmt(dest[:keep] + "".join(rng.choice("0123456789") for _ in range(10 - keep)), op.plus)
        if op.kind == "sequential":
            assert numbers is not None
            return _fmt(rng.choice(numbers), op.plus)
        if op.kind == "short_pool":
            return _fmt(rng.choice(st.numbers), op.plus)
        return _invalid(rng)


class _OpState:
    """What an operation keeps across its campaigns: its numbers, and where its dialer is in the range."""

    def __init__(self, rng: random.Random, op: Operation) -> None:
        self.rng = rng
        self.seven = op.name == "nb-3"   # this one copies NPA-NXX-X
        n = {"sequential": rng.randint(4, 8), "short_pool": rng.randint(20, 50)}.get(op.kind, 0)
        self.numbers = [_remote_tn(rng) for _ in range(n)]
        self.block_wise = op.name == "seq-2"

    def range_walk(self, size: int) -> list[str]:
        """Destinations of one campaign: consecutive numbers from a random point of an operator exchange, or
        (block-wise) a random sample of one hundred-block in random order."""
        rng = self.rng
        exchange = rng.choice(PLAN.exchanges)
        if self.block_wise:
            hundred = rng.randint(0, 99)
            lines = rng.sample(range(100), min(100, size))
            return [f"{exchange}{hundred:02d}{x:02d}" for x in lines]
        first = rng.randint(0, 9999 - size)
        return [f"{exchange}{first + i:04d}" for i in range(size)]


def _invalid(rng: random.Random) -> str:
    """An impossible caller number, in one of the forms robocallers send."""
    npa, nxx, line = rng.choice(OPERATOR_NPAS + REMOTE_NPAS), _valid_nxx(rng), f"{rng.randint(0, 9999):04d}"
    form = rng.randrange(9)
    if form == 0:
        return f"+1{rng.randint(2, 9)}11{nxx}{line}"                 # N11 NPA
    if form == 1:
        return f"+1{npa}{rng.randint(2, 9)}11{line}"                 # N11 NXX
    if form == 2:
        return f"+1{npa}55501{rng.randint(0, 99):02d}"               # fictional 555-01XX
    if form == 3:
        return f"+1{rng.choice('01')}{rng.randint(0, 99):02d}{nxx}{line}"  # NPA starting 0/1
    if form == 4:
        return f"{nxx}{line}"                                        # unprefixed 7 digits
    if form == 5:
        return f"{npa}{nxx}{line[:3]}"                               # unprefixed 9 digits
    if form == 6:
        return f"{npa}{nxx}{line}{rng.randint(0, 9)}"                 # unprefixed 11 digits, no leading 1
    if form == 7:
        return f"+1{npa}{nxx}{line[:3]}"                             # '+1' and 9 digits
    d = str(rng.randint(2, 9))
    return f"+1{d * 10}"                                             # all one digit


def generate(seed: int = 1, hours: float = 24.0, scale: int = 60_000, campaign_share: float = 0.08,
             start_hour: float | None = None) -> Traffic:
    """`scale` calls (about) over `hours` of simulated time from `start_hour` (default midnight for a day or
    more, 09:00 for shorter runs), `campaign_share` of them in campaigns (TransNexus: ~8 % of calls)."""
    if hours <= 0 or scale <= 0 or not 0 <= campaign_share < 1:
        raise ValueError("hours and scale must be positive, campaign_share in [0, 1)")
    if start_hour is None:
        start_hour = 0.0 if hours >= 24 else 9.0
    b = _Builder(seed, hours, start_hour, scale, campaign_share)
    legit = scale - round(scale * campaign_share)
    shares = LEGIT_SHARES
    b.pool_callers("residential", round(legit * shares["residential"]), (
        ("mobile1@10.1.0.1", 0.45, "1001", "A", 4, True, 0.25),
        ("cable1@10.2.0.1", 0.35, "1002", "A", 2, True, 0.30),
        ("mobile2@10.1.0.1", 0.20, "1006", "A", 2, True, 0.20),
    ))
    b.pool_callers("unsigned", round(legit * shares["unsigned"]), (
        ("ilec@10.4.0.1", 0.25, None, None, 0, False, 0.70),
        ("ilec2@10.4.0.2", 0.15, None, None, 0, False, 0.70),
        ("clec@10.3.0.1", 0.20, None, None, 0, True, 0.20),
        ("clec2@10.3.0.2", 0.15, None, None, 0, True, 0.20),
        ("ixc-tdm@10.1.0.2", 0.25, None, None, 0, True, 0.10),
    ))
    b.enterprises(round(legit * shares["enterprise"]))
    b.bulk(round(legit * shares["bulk"]))
    b.gateway(round(legit * shares["gateway"]))
    b.operations(round(scale * campaign_share))
    calls = [c for c in b.calls if b.start <= c.t < b.end]
    calls.sort(key=lambda c: (c.t, c.campaign, c.seq))
    # Campaign sizes as played: a campaign cut by the end of the simulated time keeps the calls inside it.
    played = Counter(c.campaign for c in calls if c.campaign >= 0)
    campaigns = [Campaign(c.id, c.kind, c.operation, played[c.id], c.start) for c in b.campaigns if played[c.id]]
    return Traffic(seed, hours, start_hour, calls, campaigns)


def campaign_sizes(traffic: Traffic) -> list[int]:
    return [c.size for c in traffic.campaigns]


def by(calls: Iterable[Call], key: Callable[[Call], str]) -> dict[str, list[Call]]:
    out: dict[str, list[Call]] = {}
    for c in calls:
        out.setdefault(key(c), []).append(c)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.traffic`: print the mix of a seed; write the numbering lists a profile may use."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m bench.traffic", description=main.__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--scale", type=int, default=60_000)
    ap.add_argument("--lists", default=None, metavar="DIR",
                    help="write own-numbers.txt (operator blocks), ported-out.txt and dno.txt into DIR")
    args = ap.parse_args(argv)
    if args.lists:
        d = Path(args.lists)
        d.mkdir(parents=True, exist_ok=True)
        for p in (PLAN.write_own_numbers(d / "own-numbers.txt"), PLAN.write_ported_out(d / "ported-out.txt"),
                  PLAN.write_dno(d / "dno.txt")):
            print(f"wrote {p}")
        return 0
    print(json.dumps(generate(args.seed, args.hours, args.scale).mix(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
