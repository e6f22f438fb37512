#!/usr/bin/env bash
# The resolution sweep against the real daemon on the bundled default model:
# bench/resolution_sweep.py sends the first N Fashion-MNIST test images
# (N = the accuracy fixture's count) as PNG through POST /v1/classify at
# every resolution of tests/fixtures/accuracy/meta.json (the training one,
# 16 to 84 px and 28x40: the sizes the default model is promised to be
# good at). At each, the count of correct answers must be the PyTorch count
# of the fixture (same images, same checkpoint, PIL's resize), and no
# request may fail. Then bench/sweep_all.sh on that model and a study
# model: one daemon serving both (a repository of symlinks), each swept
# through its own route (/v1/models/<m>/classify): the default model's
# count again, the other's run under its own name, no failed request.
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

start_daemon --access-log off
T=$(curl -sf "$URL/v1/models" | jq -r '.models[0].training_resolution')
[ "$T" = "$(jq -r '.resolution[0]' "$META")" ] || fail "model trains at $T, fixture at $(jq -c .resolution "$META")"
SIZES=$(jq -r '[.resolutions[] | "\(.resolution[0])x\(.resolution[1])"] | join(",")' "$META")
NSIZES=$(jq '.resolutions | length' "$META")
[ "$NSIZES" -ge 2 ] || fail "the fixture holds $NSIZES resolution(s) (tools/make_accuracy_fixture.py)"

"$PY" "$ROOT/bench/resolution_sweep.py" --url "$URL" --limit "$COUNT" --concurrency 4 \
  --resolutions "$SIZES" --out-json "$WORK/sweep.json" >"$WORK/sweep.out" 2>&1 ||
  { cat "$WORK/sweep.out" >&2; fail "resolution_sweep.py failed"; }
cat "$WORK/sweep.out"

# one progress line per size: "[1/7] 28x28 (50 tokens): top-1 91.33% (274/300), ..."
for i in $(seq 0 $((NSIZES - 1))); do
  size=$(jq -r ".resolutions[$i] | \"\(.resolution[0])x\(.resolution[1])\"" "$META")
  want=$(jq -r ".resolutions[$i].pytorch_correct" "$META")
  line=$(grep -F "] $size (" "$WORK/sweep.out") || fail "no line for $size"
  got_correct=$(sed -n 's/.*top-1 [0-9.]*% (\([0-9]*\)\/\([0-9]*\)).*/\1/p' <<<"$line")
  got_count=$(sed -n 's/.*top-1 [0-9.]*% ([0-9]*\/\([0-9]*\)).*/\1/p' <<<"$line")
  [ "$got_count" = "$COUNT" ] || fail "$size: swept $got_count images, the fixture has $COUNT"
  [ "$got_correct" = "$want" ] || fail "correct at $size through HTTP $got_correct, PyTorch $want"
  echo "ok $size: $got_correct/$COUNT correct through HTTP = PyTorch"
done
[ "$(jq '[.results[].errors] | add' "$WORK/sweep.json")" = 0 ] || fail "requests failed"
[ "$(jq '.results | length' "$WORK/sweep.json")" = "$NSIZES" ] || fail "not $NSIZES resolutions in the JSON"
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
