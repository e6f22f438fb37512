#!/usr/bin/env bash
# The resolution study: every checkpoint served by one real daemon, the
# Fashion-MNIST test set sent through HTTP at each resolution, one model
# after the other.
#
#   bench/sweep_all.sh [MODEL_DIR...]        (default: models/fashion-*)
#
# The directories (config.json + model.safetensors; one without its
# model.safetensors is skipped with a message) become a temporary model
# repository (a symlink per directory, named by its basename), served by
# one build/comrope-serve --model-repository on a free port (--port 0, the
# port read from its log). Once it is ready, bench/resolution_sweep.py
# --model <name> runs on all 10000 test images for each model in turn
# (bench/results/runs/<name>.json; only that model has work meanwhile:
# the others' workers sleep), then the daemon stops with SIGTERM. Then
# it merges every bench/results/runs/*.json (so a later run of one new
# variant joins the earlier ones; delete a file to drop a variant) into
#   bench/results/resolution_sweep.json, .csv
#   bench/results/resolution_sweep.png   (top-1 vs resolution per PE type;
#                                         latency vs tokens)
# Environment: LIMIT (images, default all), CONCURRENCY (default 4),
# RESOLUTIONS (default: the sweep's 0.5x..3x and one non-square),
# OUT (default bench/results), SERVE (default build/comrope-serve, built if
# missing), PYTHON (the sweep, standard library only: python3),
# PLOT_PYTHON (the merge and plot, needs matplotlib: /usr/bin/python3).
# Extra daemon flags: SERVE_FLAGS (e.g. "--workers 1 --gemm-threads 2").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-bench/results}
SERVE=${SERVE:-build/comrope-serve}
PYTHON=${PYTHON:-python3}
PLOT_PYTHON=${PLOT_PYTHON:-/usr/bin/python3}
CONCURRENCY=${CONCURRENCY:-4}
LIMIT=${LIMIT:-0}
RESOLUTIONS=${RESOLUTIONS:-}
read -r -a serve_flags <<<"${SERVE_FLAGS:-}"

if [ $# -gt 0 ]; then
  dirs=("$@")
else
  shopt -s nullglob
  dirs=(models/fashion-*/)
  shopt -u nullglob
fi
[ ${#dirs[@]} -gt 0 ] || { echo "sweep_all: no model directories (models/fashion-*)" >&2; exit 2; }

if [ ! -x "$SERVE" ]; then
  echo "== building $SERVE"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j "$(nproc)" --target comrope-serve
fi
mkdir -p "$OUT/runs"

WORK=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ]; then kill -9 "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

start() { # start REPO: sets PID, URL
  local log=$WORK/daemon.log port="" i
  : >"$log"
  "$SERVE" --model-repository "$1" --host 127.0.0.1 --port 0 --access-log off "${serve_flags[@]}" 2>"$log" &
  PID=$!
  for ((i = 0; i < 300; i++)); do
    port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$log")
    [ -n "$port" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$log" >&2; echo "sweep_all: daemon exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log" >&2; echo "sweep_all: no port in 30 s" >&2; exit 1; }
  URL=http://127.0.0.1:$port
  for ((i = 0; i < 300; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/v2/health/ready")" = 200 ] && return 0
    sleep 0.1
  done
  echo "sweep_all: daemon not ready in 30 s" >&2
  exit 1
}

stop() {
  local rc=0
  kill -TERM "$PID"
  wait "$PID" || rc=$?
  PID=
  [ "$rc" = 0 ] || { echo "sweep_all: daemon exit status $rc after SIGTERM" >&2; exit 1; }
}

names=()
mkdir -p "$WORK/repo"
for dir in "${dirs[@]}"; do
  dir=${dir%/}
  name=$(basename "$dir")
  if [ ! -f "$dir/model.safetensors" ] || [ ! -f "$dir/config.json" ]; then
    echo "== $name: no config.json + model.safetensors yet, skipped"
    continue
  fi
  [ ! -e "$WORK/repo/$name" ] || { echo "sweep_all: two directories named $name" >&2; exit 2; }
  ln -s "$(cd "$dir" && pwd)" "$WORK/repo/$name"
  names+=("$name")
done
[ ${#names[@]} -gt 0 ] || { echo "sweep_all: no checkpoint was swept" >&2; exit 1; }
echo "== serving ${names[*]} (one daemon, a repository of ${#names[@]} models)"
start "$WORK/repo"
for name in "${names[@]}"; do
  echo "== $name: sweeping"
  args=(--url "$URL" --model "$name" --concurrency "$CONCURRENCY" --out-json "$OUT/runs/$name.json")
  [ "$LIMIT" -gt 0 ] && args+=(--limit "$LIMIT")
  [ -n "$RESOLUTIONS" ] && args+=(--resolutions "$RESOLUTIONS")
  "$PYTHON" bench/resolution_sweep.py "${args[@]}"
done
stop

shopt -s nullglob
runs=("$OUT"/runs/*.json)
shopt -u nullglob
echo "== merging ${#runs[@]} runs into $OUT/resolution_sweep.{json,csv,png}"
plot=(--plot "$OUT/resolution_sweep.png")
if ! "$PLOT_PYTHON" -c 'import matplotlib' 2>/dev/null; then
  echo "sweep_all: $PLOT_PYTHON has no matplotlib (Debian python3-matplotlib): no plot" >&2
  plot=()
fi
"$PLOT_PYTHON" bench/resolution_sweep.py --merge "${runs[@]}" \
  --out-json "$OUT/resolution_sweep.json" --out-csv "$OUT/resolution_sweep.csv" "${plot[@]}"
