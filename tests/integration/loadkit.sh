#!/usr/bin/env bash
# The load kit end to end, short (about 40 s): bench/load/loadtest.py starts
# the daemon on the bundled model, measures capacity at a resolution mix,
# offers 50/100/150 % of it open loop, fits the capacity model on three
# resolutions (each measurement paired with a reference) and checks it on a
# held-out mix, and writes the report; then
# Locust (bench/load/locustfile.py) for 5 s over every protocol, and
# --predict from the fitted model. Must hold: loadtest exits 0 (no failure
# other than 503 at or past capacity, every answer checked), every step
# answered some requests and every resolution was answered, the report
# files are not empty, Locust saw no failure, --predict names replicas.
#
#   tests/integration/loadkit.sh build/comrope-serve MODEL_DIR [build/comrope-loadgen]
set -euo pipefail
SERVE=${1:-}
COMROPE_LOADGEN=${3:-${COMROPE_LOADGEN:-}}
export COMROPE_LOADGEN
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
MODEL=${2:-$ROOT/models/fashion-comrope-ld}
OUT=$WORK/load

"$PY" "$ROOT/bench/load/loadtest.py" --serve "$SERVE" --model "$MODEL" --out "$OUT" \
  --mix 1:0.6,2:0.3,1x3:0.1 --capacity-seconds 1 --warmup-seconds 0.3 --steps 50,100,150 --step-seconds 2 \
  --fit --fit-resolutions 1,2,3 --overhead-images 4 --validate '1.5:0.5,2.5:0.5' --engine c \
  >"$WORK/loadtest.out" 2>&1 ||
  { cat "$WORK/loadtest.out" >&2; fail "loadtest.py failed"; }
cat "$WORK/loadtest.out"
for f in report.json steps.csv report.png capacity_model.json; do
  [ -s "$OUT/$f" ] || fail "$f missing or empty"
done
[ "$(grep -c '^\[[0-9]/3\] offered' "$WORK/loadtest.out")" = 3 ] || fail "not one progress line per step"
# every step answered some requests, and every resolution was answered in
# some step (a slow build offers a 10 % resolution only a few times a step)
jq -e '[.steps[] | .ok > 0] | all' "$OUT/report.json" >/dev/null || fail "a step answered no request"
jq -e '[.resolutions[] as $r | [.steps[] | .per_resolution[$r].ok] | add > 0] | all' "$OUT/report.json" \
  >/dev/null || fail "a resolution of the mix was never answered"
jq -e '[.steps[] | .bad] | add == 0' "$OUT/report.json" >/dev/null || fail "wrong answers"
jq -e '.capacity_rps > 0 and (.capacity_model.validation | length) == 1' "$OUT/report.json" >/dev/null ||
  fail "no capacity or no held-out check"
# steps.csv: a header, then one row per step for the whole mix and each of its 3 resolutions
[ "$(wc -l <"$OUT/steps.csv")" = $((1 + 3 * 4)) ] || fail "steps.csv has $(wc -l <"$OUT/steps.csv") lines"
echo "ok loadtest: capacity $(jq .capacity_rps "$OUT/report.json") req/s, knee $(jq .knee_rps "$OUT/report.json")"

out=$("$PY" "$ROOT/bench/load/loadtest.py" --predict 1:0.5,2:0.5 --slo-p99 10000 --rate 1000 \
  --capacity-model "$OUT/capacity_model.json") || fail "--predict failed: $out"
echo "$out" | head -1
replicas=$(echo "$out" | tail -1 | jq .replicas)
[ "$replicas" -ge 1 ] || fail "--predict: no replica count"

start_daemon --access-log off
(cd "$WORK" && timeout 120 locust -f "$ROOT/bench/load/locustfile.py" --headless -u 8 -r 8 -t 5s \
  --host "$URL" --api all --mix 28:0.4,56:0.3,28x84:0.3 --csv "$WORK/locust" --html "$WORK/locust.html" \
  --only-summary >"$WORK/locust.out" 2>&1) || { cat "$WORK/locust.out" >&2; fail "locust failed"; }
for f in locust_stats.csv locust.html; do [ -s "$WORK/$f" ] || fail "locust: $f missing or empty"; done
# locust_stats.csv: Type,Name,Request Count,Failure Count,...; the Aggregated row
agg=$(awk -F, '$2 == "Aggregated" { print $3, $4 }' "$WORK/locust_stats.csv")
read -r n nfail <<<"$agg"
[ "${n:-0}" -gt 0 ] || fail "locust sent nothing"
[ "$nfail" = 0 ] || { cat "$WORK/locust.out" >&2; fail "locust: $nfail failures"; }
# names are "API HxW": every protocol and every resolution was sent (not
# necessarily every pair: a sanitizer build answers few requests in 5 s)
names=$(awk -F, 'NR > 1 && $2 != "Aggregated" { print $2 }' "$WORK/locust_stats.csv" | tr -d '"')
[ "$(awk '{ print $1 }' <<<"$names" | sort -u | wc -l)" = 4 ] || fail "locust: not all 4 protocols: $names"
[ "$(awk '{ print $2 }' <<<"$names" | sort -u | wc -l)" = 3 ] || fail "locust: not all 3 resolutions: $names"
echo "ok locust: $n requests over 4 protocols and 3 resolutions, no failure"
stop_daemon
echo "ok loadkit"
