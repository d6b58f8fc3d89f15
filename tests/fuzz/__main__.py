"""``python -m tests.fuzz [--target parser|engine|stream|all] [--seconds N] [--runs N]`` (``make fuzz``).

Each target runs under atheris (libFuzzer, coverage-guided) in its own subprocess, bounded by --seconds (and
--runs), starting from the seeds (every RFC 4475 and malformed message, call flows) plus the working corpus kept
in tests/fuzz/corpus/<target>/. Prints the inputs run per target; a crash is saved under tests/fuzz/crashes/
(libFuzzer's artifact, named <target>-crash-<sha1>) and makes the exit status 1.

Without atheris (``pip install atheris``) it falls back to a mutation loop without coverage feedback, and says
so. ``--replay FILE`` runs one saved input in-process and shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CRASHES = HERE / "crashes"
ALL = ("parser", "engine", "stream")
MAX_LEN = {"parser": 24576, "engine": 32768, "stream": 16384}


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=(*ALL, "all"), default="all")
    ap.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    ap.add_argument("--runs", type=int, default=0, help="stop a target after this many inputs (0: no limit)")
    ap.add_argument("--corpus", type=Path, default=HERE / "corpus", help="working corpus root (kept between runs)")
    ap.add_argument("--crashes", type=Path, default=CRASHES, help="where crashing inputs are saved")
    ap.add_argument("--fallback", action="store_true", help="use the non-coverage-guided loop even with atheris")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the fallback loop")
    ap.add_argument("--fuzzer-seed", type=int, default=0, help="libFuzzer -seed (0: random)")
    ap.add_argument("--verbose", action="store_true", help="show libFuzzer's output as it runs")
    ap.add_argument("--replay", type=Path, nargs="+", help="run these saved inputs once (with --target) and exit")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))

    if args.replay:
        return replay(args.target, args.replay)

    targets = ALL if args.target == "all" else (args.target,)
    use_atheris = have_atheris() and not args.fallback
    if not use_atheris:
        print("atheris is not installed (pip install atheris): running the fallback mutation loop, "
              "which is NOT coverage-guided" if not args.fallback else "fallback mutation loop (not coverage-guided)")
    args.crashes.mkdir(parents=True, exist_ok=True)
    results = []
    for target in targets:
        run = run_atheris if use_atheris else run_fallback
        results.append(run(target, args))
    print()
    print(f"{'target':8} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'corpus':>7} {'cov':>6}  crashes")
    failed = False
    for r in results:
        rate = r["runs"] / r["seconds"] if r["seconds"] else 0.0
        crashes = ", ".join(str(p) for p in r["crashes"]) or "none"
        print(f"{r['target']:8} {r['runs']:>10} {r['seconds']:>8.1f} {rate:>9.0f} {r['corpus']:>7} "
              f"{r['cov']:>6}  {crashes}")
        if r["error"]:
            print(f"  {r['target']}: {r['error']}")
        failed = failed or bool(r["crashes"]) or bool(r["error"])
    return 1 if failed else 0


# --- atheris -----------------------------------------------------------------------------------------------

_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: \d+ corp: (\d+)/", re.M)


def run_atheris(target: str, args: argparse.Namespace) -> dict[str, Any]:
    from tests.fuzz.seeds import write_seeds

    corpus = args.corpus / target
    nseeds = write_seeds(target, corpus)
    logs = HERE / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{target}.log"
    cmd = [sys.executable, "-m", "tests.fuzz.runner", target, str(corpus),
           f"-max_total_time={args.seconds}", f"-max_len={MAX_LEN[target]}", "-timeout=10", "-rss_limit_mb=2048",
           "-print_final_stats=1", f"-dict={HERE / 'sip.dict'}", f"-artifact_prefix={args.crashes}/{target}-"]
    if args.runs:
        cmd.append(f"-runs={args.runs}")
    if args.fuzzer_seed:
        cmd.append(f"-seed={args.fuzzer_seed}")
    print(f"== {target}: atheris/libFuzzer, {nseeds} seeds + corpus {corpus}, {args.seconds} s"
          + (f", at most {args.runs} inputs" if args.runs else ""), flush=True)
    before = set(args.crashes.iterdir())
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log if not args.verbose else None, stderr=subprocess.STDOUT
                                if not args.verbose else None, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
        try:
            rc = proc.wait(timeout=args.seconds + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    elapsed = time.monotonic() - start
    text = log_path.read_text(errors="replace") if not args.verbose else ""
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    status = _STATUS.findall(text)
    runs = stats.get("number_of_executed_units") or (int(status[-1][0]) if status else 0)
    new = sorted(set(args.crashes.iterdir()) - before)
    crashes = [p.relative_to(ROOT) if p.is_relative_to(ROOT) else p for p in new]
    error = ""
    if rc != 0 and not crashes:
        error = f"libFuzzer exited {rc} without an artifact; see {log_path}"
    if crashes or error:
        tail = text[-4000:]
        print(tail)
    return {"target": target, "runs": runs, "seconds": elapsed, "crashes": crashes, "error": error,
            "corpus": int(status[-1][2]) if status else len(list(corpus.iterdir())),
            "cov": int(status[-1][1]) if status else "-"}


# --- fallback: mutations without coverage feedback --------------------------------------------------------------

_TOKENS = [b"\r\n", b"\r\n\r\n", b";tag=", b";branch=z9hG4bK", b"SIP/2.0", b"Content-Length: ", b"l: ", b"<", b">",
           b'"', b",", b";", b":", b"\x00", b"\xff", b" ", b"\t", b"\r\n ", b"sip:", b"4294967296", b"-1", b"%",
           b"Via: SIP/2.0/UDP ", b"CSeq: 1 ", b"To: ", b"From: ", b"Call-ID: ", b"Contact: "]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(b))
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.choice(_TOKENS)
        elif op == 3 and b:
            del b[pos : pos + rng.randint(1, 32)]
        elif op == 4 and b:
            start = rng.randrange(len(b))
            b[pos:pos] = b[start : start + rng.randint(1, 64)]
        elif op == 5:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            b[pos:] = other[start:]
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b[: MAX_LEN_FALLBACK])


MAX_LEN_FALLBACK = 24576


def run_fallback(target: str, args: argparse.Namespace) -> dict[str, Any]:
    from tests.fuzz.seeds import SEEDS
    from tests.fuzz.targets import TARGETS

    fn = TARGETS[target]
    pool = SEEDS[target]()
    corpus = args.corpus / target
    if corpus.is_dir():
        pool += [p.read_bytes() for p in sorted(corpus.iterdir())[:2000]]
    rng = random.Random(args.seed)
    print(f"== {target}: fallback loop, {len(pool)} seeds, {args.seconds} s", flush=True)
    start = time.monotonic()
    deadline = start + args.seconds
    runs = 0
    crashes: list[Path] = []
    inputs = iter(pool)  # every seed once, then mutations
    while time.monotonic() < deadline and (not args.runs or runs < args.runs):
        data = next(inputs, None)
        if data is None:
            data = mutate(rng, rng.choice(pool), pool)
        runs += 1
        try:
            fn(data)
        except Exception:
            import hashlib

            path = args.crashes / f"{target}-crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            print(traceback.format_exc())
            crashes.append(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            break
    return {"target": target, "runs": runs, "seconds": time.monotonic() - start, "crashes": crashes, "error": "",
            "corpus": len(pool), "cov": "-"}


def replay(target: str, paths: list[Path]) -> int:
    from tests.fuzz.targets import TARGETS

    bad = 0
    for path in paths:
        name = target
        if name == "all":
            name = next((t for t in ALL if path.name.startswith(t + "-")), "")
            if not name:
                print(f"{path}: say which target with --target")
                return 2
        try:
            TARGETS[name](path.read_bytes())
        except Exception:
            bad += 1
            print(f"{path} ({name}): FAILS")
            traceback.print_exc()
        else:
            print(f"{path} ({name}): ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
