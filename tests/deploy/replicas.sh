#!/usr/bin/env bash
# Three replicas behind HAProxy (deploy/compose.replicas.yaml) and a rolling
# restart under load:
#  - hey posts images through HAProxy on 8 connections for the whole test;
#  - one replica at a time: `podman stop -t 45` (SIGTERM: the daemon drains
#    and exits 0), `podman start`, then wait until HAProxy reports it UP
#    again before the next one;
#  - every request must be answered 200: the failed-request count (non-200
#    answers plus hey's transport errors) is printed and must be 0;
#  - every replica answered requests (HAProxy's per-server totals) and
#    every replica was restarted (a new start time).
#
#   tests/deploy/replicas.sh
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
command -v podman-compose >/dev/null || skip "podman-compose is not installed (scripts/packages.txt, group test)"
command -v hey >/dev/null || fail "hey is not installed (scripts/packages.txt, group test)"
podman_ready
build_image
echo "replicas: building the HAProxy image (deploy/haproxy/Containerfile)"
podman build --pull=never --layers -t localhost/comrope-haproxy:2.6 "$ROOT/deploy/haproxy" >"$WORK/haproxy-build.log" 2>&1 ||
  { tail -20 "$WORK/haproxy-build.log" >&2; fail "podman build deploy/haproxy"; }

COMROPE_HOST_PORT=$(free_port)
HAPROXY_STATS_HOST_PORT=$(free_port)
export COMROPE_HOST_PORT HAPROXY_STATS_HOST_PORT
PROJECT=comrope-replicas-$$
compose() { (cd "$ROOT/deploy" && podman-compose -p "$PROJECT" -f compose.replicas.yaml "$@"); }
# podman-compose 1.0.3's down leaves the network behind
trap 'compose down -t 45 >/dev/null 2>&1 || true; podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true; cleanup' EXIT
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "podman-compose up"; }
URL=http://127.0.0.1:$COMROPE_HOST_PORT
STATS="http://127.0.0.1:$HAPROXY_STATS_HOST_PORT/stats;csv"

# HAProxy's view: the status (UP, DOWN, ...) and request total of a server
server_field() { # SERVER COLUMN-NAME
  curl -sf --max-time 5 "$STATS" | awk -F, -v s="$1" -v c="$2" '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == c || $i == "# " c) col = i }
    $1 == "comrope" && $2 == s { print $col }'
}
up() { [ "$(server_field "replica-$1" status)" = UP ]; }
for i in 1 2 3; do
  poll 90 up "$i" || fail "replica-$i never UP in HAProxy: $(curl -s "$STATS" | cut -d, -f1,2,18 | tail -5)"
done
echo "ok three replicas UP behind HAProxy"

IMG=$ROOT/models/samples/ankle-boot.png
hey -z 600s -c 8 -m POST -T image/png -D "$IMG" "$URL/v1/classify" >"$WORK/hey.txt" 2>&1 &
HEY=$!
OTHER_PIDS+=("$HEY")
answered() { [ "$(server_field "replica-$1" stot)" -gt "$2" ]; }
for i in 1 2 3; do poll 30 answered "$i" 20 || fail "replica-$i gets no load"; done
start=$SECONDS
for i in 1 2 3; do
  ctr=${PROJECT}_comrope-serve-${i}_1
  before=$(podman inspect --format '{{.State.StartedAt}}' "$ctr")
  served=$(server_field "replica-$i" stot)
  podman stop -t 45 "$ctr" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr")
  [ "$code" = 0 ] || fail "replica-$i exited $code at SIGTERM"
  podman start "$ctr" >/dev/null
  [ "$(podman inspect --format '{{.State.StartedAt}}' "$ctr")" != "$before" ] || fail "replica-$i not restarted"
  poll 90 up "$i" || fail "replica-$i not UP again after its restart"
  # it serves again before the next one goes
  poll 30 answered "$i" "$served" || fail "replica-$i serves nothing after its restart"
  echo "replicas: replica-$i restarted (drained, exit 0, UP and serving again) at $((SECONDS - start)) s"
done
# a little load on the last restarted one too, then stop hey (it reports on SIGINT)
kill -INT "$HEY"
wait "$HEY" || true
total=$(sed -n 's/^ *Requests\/sec:.*//p; s/^ *\[\([0-9]*\)\][[:space:]]*\([0-9]*\) responses$/\1 \2/p' "$WORK/hey.txt")
ok=$(awk '$1 == 200 { print $2 }' <<<"$total")
bad=$(awk '$1 != 200 { s += $2 } END { print s + 0 }' <<<"$total")
errors=$(sed -n '/^Error distribution:/,$ s/^ *\[\([0-9]*\)\].*/\1/p' "$WORK/hey.txt" | awk '{ s += $1 } END { print s + 0 }')
failed=$((bad + errors))
echo "replicas: rolling restart of 3 replicas under load: ${ok:-0} answered 200, $failed failed ($bad non-200, $errors transport errors)"
[ "${ok:-0}" -gt 0 ] || fail "no answers at all: $(cat "$WORK/hey.txt")"
[ "$failed" = 0 ] || fail "$failed failed requests during the rolling restart: $(sed -n '/Status code distribution/,$p' "$WORK/hey.txt")"
echo "replicas: all passed"
