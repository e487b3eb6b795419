#!/usr/bin/env bash
# Runs every benchmark program for a token amount of time, so CI exercises
# them (they build, validate and do not crash) without ever gating on speed.
# Usage: scripts/bench-smoke.sh [build dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shopt -s nullglob
benches=("$build"/bench/bench_*)
[ ${#benches[@]} -gt 0 ] || { echo "bench-smoke: no benchmarks under $build/bench" >&2; exit 1; }
for b in "${benches[@]}"; do
  [ -x "$b" ] || continue
  echo "== $(basename "$b")"
  "$b" --benchmark_min_time=0.001 --benchmark_repetitions=1 >/dev/null
done
echo "== dsv2 bench (tiny preset)"
"$build"/examples/dsv2 bench --preset tiny --prompt 16 --gen 4 --depth 8 --reps 1 --json
