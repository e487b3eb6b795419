#!/usr/bin/env bash
# Where a decode token's time goes, measured inside one run, so that two runs
# in different bandwidth phases of a shared machine can still be compared:
# `dsv2 bench` under `perf record -e cpu-clock`, the samples split into the
# weight GEMVs, the MLA attention kernels and the rest, then scaled by the
# run's own milliseconds per token (docs/benchmarks.md, "01:20-02:15").
#
#   scripts/decode-split.sh DEPTH DELAY_MS [bench flags...]
#
# DELAY_MS skips the model's build and the depth's pre-fill (perf -D); the
# prefill GEMMs that still land in the window are counted apart. Needs perf
# and a Release build in $BUILD_DIR (default build-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
depth=${1:?depth}
delay=${2:?delay in ms}
shift 2
bin=${BUILD_DIR:-build-perf}/examples/dsv2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
json=$(perf record -q -D "$delay" -e cpu-clock -o "$tmp/perf.data" "$bin" bench --preset v2-lite --layers 8 \
    --dtype int8 --threads 2 --prompt 0 --gen 1000 --reps 1 --depth "$depth" --json "$@" 2>/dev/null)
perf report -i "$tmp/perf.data" --no-children --sort symbol -F sample,symbol 2>/dev/null | grep "\[" > "$tmp/samples"
python3 - "$json" "$tmp/samples" <<'PY'
import json, re, sys
run = json.loads(sys.argv[1])
parts = {"gemv": 0, "attention": 0, "other": 0}
prefill = 0
for line in open(sys.argv[2]):
    m = re.match(r"\s*(\d+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    n, sym = int(m.group(1)), m.group(2)
    if any(k in sym for k in ("gemm_panels", "gebp", "gemm_pack", "pack_panel")):
        prefill += n
    elif "gemv_rows_q8" in sym or "gemv_cols" in sym:
        parts["gemv"] += n
    elif any(k in sym for k in ("q8_score", "q8_value", "decode_split_q8", "merge_q8", "q8_regroup")):
        parts["attention"] += n
    else:
        parts["other"] += n
total = sum(parts.values())
ms = 1000 / run["decode_tokens_per_s"]
print(f"depth {run['depth']}: {run['decode_tokens_per_s']:.2f} tok/s at {run['bandwidth_gb_s']:.1f} GB/s, "
      f"{ms:.2f} ms a token = " + ", ".join(f"{k} {ms * v / total:.2f} ms" for k, v in parts.items())
      + f" (prefill samples left out: {prefill})")
PY
