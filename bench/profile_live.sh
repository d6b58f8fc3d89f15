#!/bin/bash
# Where a live stirgate worker's CPU goes: one bench step at 1000 cps (records on) with `perf record -g` attached to
# the stirgate process for 8 s, then the shares by library and the top symbols.
#   bench/profile_live.sh [mode] [out-prefix]      # mode: relay | sign | verify (default sign)
set -eu
mode=${1:-sign}
out=${2:-bench-results/profile-$mode}
mkdir -p "$(dirname "$out")"
.venv/bin/python -m bench --mode "$mode" --sut stirgate --rates 1000 --duration 24 --pairs 0 --records \
  --out bench-results >"$out.bench.txt" 2>&1 &
bench=$!
pid=""
for _ in $(seq 1 120); do
  pid=$(pgrep -f "stirgate run -c" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.5
done
[ -n "$pid" ] || { echo "no stirgate process appeared (see $out.bench.txt)"; exit 1; }
sleep 10  # past the warm-up
perf record -F 1999 -g -p "$pid" -o "$out.data" -- sleep 8 >/dev/null 2>&1
wait $bench
perf report -i "$out.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
perf report -i "$out.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' \
  | head -40 >"$out.symbols.txt"
grep -E "PASS|fail" "$out.bench.txt" || true
echo "top symbols: $out.symbols.txt"
