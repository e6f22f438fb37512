#!/usr/bin/env bash
# races.sh SERVE: every thread of the daemon busy at once, for
# ThreadSanitizer (scripts/test.sh runs it in the TSan build) and as a test
# of its own. One daemon (explicit model control, two workers of two GEMM
# threads per model, four HTTP threads, /metrics on a port of its own):
#   - hey at three resolutions on model a (never unloaded), and on b and c,
#     which a control loop loads and unloads without pause (v2 repository
#     API); v2 infers on kept-alive connections (repo_client.py);
#   - SIGHUP rescans every 0.2 s; scrapes of /metrics, the statistics, the
#     index, readiness and the metadata without pause;
#   - then, with all of that still running, SIGTERM: the drain.
# The daemon must exit 0 after its drain ("stopped"); a answers only 200
# (503 once draining), b and c 200, 404 or 503, never another 5xx. Under
# TSan a race report fails it (exit 66 at stop, or at once with
# halt_on_error=1). SIGTERM comes once each activity has been seen to
# run a few times (observable counts, no sleep as synchronization).
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
P=$ROOT/tests/fixtures/parity
CLIENT=$ROOT/tests/integration/repo_client.py
STOP=$WORK/stop

REPO=$WORK/repo
mkdir -p "$REPO/a" "$REPO/b"
cp -r "$P/comrope_ld_b2" "$REPO/a/1"
cp -r "$P/comrope_ap_b2" "$REPO/b/1"
cp -r "$P/comrope_ld_b3" "$REPO/c" # a flat model directory: version 1
MPORT=$(free_port)
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode explicit --load-model a,b \
  --workers 2 --gemm-threads 2 --http-threads 4 --metrics-port "$MPORT" --max-queue-delay-us 2000 \
  --access-log text
MURL=http://127.0.0.1:$MPORT
mmetric() { curl -sf --max-time 10 "$MURL/metrics" | awk -v n="$1" '$1 == n { print $2; f = 1 } END { exit !f }'; }

# hey runs until interrupted (it then prints its report)
heys=()
hey_on() {
  hey -z 600s -c "$3" -t 30 -m POST -T image/png -D "$IMG" "$URL/v1/models/$1/classify?resolution=$2" \
    >"$WORK/hey-$1-$2.txt" 2>&1 &
  heys+=($!)
  OTHER_PIDS+=($!)
}
hey_on a 16 4
hey_on a 8x16 4
hey_on a 12x12 4
hey_on b 12x8 3
hey_on c 16 3
"$PY" "$CLIENT" load "$URL" a "$IMG" "$STOP" "$WORK/v2.json" >/dev/null 2>&1 &
OTHER_PIDS+=($!)

loops=()
# load and unload b and c, each cycle counted in a file (the control API
# answers 200, 400, 404 or 503 under load; only a crash or a hang matters)
(while [ ! -e "$STOP" ]; do
  for op in c/load b/unload c/unload b/load; do
    curl -s -o /dev/null --max-time 60 -X POST "$URL/v2/repository/models/$op" || true
  done
  echo >>"$WORK/cycles"
done) &
loops+=($!)
(while [ ! -e "$STOP" ]; do
  kill -HUP "$DAEMON_PID" 2>/dev/null || true
  sleep 0.2 # the pace of the rescans, not a wait for anything
done) &
loops+=($!)
(while [ ! -e "$STOP" ]; do
  curl -s -o /dev/null --max-time 10 "$MURL/metrics" || true
  for path in v2/models/stats v2/models/a/stats v2/health/ready v1/models v2/models/b; do
    curl -s -o /dev/null --max-time 10 "$URL/$path" || true
  done
  curl -s -o /dev/null --max-time 10 -X POST "$URL/v2/repository/index" || true
  echo >>"$WORK/scrapes"
done) &
loops+=($!)
OTHER_PIDS+=("${loops[@]}")

lines() { [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }
rescans_done() { [ "$(grep -c 'rescan done' "$LOG")" -ge "$1" ]; }
classified_at_least() { [ "$(mmetric "comrope_requests_total{endpoint=\"v1_classify\",code=\"200\",model=\"a\",version=\"1\"}" || echo 0)" -ge "$1" ]; }
poll 120 lines "$WORK/cycles" 3 || fail "fewer than 3 load/unload cycles in 120 s"
poll 60 lines "$WORK/scrapes" 3 || fail "fewer than 3 rounds of scrapes in 60 s"
poll 60 rescans_done 3 || fail "fewer than 3 rescans in 60 s"
poll 60 classified_at_least 100 || fail "fewer than 100 answers from model a in 60 s"
echo "ok $(wc -l <"$WORK/cycles") load/unload cycles, $(grep -c 'rescan done' "$LOG") rescans, $(wc -l <"$WORK/scrapes") rounds of scrapes so far"

# the drain, with everything still running
kill -TERM "$DAEMON_PID"
wait_exit 90
: >"$STOP"
for p in "${heys[@]}"; do kill -INT "$p" 2>/dev/null || true; done
for p in "${heys[@]}" "${loops[@]}"; do wait "$p" || true; done
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM under load (66: a ThreadSanitizer report)"
log_has 'comrope-serve: stopped' || fail "no clean stop in the log"
! log_has 'ThreadSanitizer' || fail "a ThreadSanitizer report in the daemon's log"
for f in "$WORK"/hey-*.txt; do
  name=${f##*/hey-}
  codes=$(hey_codes "$f")
  case $name in
  a-*) allowed=" 200 503 " ;;
  *) allowed=" 200 404 503 " ;;
  esac
  for code in $codes; do
    [[ $allowed == *" $code "* ]] || { cat "$f" >&2; fail "${name%.txt}: status $code (allowed:$allowed)"; }
  done
  n=$(hey_count "$f" 200)
  [ "${n:-0}" -gt 0 ] || { cat "$f" >&2; fail "${name%.txt}: no 200 at all"; }
  echo "ok ${name%.txt}: [$codes]"
done
echo "races: all passed"
