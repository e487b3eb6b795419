#!/usr/bin/env bash
# The GPU check, one command on one H200 (16 cores) in well under 8 minutes:
# configure (Release, CUDA on), build only the GPU targets, run the CUDA ==
# CPU parity tests, the GPU benchmarks and `dsv2 --backend cuda` end to end
# against the CPU, print a summary. Logs and the summary (six files) land in
# $OUT (when set) or the build directory.
#
#   scripts/gpu-check.sh              configure + build in build-gpu, then run
#   scripts/gpu-check.sh --no-build   run what build-gpu (or $BUILD_DIR) holds
#
# On the device machine, whose image lacks Debian's headers, run
# scripts/gpu-deps.sh here first and carry .gpu-deps along.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
jobs=${JOBS:-$(nproc)}
logs=${OUT:-$build}
mkdir -p "$build" "$logs"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
stamp "GPU: ${gpu:-none found}  date: $(date -u +%Y-%m-%dT%H:%MZ)"

if [ "${1:-}" != "--no-build" ]; then
    prefix=()
    [ -d .gpu-deps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr")
    gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    stamp "configure"
    cmake -S . -B "$build" "${gen[@]}" "${prefix[@]}" -DCMAKE_BUILD_TYPE=Release -DDSV2_ENABLE_CUDA=ON \
        -DDSV2_BUILD_BENCH=OFF -DDSV2_BUILD_EXAMPLES=ON > "$logs/configure.log" 2>&1 \
        || { tail -30 "$logs/configure.log"; exit 1; }
    stamp "build test_cuda_parity dsv2_cli (-j$jobs)"
    cmake --build "$build" -j"$jobs" --target test_cuda_parity dsv2_cli > "$logs/build.log" 2>&1 \
        || { grep -E -m 40 "error" "$logs/build.log"; tail -20 "$logs/build.log"; exit 1; }
fi
bin="$build/tests/gpu/test_cuda_parity"
[ -x "$bin" ] || { echo "no $bin"; exit 1; }
[ -d .gpu-deps/usr/lib/x86_64-linux-gnu ] && export LD_LIBRARY_PATH="$PWD/.gpu-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

stamp "parity tests"
timeout 300 "$bin" > "$logs/parity.log" 2>&1
parity_rc=$?
stamp "benchmarks"
timeout 180 "$bin" --bench > "$logs/bench.log" 2>&1
bench_rc=$?

# End to end: `dsv2 logits|generate --backend cuda` on the embedded model
# against --backend cpu (logits by normalised squared error, greedy text equal).
e2e_rc=0
cli="$build/examples/dsv2"
if [ $parity_rc -ne 77 ] && [ -x "$cli" ] && [ -f models/tiny-kjv/config.json ]; then
    stamp "dsv2 --backend cuda, end to end"
    tmp="$build/e2e"
    mkdir -p "$tmp"
    ids=256,73,110,32,116,104,101,32,98,101,103,105,110,110,105,110,103
    : > "$logs/e2e.log"
    for spec in f32:1e-10 bf16:1e-3 f16:1e-5; do
        dt=${spec%%:*} tol=${spec##*:}
        for be in cpu cuda; do
            timeout 60 "$cli" logits --model models/tiny-kjv --dtype "$dt" --backend "$be" --tokens "$ids" \
                --out "$tmp/$be-$dt.npy" >> "$logs/e2e.log" 2>&1 || e2e_rc=1
        done
        python3 - "$tmp/cuda-$dt.npy" "$tmp/cpu-$dt.npy" "$dt" "$tol" >> "$logs/e2e.log" 2>&1 <<'PY' || e2e_rc=1
import sys, numpy as np
g, c = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2]).astype(np.float64)
e = ((g - c) ** 2).sum() / (c ** 2).sum()
ok = np.isfinite(g).all() and e <= float(sys.argv[4])
print(f"E2E {'PASS' if ok else 'FAIL'} logits {sys.argv[3]} cuda vs cpu: nmse {e:.2e} (tol {sys.argv[4]})")
sys.exit(0 if ok else 1)
PY
    done
    for be in cpu cuda; do
        timeout 60 "$cli" generate --model models/tiny-kjv --backend "$be" --prompt "In the beginning" \
            --max-new-tokens 24 > "$tmp/gen-$be.txt" 2>> "$logs/e2e.log" || e2e_rc=1
    done
    if cmp -s "$tmp/gen-cpu.txt" "$tmp/gen-cuda.txt"; then
        echo "E2E PASS generate f32 greedy: cuda text == cpu text: $(cat "$tmp/gen-cuda.txt")" >> "$logs/e2e.log"
    else
        e2e_rc=1
        echo "E2E FAIL generate: cpu '$(cat "$tmp/gen-cpu.txt")' vs cuda '$(cat "$tmp/gen-cuda.txt")'" >> "$logs/e2e.log"
    fi
fi

{
    echo "== dsv2 GPU check: ${gpu:-no GPU}, $(date -u +%Y-%m-%d) =="
    echo "parity: exit $parity_rc ($(grep -c '^PASS' "$logs/parity.log") passed, $(grep -c '^FAIL' "$logs/parity.log") failed)"
    grep -E '^FAIL|^SKIPPED|exception' "$logs/parity.log" | head -40
    echo "benchmarks: exit $bench_rc"
    grep -E '^BENCH' "$logs/bench.log"
    echo "end to end: exit $e2e_rc"
    grep -E '^E2E' "$logs/e2e.log" 2>/dev/null
    echo "total $(( $(date +%s) - start )) s"
} | tee "$logs/summary.txt"
[ $parity_rc -eq 0 ] && [ $bench_rc -eq 0 ] && [ $e2e_rc -eq 0 ]
