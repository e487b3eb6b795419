#!/usr/bin/env bash
# Builds the test suite (and the dsv2 command its CLI tests run) with
# AddressSanitizer + UndefinedBehaviorSanitizer + _GLIBCXX_ASSERTIONS in
# ./build-asan and runs it. Every report is fatal (-fno-sanitize-recover=all,
# LeakSanitizer on), so any finding fails the script. -O1 -g1 keeps the build
# and the run short and the stack traces readable; asserts stay on. Clang
# builds this suite in about half of GCC's time (CI's longest step), and
# -g1 (line tables) is all the stack traces need.
#
#   scripts/sanitize.sh [ctest args...]      e.g. scripts/sanitize.sh -R io
set -euo pipefail
cd "$(dirname "$0")/.."
DSV2_WITH_CLANG=1 bash scripts/install-deps.sh
jobs=$(nproc)
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DDSV2_SANITIZE=ON -DDSV2_BUILD_EXAMPLES=ON -DDSV2_BUILD_BENCH=OFF -DDSV2_ENABLE_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
# The consumer tests install and build a separate, unsanitized project: they
# test packaging, which the normal build already covers.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_init_order=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -j"$jobs" -E '^consumer_' "$@"
