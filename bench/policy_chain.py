"""CPU per call of the whole built-in chain, with 10 M-number allow/deny and DNC lists loaded.

Run: `python -m bench.policy_chain [--numbers 10000000] [--calls 200000]`. Every call passes every policy
(the worst case: no early reject ends the chain). Reports list load time and memory, the chain's CPU per
evaluate() and, separately, CallContext.build() (the engine's share). Target (issue 4): chain <= 30 us.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import tempfile
import time
from pathlib import Path

from policies.base import CallContext
from policies.loader import load_policies
from policies.numbers import NumberSet
from proxy.stir.verifier import VerificationResult

CHAIN = """
trunks:
  carrier:
    - policy: require_identity
    - policy: verification
    - policy: replay
    - policy: lists
      params:
        allow: {{orig_numbers_file: {allow}, sources: ["10.0.0.0/8"]}}
        deny: {{orig_numbers_file: {deny}, orig_prefixes: ["1900", "1976"], spcs: ["666X"]}}
    - policy: dnc
      params: {{file: {dnc}, exempt_spcs: ["123A"]}}
    - policy: invalid_numbers
    - policy: anonymous
    - policy: neighbor_spoofing
    - policy: velocity
      params: {{key: orig_tn, window: 60, max_calls: 50, max_destinations: 40, max_short_share: 0.8}}
    - policy: velocity
      name: velocity-spc
      mode: dry-run
      params: {{key: spc, window: 1, max_calls: 1000000, action: tag, display_prefix: "FLOOD? "}}
    - policy: min_attestation
      params: {{level: B}}
    - policy: display_tag
      params: {{attest: [C], verstat: [TN-Validation-Failed]}}
    - policy: route_by_verstat
      params: {{failed: [analytics]}}
"""


def _write_numbers(path: Path, n: int, start: int, step: int) -> None:
    with open(path, "w") as f:
        for lo in range(0, n, 1_000_000):
            f.write("\n".join(map(str, range(start + lo * step, start + min(n, lo + 1_000_000) * step, step))))
            f.write("\n")


def _number_sets(policy: object) -> list[NumberSet]:
    found: list[NumberSet] = [s for s in getattr(policy, "sets", ()) if isinstance(s, NumberSet)]
    for side in ("allow", "deny"):
        match = getattr(policy, side, None)
        found += [c for _, c in getattr(match, "checks", ()) if isinstance(c, NumberSet)]
    return found


def _rss() -> int:
    """Resident memory now, bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _contexts(count: int) -> list[CallContext]:
    rnd = random.Random(7)
    passed = VerificationResult("passed", "TN-Validation-Passed", None, None, "A",
                                "0b8f6d9e-2f0e-4c38-9d0b-1d1f6f8f6f00", "123A", "CN=SP")
    out = []
    for i in range(count):
        orig = f"1{rnd.randrange(201, 989)}{rnd.randrange(200, 999)}{rnd.randrange(0, 9999):04d}"
        dest = f"1{rnd.randrange(201, 989)}{rnd.randrange(200, 999)}{rnd.randrange(0, 9999):04d}"
        sig = f"{i:08d}" + "s" * 78
        headers = [
            ("from", f'"Caller" <sip:+{orig}@carrier.example>;tag=a{i}'),
            ("to", f"<sip:+{dest}@us.example>"),
            ("p-asserted-identity", f"<sip:+{orig}@carrier.example>"),
            ("identity", f"eyJhbGciOiJFUzI1NiJ9.eyJhdHRlc3QiOiJBIn0.{sig};info=<https://cert.example/sp.pem>"
                         ";alg=ES256;ppt=shaken"),
        ]
        out.append(CallContext.build(call_id=f"call-{i}", trunk="carrier", source=("192.0.2.10", 5060),
                                     orig=f"+{orig}", dest=f"+{dest}", display_name="Caller",
                                     verification=passed, headers=headers, now=1_700_000_000.0 + i * 0.001))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--numbers", type=int, default=10_000_000, help="entries in each big list")
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        # deny list: odd numbers from 12000000001 (callers in the contexts are random, a few hit)
        _write_numbers(d / "deny.txt", args.numbers, 19_000_000_001, 7)
        _write_numbers(d / "allow.txt", args.numbers // 10, 18_000_000_000, 3)
        _write_numbers(d / "dnc.txt", args.numbers, 19_500_000_000, 11)
        print(f"wrote list files in {time.perf_counter() - t:.1f} s")
        text = CHAIN.format(allow=d / "allow.txt", deny=d / "deny.txt", dnc=d / "dnc.txt")
        (d / "policies.yaml").write_text(text)
        pset = load_policies(d / "policies.yaml", trunks=["carrier", "analytics"])
        rss0 = _rss()
        t = time.perf_counter()
        pset.setup_sync()
        load_s = time.perf_counter() - t
        gc.collect()
        held = _rss() - rss0
        total = args.numbers * 2 + args.numbers // 10
        arrays = sum(s.nbytes for e in pset.entries() for s in _number_sets(e.policy))
        print(f"lists: {total:,} numbers loaded in {load_s:.1f} s; the sets hold {arrays / 1e6:.0f} MB "
              f"({arrays / total:.1f} bytes/number); RSS grew {held / 1e6:.0f} MB (with the allocator's "
              "slack from loading)")

    chain = pset.chain_for("carrier")
    t = time.perf_counter()
    ctxs = _contexts(args.calls)
    build_us = (time.perf_counter() - t) / args.calls * 1e6
    gc.collect()
    gc.freeze()
    for ctx in ctxs[:1000]:
        chain.evaluate(ctx)
    outcomes: dict[str, int] = {}
    t0 = time.process_time()
    for ctx in ctxs[1000:]:
        r = chain.evaluate(ctx)
        outcomes[r.decision.outcome] = outcomes.get(r.decision.outcome, 0) + 1
    per_call = (time.process_time() - t0) / (len(ctxs) - 1000) * 1e6
    print(f"chain of {len(chain)} policies: {per_call:.1f} us CPU per evaluate() (target <= 30 us); "
          f"outcomes {outcomes}")
    print(f"CallContext.build + test-data generation: {build_us:.1f} us per call (upper bound of build)")
    per_policy: dict[str, float] = {}
    sample = ctxs[1000:21000]
    for entry in chain.entries:
        ev = entry.policy.evaluate
        t0 = time.process_time()
        for ctx in sample:
            ev(ctx)
        per_policy[entry.name] = (time.process_time() - t0) / len(sample) * 1e6
    print("per policy (us): " + ", ".join(f"{k} {v:.2f}" for k, v in per_policy.items()))


if __name__ == "__main__":
    main()
