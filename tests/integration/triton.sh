#!/usr/bin/env bash
# triton.sh: what Triton's and KServe's clients and tooling send and read
# (tests/integration/triton.py replays tritonclient.http's requests):
# infer without Content-Type (JSON and binary), raw images without a type,
# model config and statistics, versions, 405 with Allow, CORS on and off,
# the latency histogram split by endpoint, and compressed bodies both ways.
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
NAME=$(basename "$MODEL")
IMAGE=$ROOT/tests/fixtures/images/rgb8.png

start_daemon --max-batch-size 4 --max-queue-delay-us 1234 --access-log text
"$PY" "$ROOT/tests/integration/triton.py" compat "$PORT" "$NAME" "$IMAGE" || fail "triton compat"
# probes and scrapes have their own series, not the inference latency's
for _ in 1 2 3; do http_code "$URL/v2/health/ready" >/dev/null; done
infer=$(metric "comrope_request_duration_seconds_count{endpoint=\"v2_infer\",model=\"$NAME\",version=\"1\"}") ||
  fail "no v2_infer latency series with model and version"
# the JSON and binary infers, GET on infer (405); the unknown version (404)
# was served by no version: in the series without model and version
[ "$infer" = 3 ] || fail "v2_infer latency count $infer, want 3"
unrouted=$(awk '$1 == "comrope_request_duration_seconds_count{endpoint=\"v2_infer\"}" { print $2 }' <<<"$(curl -sf "$URL/metrics")")
[ "$unrouted" = 1 ] || fail "v2_infer latency count of no model version '$unrouted', want 1 (the unknown version)"
health=$(metric 'comrope_request_duration_seconds_count{endpoint="health"}') || fail "no health latency series"
[ "$health" -ge 3 ] || fail "health latency count $health"
metric "comrope_requests_total{endpoint=\"v2_infer\",code=\"200\",model=\"$NAME\",version=\"1\"}" >/dev/null ||
  fail "requests_total without model and version labels"
poll 10 log_has "POST /v2/models/$NAME/versions/1/infer 200 .*model=$NAME version=1" ||
  fail "access log does not name model and version: $(grep infer "$LOG" | head -3)"
# tritonclient's request_compression_algorithm and response_compression_algorithm
# (after the counts above: these infers are more of them)
"$PY" "$ROOT/tests/integration/triton.py" compression "$PORT" "$NAME" "$IMAGE" || fail "triton compression"
stop_daemon

start_daemon --cors-origin https://console.example
"$PY" "$ROOT/tests/integration/triton.py" cors "$PORT" "$NAME" https://console.example || fail "cors"
stop_daemon
echo "triton: ok"
