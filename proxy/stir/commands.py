"""CLI subcommands `certs init`, `sign`, `verify` for the `stirgate` entry point (registered by proxy.cli).

`sign`/`verify` work on a single Identity header: what a carrier engineer reaches for when a call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from .certs import CertEntry, TrustStore
from .crl_fetcher import CrlFetcher
from .demo_certs import init_demo_certs, parse_range
from .errors import SigningError
from .fetcher import CertFetcher, FetchSettings
from .signer import Signer, SigningProfile, date_header
from .verifier import Verifier, VerifierSettings, x5u_of
from .x5u import X5uPolicy


def _certs_init(args: argparse.Namespace) -> int:
    try:
        ranges = tuple(parse_range(r) for r in args.delegate_range or ())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tns = tuple(args.delegate_tn or ())
    for path in init_demo_certs(args.dir, spc=args.spc, delegate_ranges=ranges, delegate_tns=tns):
        print(path)
    return 0


def _sign(args: argparse.Namespace) -> int:
    now = float(args.iat) if args.iat is not None else time.time()
    try:
        signer = Signer(SigningProfile("cli", args.key, args.x5u))
        value = signer.sign(args.orig, args.dest, args.attest, args.origid or str(uuid.uuid4()), now)
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(value)
    if args.date:
        print(f"Date: {date_header(now)}", file=sys.stderr)
    return 0


async def _fetch(verifier: Verifier, values: list[str]) -> dict[str, CertEntry]:
    try:
        return await verifier.prepare(values)
    finally:
        if verifier.fetcher is not None:
            await verifier.fetcher.close()


def _verify(args: argparse.Namespace) -> int:
    now = float(args.now) if args.now is not None else time.time()
    policy = X5uPolicy(allow_private=args.allow_private)
    settings = VerifierSettings(iat_max_age=args.max_age, x5u_policy=policy)
    try:
        trust = TrustStore.from_paths(args.ca, args.crl_dir, lenient_tnauthlist=args.lenient_tnauthlist)
    except (OSError, ValueError) as exc:
        print(f"error: trust anchors: {exc}", file=sys.stderr)
        return 2
    values = [args.identity]
    if args.cert_file:
        url = x5u_of(args.identity) or ""
        certs = {url: trust.validate_body(url, Path(args.cert_file).read_bytes(), now)}
        verifier = Verifier(settings)
    else:
        fetch = FetchSettings(ca_file=args.https_ca, total_timeout=args.timeout)
        crls = None if args.no_crl_fetch else CrlFetcher(policy, fetch, unavailable=args.crl_unavailable)
        verifier = Verifier(settings, CertFetcher(trust, policy, fetch, clock=lambda: now, revocation=crls))
        certs = asyncio.run(_fetch(verifier, values))
    result = verifier.verify(values, args.orig, args.dest, args.date, now, certs)
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.passed else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `certs init`, `sign` and `verify`; each sets func=callable(args) -> int."""
    certs = subparsers.add_parser("certs", help="demo certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="write the demo STI-CA, SP certificate/key and x5u https cert")
    init.add_argument("dir")
    init.add_argument("--spc", default="9999", help="SPC put in the SP certificate's TNAuthList")
    init.add_argument("--delegate-range", action="append", metavar="START-END",
                      help="also write an ATIS-1000092 delegate certificate for this TN range (repeatable; "
                           "START+COUNT works too)")  # fmt: skip
    init.add_argument("--delegate-tn", action="append", metavar="TN", help="a single TN for the delegate certificate")
    init.set_defaults(func=_certs_init)

    sign = subparsers.add_parser("sign", help="print an Identity header value (ppt=shaken)")
    sign.add_argument("--orig", required=True, help="calling TN")
    sign.add_argument("--dest", required=True, action="append", help="called TN (repeatable)")
    sign.add_argument("--attest", default="A", choices=["A", "B", "C"])
    sign.add_argument("--key", required=True, help="SP private key (PEM, P-256)")
    sign.add_argument("--x5u", required=True, help="https URL of the SP certificate")
    sign.add_argument("--origid", help="origination id (UUID; random if absent)")
    sign.add_argument("--iat", type=int, help="issued-at (epoch seconds; default now)")
    sign.add_argument("--date", action="store_true", help="also print the matching Date header on stderr")
    sign.set_defaults(func=_sign)

    verify = subparsers.add_parser(
        "verify", help="verify one Identity header; JSON result, non-zero on failure"
    )
    verify.add_argument("identity", help="the Identity header value")
    verify.add_argument("--orig", required=True, help="the call's calling TN (PAI/From)")
    verify.add_argument("--dest", required=True, action="append", help="the call's called TN (repeatable)")
    verify.add_argument(
        "--ca", required=True, action="append", help="trust-anchor file or folder (repeatable)"
    )
    verify.add_argument("--crl-dir", help="folder of CRLs to check")
    verify.add_argument("--cert-file", help="use this certificate file instead of fetching x5u")
    verify.add_argument("--now", type=float, help="frozen clock (epoch seconds)")
    verify.add_argument("--date", help="the call's Date header")
    verify.add_argument("--max-age", type=int, default=60, help="iat freshness window (s)")
    verify.add_argument("--lenient-tnauthlist", action="store_true", help="accept TNAuthList without an SPC")
    verify.add_argument("--allow-private", action="store_true", help="allow loopback/private x5u (tests)")
    verify.add_argument("--https-ca", help="extra CA file for the x5u https server")
    verify.add_argument("--timeout", type=float, default=4.0, help="x5u fetch timeout (s)")
    verify.add_argument("--no-crl-fetch", action="store_true",
                        help="do not fetch CRLs from the certificate's distribution points")  # fmt: skip
    verify.add_argument("--crl-unavailable", choices=["pass", "fail"], default="pass",
                        help="a CRL that cannot be fetched: pass with a note, or fail 437")  # fmt: skip
    verify.set_defaults(func=_verify)
