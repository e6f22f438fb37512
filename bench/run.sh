#!/usr/bin/env bash
# The benchmark of issue 6 in one command (fresh Debian 12 or this machine):
# installs what it needs, builds comrope-bench-engine, makes the random
# checkpoints and the ONNX exports it needs (cached in bench/out/cache), runs
# the engine, ONNX Runtime, PyTorch eager, the official model.py and the
# daemon through HTTP side by side, prints the tables and every target as
# PASS / FAIL, and writes
# bench/out/results.json, throughput.png, latency_vs_tokens.png, targets.png.
#
#   bench/run.sh [--quick] [--threads T] [--reps R] [--warmup W]
#                [--parts main,sweep,pe,haswell,official,bf16,daemon] [--skip-install] ...
#
# Every option but --skip-install goes to bench/run.py (--help lists them).
# --quick: vit-ti16, 1 timed run: a smoke test of the whole pipeline.
# BUILD_DIR (default build-bench) is the CMake build folder it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

install=1
args=()
for a in "$@"; do
  case "$a" in
    --skip-install) install=0 ;;
    -h|--help) exec /usr/bin/python3 bench/run.py --help ;;
    *) args+=("$a") ;;
  esac
done

if [ "$install" = 1 ]; then
  echo "== bench: packages (scripts/install-deps.sh build tools bench)"
  scripts/install-deps.sh build tools bench

  echo "== bench: onnxruntime-node (npm ci in bench/node)"
  # npm ci wipes and reinstalls node_modules; skip it when the installed tree
  # already matches package-lock.json
  if [ -f bench/node/node_modules/.package-lock.json ] &&
     [ bench/node/node_modules/.package-lock.json -nt bench/node/package-lock.json ] &&
     node -e "require('$root/bench/node/node_modules/onnxruntime-node')" 2>/dev/null; then
    echo "bench: bench/node/node_modules is up to date"
  else
    # the CPU binaries are in the npm package; ONNXRUNTIME_NODE_INSTALL=skip
    # stops its install script from fetching the CUDA ones from api.nuget.org
    (cd bench/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund)
  fi
fi

build=${BUILD_DIR:-build-bench}
echo "== bench: building comrope-bench-engine, comrope-fma-peak, comrope-serve and comrope-classify in $build (CMake, the project's default flags)"
mkdir -p "$build"
# tests off only in a folder of its own: an existing build's settings (BUILD_DIR=build, with the tests
# ctest runs) are kept, not reconfigured under it
configure=(-DCOMROPE_BUILD_TESTS=OFF)
[ -f "$build/CMakeCache.txt" ] && configure=()
if ! { cmake -S . -B "$build" ${configure[@]+"${configure[@]}"} &&
       cmake --build "$build" -j "$(nproc)" --target comrope-bench-engine comrope-fma-peak comrope-serve comrope-classify; } >"$build/bench-build.log" 2>&1; then
  tail -n 40 "$build/bench-build.log"
  echo "bench: the build failed (whole log: $build/bench-build.log)" >&2
  exit 1
fi
echo "bench: $build/comrope-bench-engine and $build/comrope-serve are up to date"

exec /usr/bin/python3 bench/run.py --build-dir "$build" "${args[@]}"
