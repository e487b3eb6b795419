#!/usr/bin/env bash
# Copies the build dependencies that the GPU machine lacks (its image has
# nvcc, CMake and ninja but not Debian's Eigen, fmt, nlohmann-json, Catch2 and
# CLI11) into .gpu-deps/, a relocatable prefix that scripts/gpu-check.sh
# picks up. Run it here, then carry .gpu-deps to the GPU machine. ~13 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-deps
rm -rf "$dest"
mkdir -p "$dest"
copy() {
    for p in "$@"; do
        [ -e "$p" ] || continue
        mkdir -p "$dest$(dirname "$p")"
        cp -a "$p" "$dest$(dirname "$p")/"
    done
}
copy /usr/include/eigen3 /usr/share/eigen3/cmake
copy /usr/include/fmt /usr/lib/x86_64-linux-gnu/cmake/fmt /usr/lib/x86_64-linux-gnu/libfmt.so*
copy /usr/include/nlohmann /usr/share/cmake/nlohmann_json
copy /usr/include/catch2 /usr/lib/cmake/Catch2 /usr/lib/libCatch2WithMain.a
copy /usr/include/CLI /usr/share/cmake/CLI11
grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
du -sh "$dest"
