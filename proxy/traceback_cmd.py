"""CLI subcommands `traceback` and `report` (registered by proxy.cli like the STIR ones).

Both read the records database directly (read-only), so they work whether or not stirgate is running: the
SQLite file, or the PostgreSQL database every node writes (`records.backend` in the config, or a
postgresql:// URI as --db).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time

from proxy.campaigns import campaigns, format_campaigns
from proxy.config import RecordsSettings
from proxy.records import RecordsError
from proxy.recordstore import Source, traceback
from proxy.reports import (
    format_duration,
    format_records,
    format_report,
    format_time,
    parse_duration,
    parse_time,
    per_minute,
    plot_per_minute,
    report,
)

__all__ = ["register"]


def _db_and_cc(args: argparse.Namespace) -> tuple[Source, str] | None:
    """Where the records are and the country code: --db/--country-code, else the config's, else the defaults."""
    db: Source | None = args.db
    cc: str | None = args.country_code
    if args.config:
        from proxy.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"stirgate: {exc}", file=sys.stderr)
            return None
        records = getattr(config, "records", None)
        if db is None and isinstance(records, RecordsSettings):
            db = records  # its backend decides: the SQLite path or the PostgreSQL DSN
        if cc is None:
            cc = config.stir.country_code
    return db if db is not None else RecordsSettings().path, cc or ""


def _traceback(args: argparse.Namespace) -> int:
    found = _db_and_cc(args)
    if found is None:
        return 2
    db, cc = found
    try:
        at = parse_time(args.at)
        window = parse_duration(args.window)
    except ValueError as exc:
        print(f"stirgate: {exc}", file=sys.stderr)
        return 2
    try:
        records = traceback(db, args.orig, args.dest, at, window, country_code=cc)
    except (ValueError, FileNotFoundError, sqlite3.Error, RecordsError) as exc:
        print(f"stirgate: traceback: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"orig": args.orig, "dest": args.dest, "at": format_time(at), "window_seconds": window,
                          "calls": [r.as_dict() for r in records]}, indent=1))
    else:
        print(f"calls {args.orig} -> {args.dest} within {format_duration(window)} of {format_time(at)}: "
              f"{len(records)}")
        print(format_records(records))
    return 0 if records else 1


def _report(args: argparse.Namespace) -> int:
    found = _db_and_cc(args)
    if found is None:
        return 2
    db, _ = found
    try:
        now = time.time()
        since = now - parse_duration(args.since)
        until = parse_time(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"stirgate: {exc}", file=sys.stderr)
        return 2
    if args.campaigns:
        try:
            gap = parse_duration(args.gap)
            found_campaigns = campaigns(db, since, until, gap=gap, limit=args.limit)
        except ValueError as exc:
            print(f"stirgate: {exc}", file=sys.stderr)
            return 2
        except (FileNotFoundError, sqlite3.Error, RecordsError) as exc:
            print(f"stirgate: report: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(found_campaigns, indent=1) if args.json else format_campaigns(found_campaigns))
        return 0
    try:
        rep = report(db, since, until, args.limit)
        series = per_minute(db, since, until) if args.plot else None
    except (FileNotFoundError, sqlite3.Error, RecordsError) as exc:
        print(f"stirgate: report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=1) if args.json else format_report(rep))
    if args.plot and series is not None:
        why_not = plot_per_minute(series, args.plot, f"calls per minute by verstat, last {args.since}")
        if why_not is not None:
            print(f"stirgate: --plot: {why_not}", file=sys.stderr)
        else:
            print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=f"records database: a SQLite file or a PostgreSQL URI (postgresql://user@host/db) "
                                f"(default: the config's records, else {RecordsSettings().path})")
    p.add_argument("-c", "--config", help="stirgate YAML: its records (SQLite path or PostgreSQL DSN) and "
                                          "stir.country_code are used")
    p.add_argument("--country-code", help="completes national numbers as stored (default: the config's)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `traceback` and `report`; each sets func=callable(args) -> int."""
    tb = subparsers.add_parser("traceback", help="calls from one TN to another around a time (traceback request)",
                               description="Exit 0 when calls matched, 1 when none did, 2 on errors.")
    tb.add_argument("--orig", required=True, help="calling TN (any spelling: +1 555 010 0000, 15550100000)")
    tb.add_argument("--dest", required=True, help="called TN")
    tb.add_argument("--at", required=True, help="time of the call: ISO 8601 (UTC unless an offset is given), "
                                                "epoch seconds, now, or -2h")
    tb.add_argument("--window", default="5m", help="match calls this long either side of --at (default 5m)")
    _common(tb)
    tb.set_defaults(func=_traceback)

    rp = subparsers.add_parser("report", help="suspicious sources by volume, short calls, spread, verification")
    rp.add_argument("--since", default="1h", help="window length back from now (default 1h)")
    rp.add_argument("--until", help="end of the window (default now)")
    rp.add_argument("--limit", type=int, default=20, help="rows per section (default 20)")
    rp.add_argument("--plot", metavar="FILE.png", help="draw calls per minute by verstat (needs matplotlib)")
    rp.add_argument("--campaigns", action="store_true",
                    help="the flagged calls grouped into campaigns (gateway, ingress, rule), with counts, first/last "
                         "seen, samples and the upstream hop: what a traceback response to the ITG needs")
    rp.add_argument("--gap", default="1h", help="--campaigns: a longer quiet gap starts a new campaign (default 1h)")
    _common(rp)
    rp.set_defaults(func=_report)
