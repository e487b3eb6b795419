#!/usr/bin/env bash
# Installs what is missing, builds the demo in ./build and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target demo
./build/examples/demo "$@"
