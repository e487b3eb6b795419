#!/usr/bin/env bash
# Installs what is missing, builds the `dsv2` command in ./build and runs the
# embedded model (models/tiny-kjv): its summary, then a sampled continuation.
# Extra arguments go to `dsv2 generate` (e.g. --seed 7, or --temperature 0 for greedy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target dsv2_cli
./build/examples/dsv2 info
echo
./build/examples/dsv2 generate --prompt "In the beginning" --max-new-tokens 200 \
  --temperature 0.7 --top-p 0.9 --seed 1 "$@"
