"""`stirgate report --campaigns` and `/report?campaigns=1`: the flagged calls of a window grouped into
campaigns, with what a traceback response to the ITG needs.

A campaign here is what the records can show: calls flagged (tagged, rejected or re-routed, by an enforced or
a dry-run policy) that share the gateway that carried them (the verified origid, else the source address),
the ingress trunk, and the rule that flagged them (`risk_score:first_seen_share`, `velocity:calls`,
`invalid_numbers:length` ...), without a gap longer than `gap` between two of them. Each comes with its counts,
first and last seen, the numbers it used and dialled, sample calls, and the upstream hop (ingress trunk and
signalling address) the call entered through: the answer to "where did this traffic come from".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.records import COLUMNS, CallRecord, Reader, record_from_row
from proxy.recordstore import Source, reading
from proxy.reports import format_time, text_table

__all__ = ["campaigns", "flagging_step", "format_campaigns"]

FLAGGED: Final = ("tag", "reject", "route")
_SIGNAL_RE: Final = re.compile(r"^risk \d+: (\w+)|^[\w:]+ (\w+) ")


def flagging_step(rec: CallRecord) -> tuple[str, str, str] | None:
    """(rule, mode, note) of the first policy step that flagged the call, enforced ones first; None if none did.

    The rule is the policy and, when its note names one, the signal: `risk_score:first_seen_share`."""
    best: tuple[str, str, str] | None = None
    for step in rec.policy_decisions:
        if len(step) < 3 or step[2] not in FLAGGED:
            continue
        name, mode = step[0], step[1]
        note = step[3] if len(step) > 3 else ""
        m = _SIGNAL_RE.match(note)
        signal = (m.group(1) or m.group(2)) if m else ""
        if not signal and ":" in note and " " not in note:
            signal = note.rsplit(":", 1)[1]  # invalid_numbers:length, lists:dno
        rule = f"{name}:{signal}" if signal else name
        if mode != "dry-run":
            return rule, mode, note
        if best is None:
            best = (rule, mode, note)
    return best


def gateway_of(rec: CallRecord) -> str:
    """The verified origid that carried the call, else its signalling source address."""
    if rec.verification == "passed" and rec.origid:
        return f"origid:{rec.origid}"
    if rec.signed and rec.origid:
        return f"origid:{rec.origid}"
    return f"source:{rec.source_ip}"


@dataclass
class Campaign:
    gateway: str
    ingress: str
    rule: str
    mode: str
    first: float
    last: float
    calls: int = 0
    rejected: int = 0
    answered: int = 0
    upstream: set[str] = field(default_factory=set)
    origs: set[str] = field(default_factory=set)
    dests: set[str] = field(default_factory=set)
    spcs: set[str] = field(default_factory=set)
    attests: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rec: CallRecord, note: str, samples: int) -> None:
        self.calls += 1
        self.last = max(self.last, rec.invite_at)
        self.rejected += rec.status is not None and rec.status >= 300
        self.answered += rec.answered_at is not None
        self.upstream.add(f"{rec.ingress} {rec.source_ip}:{rec.source_port}")
        if rec.orig:
            self.origs.add(rec.orig)
        if rec.dest:
            self.dests.add(rec.dest)
        if rec.spc:
            self.spcs.add(rec.spc)
        attest = rec.attest or ("unsigned" if rec.verification == "missing" else "none")
        self.attests[attest] = self.attests.get(attest, 0) + 1
        if len(self.samples) < samples:
            self.samples.append({"at": format_time(rec.invite_at), "orig": rec.orig_signaled or rec.orig,
                                 "dest": rec.dest, "status": rec.status, "a_call_id": rec.a_call_id, "note": note})

    def as_dict(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "ingress": self.ingress,
            "upstream": sorted(self.upstream),
            "rule": self.rule,
            "mode": self.mode,
            "calls": self.calls,
            "rejected": self.rejected,
            "answered": self.answered,
            "first_seen": format_time(self.first),
            "last_seen": format_time(self.last),
            "distinct_origs": len(self.origs),
            "distinct_dests": len(self.dests),
            "spcs": sorted(self.spcs),
            "attest": dict(sorted(self.attests.items())),
            "samples": self.samples,
        }


def _flagged_records(r: Reader, since: float, until: float) -> list[CallRecord]:
    """The window's calls that some policy flagged: the JSON text is filtered in SQL, the steps in Python."""
    p = r.param
    text = r.json_text_sql("policy_decisions")
    like = " OR ".join(f"{text} LIKE {p}" for _ in FLAGGED)
    rows = r.fetch(f"SELECT {', '.join(COLUMNS)} FROM calls WHERE invite_at >= {p} AND invite_at < {p} "
                   f"AND ({like}) ORDER BY invite_at", (since, until, *(f'%"{a}"%' for a in FLAGGED)))
    return [record_from_row(row) for row in rows]


def campaigns(db: Source, since: float, until: float, *, gap: float = 3600.0, limit: int = 50,
              samples: int = 3) -> dict[str, Any]:
    """The flagged calls of [since, until) as campaigns, biggest first."""
    with reading(db) as r:
        records = _flagged_records(r, since, until)
    open_: dict[tuple[str, str, str], Campaign] = {}
    done: list[Campaign] = []
    flagged = 0
    for rec in records:
        step = flagging_step(rec)
        if step is None:
            continue
        flagged += 1
        rule, mode, note = step
        key = (gateway_of(rec), rec.ingress, rule)
        c = open_.get(key)
        if c is not None and rec.invite_at - c.last > gap:
            done.append(c)
            c = None
        if c is None:
            c = open_[key] = Campaign(key[0], key[1], rule, mode, rec.invite_at, rec.invite_at)
        if mode != "dry-run":
            c.mode = mode
        c.add(rec, note, samples)
    done.extend(open_.values())
    done.sort(key=lambda c: (-c.calls, c.first))
    return {
        "since": format_time(since),
        "until": format_time(until),
        "flagged_calls": flagged,
        "campaigns": [c.as_dict() for c in done[:limit]],
        "more": max(0, len(done) - limit),
    }


def format_campaigns(rep: dict[str, Any]) -> str:
    out = [f"flagged calls {rep['since']} .. {rep['until']}: {rep['flagged_calls']} in "
           f"{len(rep['campaigns']) + rep['more']} campaign(s)"]
    if not rep["campaigns"]:
        return out[0]
    headers = ["#", "calls", "rule", "mode", "gateway", "upstream", "first seen", "last seen", "origs", "dests",
               "attest"]
    rows: list[Sequence[str]] = []
    for i, c in enumerate(rep["campaigns"], 1):
        rows.append([str(i), str(c["calls"]), c["rule"], c["mode"], c["gateway"], ", ".join(c["upstream"]),
                     c["first_seen"], c["last_seen"], str(c["distinct_origs"]), str(c["distinct_dests"]),
                     " ".join(f"{k}:{v}" for k, v in c["attest"].items())])
    out.append(text_table(headers, rows))
    for i, c in enumerate(rep["campaigns"], 1):
        out.append("")
        out.append(f"campaign {i}: sample calls")
        for s in c["samples"]:
            out.append(f"  {s['at']}  {s['orig']} -> {s['dest']}  {s['status']}  {s['a_call_id']}  {s['note']}")
    if rep["more"]:
        out.append(f"\n... {rep['more']} smaller campaign(s) not shown (--limit)")
    return "\n".join(out)
