#!/usr/bin/env bash
# First command of the README: install dependencies, build, and run the
# bundled default model on a sample image.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
sample=models/samples/ankle-boot.png
echo "== build/comrope-classify $sample"
exec build/comrope-classify "$sample"
