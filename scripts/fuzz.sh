#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in ./build-fuzz and runs
# each one for SECONDS (default 60) on its seed corpus. Any crash, leak,
# timeout (an input taking over 10 s), out-of-memory or sanitizer report fails
# the script and leaves the reproducer in build-fuzz/artifacts/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: safetensors index config npy tokens
#   FUZZ_JOBS=2 scripts/fuzz.sh 600           run two targets at a time
#
# Inputs that reach new code are kept in build-fuzz/corpus/<target> (the
# committed seeds in tests/fuzz/corpus/ are read, never written). Reproduce a
# crash with:  build-fuzz/tests/fuzz/fuzz_<target> build-fuzz/artifacts/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors index config npy tokens)
jobs=${FUZZ_JOBS:-1}

DSV2_WITH_CLANG=1 bash scripts/install-deps.sh
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSV2_BUILD_FUZZERS=ON \
  -DDSV2_BUILD_TESTS=OFF -DDSV2_BUILD_EXAMPLES=OFF -DDSV2_BUILD_BENCH=OFF -DDSV2_ENABLE_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

rm -rf build-fuzz/artifacts build-fuzz/logs  # reproducers of an earlier run go with it
mkdir -p build-fuzz/artifacts build-fuzz/logs
run_one() {
  local t=$1 work=build-fuzz/corpus/$1 dict=()
  mkdir -p "$work"
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  # detect_leaks is on by default under libFuzzer + ASan; said here so nobody turns it off by accident.
  local scratch rc=0
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/dsv2-fuzz-$t.XXXXXX")
  [ -d /dev/shm ] && { rmdir "$scratch"; scratch=$(mktemp -d "/dev/shm/dsv2-fuzz-$t.XXXXXX"); }
  DSV2_FUZZ_SCRATCH=$scratch ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build-fuzz/tests/fuzz/fuzz_$t" "$work" "tests/fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/artifacts/$t-" >"build-fuzz/logs/$t.log" 2>&1 || rc=$?
  rm -rf "$scratch"
  return $rc
}

status=0
pids=() names=()
for t in "${targets[@]}"; do
  run_one "$t" & pids+=($!) names+=("$t")
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || { echo "fuzz_${names[0]}: FAILED (see build-fuzz/logs/${names[0]}.log)"; status=1; }
    pids=("${pids[@]:1}") names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "fuzz_${names[$i]}: FAILED (see build-fuzz/logs/${names[$i]}.log)"; status=1; }
done

# One line per target: executions, coverage, corpus, crashes.
printf '%-12s %12s %10s %8s %8s %10s %s\n' target seconds execs exec/s cov features corpus
for t in "${targets[@]}"; do
  log=build-fuzz/logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  printf '%-12s %12s %10s %8s %8s %10s %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
done
crashes=$(find build-fuzz/artifacts -type f | wc -l)
echo "artifacts (crash/leak/timeout/oom reproducers): $crashes"
[ "$crashes" -eq 0 ] || status=1
exit $status
