#!/usr/bin/env bash
# A real Prometheus scraping comrope-serve: a temporary prometheus.yml
# (scrape_interval 1s) targets the daemon; Prometheus runs with its TSDB in
# a temporary directory on a free port; its HTTP API is polled until the
# target's `up` is 1, then it must hold comrope_ metrics (the model info
# with its labels, and the requests this test sent), also from /metrics
# on its own port (--metrics-port, a port free a moment before).
#
#   tests/integration/prometheus.sh build/comrope-serve
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
PROMETHEUS=${PROMETHEUS:-prometheus}
command -v "$PROMETHEUS" >/dev/null || fail "prometheus not installed (scripts/install-deps.sh test)"

MPORT=$(free_port)
start_daemon --metrics-port "$MPORT" --access-log off
log_has "metrics on 127.0.0.1:$MPORT" || fail "no 'metrics on' line"
[ "$(http_code "$URL/metrics")" = 404 ] || fail "/metrics still on the main port with --metrics-port"
# ... and the 404 says where it is (the console's live panel shows it)
curl -s "$URL/metrics" | jq -e --arg p "$MPORT" '.error | contains("metrics-port " + $p)' >/dev/null ||
  fail "the 404 for /metrics on the main port does not name metrics-port: $(curl -s "$URL/metrics")"
for _ in 1 2 3; do
  [ "$(http_code -H 'Content-Type: image/png' --data-binary @"$IMG" "$URL/v1/classify")" = 200 ] ||
    fail "classify"
done

# Every error answered is in one of comrope_request_failures_total's
# reasons, which sum to comrope_requests_total's codes >= 400 (the 404s for
# /metrics above among them): a 414 (a path too long) was in none, its
# reason "other" not being listed, and a 501 (a Transfer-Encoding the daemon
# does not take: the client's doing) counted as "internal".
long=$(printf 'a%.0s' $(seq 600))
[ "$(http_code "$URL/v2/models/$long")" = 414 ] || fail "a 600-byte path not answered 414"
[ "$(http_code -H 'Transfer-Encoding: gzip' --data-binary x "$URL/v1/classify")" = 501 ] ||
  fail "Transfer-Encoding gzip not answered 501"
curl -sf "http://127.0.0.1:$MPORT/metrics" >"$WORK/failures.metrics" || fail "scrape of the metrics port"
out=$(promtool check metrics <"$WORK/failures.metrics" 2>&1) || fail "promtool: $out"
[ -z "$out" ] || fail "promtool printed: $out"
read -r failures errors too_long not_implemented < <(awk '
  $1 ~ /^comrope_request_failures_total[{]/ { f += $2 }
  $1 == "comrope_request_failures_total{reason=\"uri_too_long\"}" { u = $2 }
  $1 == "comrope_request_failures_total{reason=\"not_implemented\"}" { n = $2 }
  $1 ~ /^comrope_requests_total[{]/ && match($1, /code="[0-9]+"/) {
    if (substr($1, RSTART + 6, RLENGTH - 7) + 0 >= 400) e += $2
  }
  END { printf "%d %d %d %d\n", f, e, u, n }' "$WORK/failures.metrics")
[ "$errors" -ge 4 ] || fail "comrope_requests_total counts $errors errors, want at least 4"
[ "$failures" = "$errors" ] ||
  fail "comrope_request_failures_total sums to $failures, comrope_requests_total's codes >= 400 to $errors"
[ "$too_long" = 1 ] || fail "uri_too_long failures: $too_long, want 1"
[ "$not_implemented" = 1 ] ||
  fail "not_implemented failures: $not_implemented, want 1"
echo "ok every error answered is in a reason of comrope_request_failures_total ($failures)"

cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: comrope
    static_configs:
      - targets: ['127.0.0.1:$MPORT']
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "promtool check config"

# Prometheus cannot bind port 0 and say which port it got: take a free one,
# and try again with another if it was taken meanwhile.
PROM_PID=
for _ in 1 2 3; do
  PROM_PORT=$(free_port)
  "$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
  PROM_PID=$!
  OTHER_PIDS+=("$PROM_PID")
  prom_ready() { [ "$(http_code "http://127.0.0.1:$PROM_PORT/-/ready")" = 200 ] || ! kill -0 "$PROM_PID" 2>/dev/null; }
  poll 60 prom_ready || fail "prometheus not ready in 60 s: $(tail -5 "$WORK/prometheus.log")"
  kill -0 "$PROM_PID" 2>/dev/null && break
  PROM_PID=
done
[ -n "$PROM_PID" ] || fail "prometheus did not start: $(tail -5 "$WORK/prometheus.log")"
PROM=http://127.0.0.1:$PROM_PORT

# query EXPR: the first sample's value, or nothing.
query() {
  curl -s --max-time 10 -G --data-urlencode "query=$1" "$PROM/api/v1/query" |
    jq -r '.data.result[0].value[1] // empty'
}
target_up() { [ "$(query 'up{job="comrope"}')" = 1 ]; }
poll 60 target_up || fail "target never up: $(curl -s "$PROM/api/v1/targets" | jq -c '.data.activeTargets')"
echo "ok prometheus (port $PROM_PORT) scrapes the daemon's metrics port $MPORT: up == 1"

info=$(curl -s -G --data-urlencode 'query=comrope_model_info' "$PROM/api/v1/query" | jq -c '.data.result[0].metric')
[ "$(jq -r .model <<<"$info")" = "$(basename "$MODEL")" ] || fail "comrope_model_info labels: $info"
[ "$(jq -r .pe_type <<<"$info")" != null ] || fail "no pe_type label: $info"
echo "ok comrope_model_info in prometheus: $info"
n=$(query 'sum(comrope_requests_total{endpoint="v1_classify",code="200"})')
[ "$n" = 3 ] || fail "comrope_requests_total for 200 classify: '$n', not 3"
n=$(query 'comrope_batch_images_count')
if ! [ "${n:-0}" -ge 1 ]; then fail "comrope_batch_images_count: '$n'"; fi
echo "ok comrope_requests_total and comrope_batch_images_count queried from prometheus"

kill -TERM "$PROM_PID"
stop_daemon
echo "prometheus: all passed"
