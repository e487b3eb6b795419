#!/usr/bin/env bash
# Installs the Debian 12 packages dsv2 builds with (as root; skipped when present).
set -euo pipefail
packages=(build-essential cmake libeigen3-dev libfmt-dev catch2 nlohmann-json3-dev libcli11-dev libbenchmark-dev)
# scripts/fuzz.sh and scripts/sanitize.sh set DSV2_WITH_CLANG=1: clang, its
# sanitizer runtimes and libFuzzer, and LLVM's OpenMP for clang.
if [ "${DSV2_WITH_CLANG:-0}" = 1 ]; then
  packages+=(clang libclang-rt-14-dev libomp-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "dsv2: missing Debian packages: ${missing[*]} (run as root, or install them with sudo apt-get install)" >&2
  exit 1
fi
echo "dsv2: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
