#!/usr/bin/env bash
# The resolution sweep against the real daemon on the bundled default model:
# bench/resolution_sweep.py sends the first N Fashion-MNIST test images
# (N = the accuracy fixture's count) as PNG through POST /v1/classify at
# the training resolution and at twice it. The top-1 it prints at the
# training resolution must be the PyTorch figure of
# tests/fixtures/accuracy/meta.json (same images, same checkpoint: the
# same count of correct answers), and no request may fail. Then
# bench/sweep_all.sh on that model and a study model: one daemon serving
# both (a repository of symlinks), each swept through its own route
# (/v1/models/<m>/classify): the default model's count again, the other's
# run under its own name, no failed request.
#
#   tests/integration/sweep.sh build/comrope-serve MODEL_DIR
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
MODEL=${2:-$ROOT/models/fashion-comrope-ld}
META=$ROOT/tests/fixtures/accuracy/meta.json
[ -f "$MODEL/model.safetensors" ] || fail "no default model in $MODEL"
[ -f "$META" ] || fail "no $META (tools/make_accuracy_fixture.py)"

COUNT=$(jq -r .count "$META")
WANT_CORRECT=$(jq -r .pytorch_correct "$META")
WANT_TOP1=$(jq -r .pytorch_top1 "$META")

start_daemon --access-log off
T=$(curl -sf "$URL/v1/models" | jq -r '.models[0].training_resolution')
[ "$T" = "$(jq -r '.resolution[0]' "$META")" ] || fail "model trains at $T, fixture at $(jq -c .resolution "$META")"
T2=$((2 * T))

"$PY" "$ROOT/bench/resolution_sweep.py" --url "$URL" --limit "$COUNT" --concurrency 4 \
  --resolutions "${T}x${T},${T2}x${T2}" --out-json "$WORK/sweep.json" >"$WORK/sweep.out" 2>&1 ||
  { cat "$WORK/sweep.out" >&2; fail "resolution_sweep.py failed"; }
cat "$WORK/sweep.out"

# the progress line it printed: "[1/2] 28x28 (50 tokens): top-1 91.33% (274/300), ..."
line=$(grep -F "] ${T}x${T} (" "$WORK/sweep.out") || fail "no line for ${T}x${T}"
got_top1=$(sed -n 's/.*top-1 \([0-9.]*\)% .*/\1/p' <<<"$line")
got_correct=$(sed -n 's/.*top-1 [0-9.]*% (\([0-9]*\)\/\([0-9]*\)).*/\1/p' <<<"$line")
got_count=$(sed -n 's/.*top-1 [0-9.]*% ([0-9]*\/\([0-9]*\)).*/\1/p' <<<"$line")
[ "$got_count" = "$COUNT" ] || fail "swept $got_count images, the fixture has $COUNT"
awk -v a="$got_top1" -v b="$WANT_TOP1" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.1) }' ||
  fail "top-1 at ${T}x${T} through HTTP $got_top1%, PyTorch $WANT_TOP1%"
[ "$got_correct" = "$WANT_CORRECT" ] ||
  fail "correct at ${T}x${T} through HTTP $got_correct, PyTorch $WANT_CORRECT"
echo "ok ${T}x${T}: top-1 $got_top1% ($got_correct/$COUNT) through HTTP = PyTorch $WANT_TOP1% ($WANT_CORRECT)"

grep -qF "] ${T2}x${T2} (" "$WORK/sweep.out" || fail "no line for ${T2}x${T2}"
[ "$(jq '[.results[].errors] | add' "$WORK/sweep.json")" = 0 ] || fail "requests failed"
[ "$(jq '.results | length' "$WORK/sweep.json")" = 2 ] || fail "not two resolutions in the JSON"
echo "ok ${T2}x${T2}: $(grep -F "] ${T2}x${T2} (" "$WORK/sweep.out" | sed 's/^\[[0-9/]*\] //')"
stop_daemon

AP=$ROOT/models/study/fashion-comrope-ap
OUT=$WORK/all LIMIT=$COUNT RESOLUTIONS="${T}x${T}" SERVE=$SERVE PYTHON=$PY \
  "$ROOT/bench/sweep_all.sh" "$MODEL" "$AP" >"$WORK/all.out" 2>&1 || { cat "$WORK/all.out" >&2; fail "sweep_all.sh failed"; }
ld=$(basename "$MODEL")
grep -qF "== serving $ld fashion-comrope-ap (one daemon" "$WORK/all.out" || { cat "$WORK/all.out" >&2; fail "sweep_all.sh did not serve both models from one daemon"; }
[ "$(jq -r .model.name "$WORK/all/runs/$ld.json")" = "$ld" ] || fail "sweep_all's $ld run names $(jq -r .model.name "$WORK/all/runs/$ld.json")"
[ "$(jq '.results[0].correct' "$WORK/all/runs/$ld.json")" = "$WANT_CORRECT" ] ||
  fail "sweep_all: $ld correct $(jq '.results[0].correct' "$WORK/all/runs/$ld.json"), PyTorch $WANT_CORRECT"
[ "$(jq -r .model.name "$WORK/all/runs/fashion-comrope-ap.json")" = fashion-comrope-ap ] || fail "sweep_all's ap run is not ap's"
[ "$(jq '.results[0].images' "$WORK/all/runs/fashion-comrope-ap.json")" = "$COUNT" ] || fail "sweep_all: ap's run incomplete"
[ "$(jq -s '[.[].results[].errors] | add' "$WORK/all/runs/"*.json)" = 0 ] || fail "sweep_all: requests failed"
[ -s "$WORK/all/resolution_sweep.csv" ] || fail "sweep_all: no merged CSV"
echo "ok sweep_all.sh: $ld and fashion-comrope-ap from one daemon; $ld $WANT_CORRECT/$COUNT again"
echo "ok sweep"
