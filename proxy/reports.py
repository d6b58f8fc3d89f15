"""Suspicious-traffic reports over the call records, and the time/duration parsing the CLI and API share.

Why SQL aggregates: a report window (an hour, a day) is an index range on invite_at; the database groups the
rows without shipping them to Python, so a report over a busy hour stays well under a second. The SQL is written
once for SQLite and PostgreSQL (CASE sums instead of summing booleans); `Reader` names the one difference.
"""

from __future__ import annotations

import datetime
import importlib
import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from proxy.records import CallRecord, Reader, SqliteReader
from proxy.recordstore import Source, reading

__all__ = [
    "DIMENSIONS",
    "format_duration",
    "format_records",
    "format_report",
    "format_time",
    "parse_duration",
    "parse_time",
    "per_minute",
    "plot_per_minute",
    "report",
    "text_table",
]

#: Report section -> column. Trunk is the ingress trunk: where the traffic entered.
DIMENSIONS: Final = {"orig": "orig", "origid": "origid", "spc": "spc", "trunk": "ingress"}
#: An answered call shorter than this is "short" (robocalls hang up fast).
SHORT_CALL: Final = 6.0
#: Flags are only raised for sources with at least this many calls in the window.
MIN_CALLS_FOR_FLAGS: Final = 10

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1h30m`, `2d` -> seconds."""
    t = text.strip().lower()
    pos = 0
    total = 0.0
    if not t:
        raise ValueError("empty duration")
    while pos < len(t):
        m = _DURATION_RE.match(t, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"not a duration: {text!r} (e.g. 90s, 5m, 1h, 2d)")
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    return total


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from `1717000000`, ISO 8601 (`2024-05-29T16:26:40Z`, `2024-05-29 16:26:40+02:00`;
    no offset means UTC: traceback requests give UTC), `now`, or `-10m` (that long ago)."""
    t = text.strip()
    current = now if now is not None else datetime.datetime.now(datetime.UTC).timestamp()
    if t == "now":
        return current
    if t.startswith("-"):
        return current - parse_duration(t[1:])
    try:
        return float(t)
    except ValueError:
        pass
    iso = t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t
    try:
        dt = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (epoch seconds, ISO 8601, now or -10m)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


def format_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- the report -------------------------------------------------------------------------------------------------


def _section(r: Reader, column: str, since: float, until: float, limit: int) -> list[dict[str, Any]]:
    p = r.param
    sql = f"""
        SELECT {column}, COUNT(*),
               SUM(CASE WHEN answered_at IS NOT NULL THEN 1 ELSE 0 END),
               SUM(CASE WHEN answered_at IS NOT NULL AND duration < {p} THEN 1 ELSE 0 END),
               COUNT(DISTINCT dest),
               SUM(CASE WHEN verification = 'failed' THEN 1 ELSE 0 END),
               SUM(CASE WHEN NOT identity_present OR (identity_present IS NULL AND verification = 'missing')
                   THEN 1 ELSE 0 END)
        FROM calls
        WHERE invite_at >= {p} AND invite_at < {p} AND {column} IS NOT NULL AND {column} != ''
        GROUP BY {column} ORDER BY COUNT(*) DESC, {column} LIMIT {p}"""
    rows = []
    for key, calls, answered, short, dests, failed, unsigned in r.fetch(sql, (SHORT_CALL, since, until, limit)):
        short_share = short / answered if answered else 0.0
        failed_share = failed / calls
        unsigned_share = unsigned / calls
        flags = []
        if calls >= MIN_CALLS_FOR_FLAGS:
            if answered and short_share >= 0.5:
                flags.append("short-calls")
            if failed_share >= 0.1:
                flags.append("failed-verification")
            if unsigned_share >= 0.5:
                flags.append("unsigned")
            if dests / calls >= 0.9:
                flags.append("spread-destinations")
        rows.append({
            "key": key,
            "calls": calls,
            "answered": answered,
            "short_share": round(short_share, 4),
            "distinct_dests": dests,
            "failed_share": round(failed_share, 4),
            "unsigned_share": round(unsigned_share, 4),
            "flags": flags,
        })
    return rows


def _trunk_load(r: Reader, since: float, until: float, limit: int) -> list[dict[str, Any]]:
    """INVITEs offered, calls admitted and INVITEs refused at the door per trunk (the records' trunk_load rows:
    refused INVITEs leave no call record), busiest refusers first; flags `flooding` (half or more refused) and
    `over-contract` (refused for the trunk's own limits). SQLite keeps these rows; PostgreSQL does not (its
    nodes' /metrics count the same per trunk)."""
    if not isinstance(r, SqliteReader):
        return []
    conn = r.conn
    try:
        rows = conn.execute(
            "SELECT trunk, SUM(offered), SUM(admitted), SUM(shed) FROM trunk_load WHERE at >= ? AND at < ? "
            "GROUP BY trunk ORDER BY SUM(shed) DESC, SUM(offered) DESC, trunk LIMIT ?",
            (since, until, limit)).fetchall()
        reasons_rows = conn.execute(
            "SELECT trunk, reasons FROM trunk_load WHERE at >= ? AND at < ? AND shed > 0", (since, until)).fetchall()
    except sqlite3.OperationalError:
        return []  # a database from before the table existed
    reasons: dict[str, dict[str, int]] = {}
    for trunk, text in reasons_rows:
        per = reasons.setdefault(trunk, {})
        for reason, n in (json.loads(text) if text else {}).items():
            per[reason] = per.get(reason, 0) + int(n)
    out = []
    for trunk, offered, admitted, shed in rows:
        share = shed / offered if offered else 0.0
        why = dict(sorted(reasons.get(trunk, {}).items(), key=lambda kv: -kv[1]))
        flags = []
        if offered >= MIN_CALLS_FOR_FLAGS and share >= 0.5:
            flags.append("flooding")
        if why.get("max-cps") or why.get("max-calls"):
            flags.append("over-contract")
        out.append({"trunk": trunk, "offered": offered, "admitted": admitted, "shed": shed,
                    "shed_share": round(share, 4), "reasons": why, "flags": flags})
    return out


def report(db: Source, since: float, until: float, limit: int = 20) -> dict[str, Any]:
    """The busiest sources in [since, until) by orig TN, origid, SPC and ingress trunk, with the shares that
    tell robocalling from ordinary traffic: short answered calls (< 6 s), distinct destinations per call,
    failed verification and unsigned calls (both as shares of all the source's calls); and the load each trunk
    offered at the door, with what was refused (floods, trunks beyond their contracted rate)."""
    with reading(db) as r:
        p = r.param
        total = r.fetch(f"SELECT COUNT(*) FROM calls WHERE invite_at >= {p} AND invite_at < {p}",
                        (since, until))[0][0]
        sections = {name: _section(r, col, since, until, limit) for name, col in DIMENSIONS.items()}
        load = _trunk_load(r, since, until, limit)
    return {
        "since": format_time(since),
        "until": format_time(until),
        "calls": total,
        "short_call_seconds": SHORT_CALL,
        "sources": sections,
        "trunk_load": load,
    }


def per_minute(db: Source, since: float, until: float) -> dict[str, list[tuple[float, int]]]:
    """Calls per minute by verstat ("none" for unverified calls): what `--plot` draws."""
    out: dict[str, list[tuple[float, int]]] = {}
    with reading(db) as r:
        p = r.param
        rows = r.fetch(
            f"SELECT {r.minute_sql}, COALESCE(verstat, 'none'), COUNT(*) FROM calls "
            f"WHERE invite_at >= {p} AND invite_at < {p} GROUP BY 1, 2 ORDER BY 1", (since, until))
    counts: dict[str, dict[int, int]] = {}
    for minute, verstat, n in rows:
        counts.setdefault(verstat, {})[int(minute)] = n
    # Every minute of the window, quiet ones as zeros: a gap in traffic is information, not a line to draw over.
    minutes = range(int(since // 60), int((until - 1e-9) // 60) + 1)
    for verstat, by_minute in counts.items():
        out[verstat] = [(m * 60.0, by_minute.get(m, 0)) for m in minutes]
    return out


_PLOT_ORDER = {"TN-Validation-Passed": 0, "No-TN-Validation": 1, "none": 2, "TN-Validation-Failed": 3}
_PLOT_COLOURS = {"TN-Validation-Passed": "#2e7d32", "No-TN-Validation": "#f9a825", "none": "#90a4ae",
                 "TN-Validation-Failed": "#c62828"}


def plot_per_minute(series: dict[str, list[tuple[float, int]]], path: str | Path, title: str = "") -> str | None:
    """Draw calls per minute by verstat to a PNG. Returns None when done, else why not (matplotlib missing:
    it is an optional, heavy dependency; `pip install matplotlib` enables the plot)."""
    try:
        # Imported by name: an optional dependency with no type stubs in the test set.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no plot drawn"
    fig, ax = plt.subplots(figsize=(11, 4.5))
    names = sorted(series, key=lambda v: _PLOT_ORDER.get(v, len(_PLOT_ORDER)))
    if names:
        xs = [datetime.datetime.fromtimestamp(t, datetime.UTC) for t, _ in series[names[0]]]
        ax.stackplot(xs, *[[n for _, n in series[v]] for v in names], labels=names, step="post",
                     colors=[_PLOT_COLOURS.get(v, "#9e9e9e") for v in names], alpha=0.85)
        ax.legend(loc="upper left", fontsize="small")  # (a window without calls has nothing to name)
    ax.set_ylabel("calls / minute")
    ax.set_xlabel("UTC")
    ax.set_title(title or "calls per minute by verstat")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return None


# --- tables -------------------------------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def format_records(records: Sequence[CallRecord]) -> str:
    """The readable traceback answer: where each call entered, from whom, and what its signer claimed."""
    if not records:
        return "no matching calls"
    headers = ["invite (UTC)", "orig", "dest", "ingress", "source", "spc", "attest", "origid", "verstat", "code",
               "a-leg Call-ID"]
    rows = [
        [
            format_time(r.invite_at),
            r.orig or r.orig_signaled or "",
            r.dest or r.dest_signaled or "",
            r.ingress,
            f"{r.source_ip}:{r.source_port}",
            r.spc or "",
            r.attest or "",
            r.origid or "",
            r.verstat or ("signed" if r.signed else ""),
            str(r.status) if r.status is not None else "",
            r.a_call_id,
        ]
        for r in records
    ]
    return text_table(headers, rows)


def format_report(rep: dict[str, Any]) -> str:
    out = [f"calls {rep['since']} .. {rep['until']}: {rep['calls']}"]
    headers = ["calls", "answered", "short<6s", "dests", "failed", "unsigned", "flags"]
    for name, rows in rep["sources"].items():
        out.append("")
        out.append(f"by {name}")
        if not rows:
            out.append("  (none)")
            continue
        table_rows = [
            [str(r["key"]), str(r["calls"]), str(r["answered"]), f"{r['short_share']:.0%}", str(r["distinct_dests"]),
             f"{r['failed_share']:.0%}", f"{r['unsigned_share']:.0%}", ",".join(r["flags"])]
            for r in rows
        ]
        out.append(text_table([name, *headers], table_rows))
    load = rep.get("trunk_load")
    if load:
        out.append("")
        out.append("load at the door by trunk (INVITEs refused leave no call record)")
        out.append(text_table(
            ["trunk", "offered", "admitted", "refused", "refused%", "reasons", "flags"],
            [[str(r["trunk"]), str(r["offered"]), str(r["admitted"]), str(r["shed"]), f"{r['shed_share']:.0%}",
              ",".join(f"{k}:{v}" for k, v in r["reasons"].items()), ",".join(r["flags"])] for r in load]))
    return "\n".join(out)
