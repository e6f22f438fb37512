#!/usr/bin/env bash
# deploy/compose.yaml with podman-compose: comrope-serve and Prometheus
# (its image built from Debian's package, deploy/prometheus/Containerfile).
#  - the daemon turns healthy, Prometheus's target is up;
#  - under hey load (resolutions 28, 56 and 112, some refused requests),
#    every query of every panel of the Grafana dashboard
#    (deploy/grafana/dashboards/comrope-serve.json, $__rate_interval as 1m)
#    returns data from that Prometheus: at least one finite sample;
#  - podman-compose down stops the daemon with exit 0.
# Grafana itself is not run (not in Debian, no registry): its provisioning
# files are checked for the datasource uid the dashboard names.
#
#   tests/deploy/compose.sh
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
command -v podman-compose >/dev/null || skip "podman-compose is not installed (scripts/packages.txt, group test)"
podman_ready
build_image
echo "compose: building the Prometheus image (deploy/prometheus/Containerfile)"
podman build --pull=never --layers -t localhost/comrope-prometheus:2.42 "$ROOT/deploy/prometheus" >"$WORK/prom-build.log" 2>&1 ||
  { tail -20 "$WORK/prom-build.log" >&2; fail "podman build deploy/prometheus"; }

COMROPE_HOST_PORT=$(free_port)
PROMETHEUS_HOST_PORT=$(free_port)
export COMROPE_HOST_PORT PROMETHEUS_HOST_PORT
PROJECT=comrope-test-$$
compose() { (cd "$ROOT/deploy" && podman-compose -p "$PROJECT" -f compose.yaml "$@"); }
# podman-compose 1.0.3's down leaves the network and the volume behind
down() {
  compose down -t 45 >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
  podman volume rm -f "${PROJECT}_prometheus-data" >/dev/null 2>&1 || true
}
trap 'down; cleanup' EXIT
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "podman-compose up"; }
SERVE_CTR=${PROJECT}_comrope-serve_1
PROM_CTR=${PROJECT}_prometheus_1
URL=http://127.0.0.1:$COMROPE_HOST_PORT
PROM=http://127.0.0.1:$PROMETHEUS_HOST_PORT

healthy() { podman healthcheck run "$SERVE_CTR" >/dev/null 2>&1; }
poll 60 healthy || fail "comrope-serve not healthy in 60 s: $(podman logs "$SERVE_CTR" 2>&1 | tail -5)"
target_up() {
  curl -sf "$PROM/api/v1/targets" | jq -e '.data.activeTargets[] | select(.labels.job == "comrope-serve" and .health == "up")' >/dev/null
}
poll 60 target_up || fail "Prometheus target not up: $(curl -s "$PROM/api/v1/targets" | head -c 600; podman logs "$PROM_CTR" 2>&1 | tail -5)"
echo "ok compose up: daemon healthy, Prometheus target up"

# --- load: three resolutions, a few refused requests --------------------------
IMG=$ROOT/models/samples/ankle-boot.png
pids=()
for res in 28 56 112; do
  hey -z 20s -c 2 -m POST -T image/png -D "$IMG" "$URL/v1/classify?resolution=$res" >"$WORK/hey-$res.txt" 2>&1 &
  pids+=("$!")
done
for _ in 1 2 3 4 5; do
  [ "$(http_code -H 'Content-Type: text/plain' --data-binary x "$URL/v1/classify")" = 415 ] || fail "expected 415"
done
for p in "${pids[@]}"; do wait "$p"; done
for res in 28 56 112; do
  [ "$(sed -n 's/^ *\[200\][[:space:]]*\([0-9]*\) responses$/\1/p' "$WORK/hey-$res.txt")" -gt 0 ] ||
    fail "no 200 at resolution $res: $(tail -5 "$WORK/hey-$res.txt")"
done
# the last scrape must have seen the end of the load
query() { curl -sf --data-urlencode "query=$1" "$PROM/api/v1/query"; }
served=$(sed -n 's/^ *\[200\][[:space:]]*\([0-9]*\) responses$/\1/p' "$WORK"/hey-*.txt | awk '{ s += $1 } END { print s + 0 }')
scraped_all() {
  [ "$(query 'sum(comrope_requests_total{endpoint="v1_classify",code="200"})' | jq -r '.data.result[0].value[1] // 0')" -ge "$served" ]
}
poll 30 scraped_all || fail "Prometheus never saw the $served answers"
echo "ok load: $served classifications at 3 resolutions, scraped"

# --- every panel's query returns data -------------------------------------------
DASH=$ROOT/deploy/grafana/dashboards/comrope-serve.json
uid=$(jq -r '.uid' "$ROOT/deploy/grafana/dashboards/comrope-serve.json")
[ "$uid" = comrope-serve ] || fail "dashboard uid '$uid'"
grep -q 'uid: prometheus' "$ROOT/deploy/grafana/provisioning/datasources/prometheus.yaml" || fail "datasource uid"
[ "$(jq '[.panels[].targets[].datasource.uid] | unique' -c "$DASH")" = '["prometheus"]' ] ||
  fail "every query must use the provisioned datasource uid prometheus"
n=0
while IFS=$'\t' read -r title expr; do
  q=${expr//\$__rate_interval/1m}
  out=$(query "$q") || fail "panel '$title': query failed: $q"
  finite=$(jq '[.data.result[].value[1] | select(. != "NaN" and . != "+Inf" and . != "-Inf")] | length' <<<"$out")
  [ "$finite" -gt 0 ] || fail "panel '$title': no data for $q: $out"
  n=$((n + 1))
done < <(jq -r '.panels[] | .title as $t | .targets[] | [$t, .expr] | @tsv' "$DASH")
panels=$(jq '.panels | length' "$DASH")
echo "ok dashboard: all $n queries of $panels panels return data"
p99=$(query 'histogram_quantile(0.99, sum by (le) (rate(comrope_request_duration_seconds_bucket[1m])))' | jq -r '.data.result[0].value[1]')
echo "compose: request latency p99 under this load: $p99 s"

compose stop -t 45 >/dev/null 2>&1 || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$SERVE_CTR")
[ "$code" = 0 ] || fail "comrope-serve exited $code at podman-compose stop"
podman logs "$SERVE_CTR" 2>&1 | grep -Ec 'comrope-serve: stopped$|"msg":"stopped"' >/dev/null || fail "no clean stop"
echo "ok podman-compose stop: exit 0 after the drain"
echo "compose: all passed"
