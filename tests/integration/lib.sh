# shellcheck shell=bash
# lib.sh: what the integration tests share (sourced, not run).
#
# Each test starts the real comrope-serve on a free port (--port 0; the
# bound port is read from its "listening on" log line), waits for it by
# polling (bounded loops, never a sleep as synchronization), and kills
# every process it started when it exits, on success or failure (trap).
#
#   SERVE=build/comrope-serve; . tests/integration/lib.sh
#   start_daemon [FLAG VALUE]...    sets DAEMON_PID, PORT, URL, LOG (--model $MODEL unless empty)
#   launch_daemon [FLAG VALUE]...   the same up to "listening on", not waiting for ready
#   stop_daemon                     SIGTERM, waits, checks exit status 0
#   metric NAME                     a sample's value from /metrics
#   poll SECONDS CMD...             runs CMD every 0.1 s until it succeeds
#   fail MESSAGE                    prints the daemon log's tail, exits 1
#   edge SUBCOMMAND ARG...          raw HTTP cases (edge.py)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVE=${SERVE:-$ROOT/build/comrope-serve}
# shellcheck disable=SC2034  # used by the scripts that source this file
IMG=$ROOT/tests/fixtures/images/photo.png
# The tiny parity fixture (2 layers, width 32): requests cost microseconds
# to milliseconds, so the load tests are quick and the slow requests of
# limits.sh are slow only by their size. COMROPE_TEST_MODEL=DIR for another.
MODEL=${COMROPE_TEST_MODEL:-$ROOT/tests/fixtures/parity/comrope_ld_b2}
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
# poll, http_code, free_port
# shellcheck source=tests/common.sh
. "$ROOT/tests/common.sh"
WORK=$(mktemp -d)
DAEMON_PID=
PORT=
URL=
LOG=
OTHER_PIDS=()
DAEMONS=0

cleanup() {
  local p
  for p in "${OTHER_PIDS[@]}" $DAEMON_PID; do
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [ -n "$LOG" ] && [ -f "$LOG" ]; then
    echo "--- daemon log (tail)" >&2
    tail -40 "$LOG" >&2
  fi
  exit 1
}

# edge SUBCOMMAND ARG...: tests/integration/edge.py (raw HTTP cases).
edge() { "$PY" "$ROOT/tests/integration/edge.py" "$@"; }

ready() { [ "$(http_code "$URL/v2/health/ready")" = 200 ]; }
log_has() { grep -q "$1" "$LOG"; }

# launch_daemon [FLAG VALUE]...: comrope-serve on 127.0.0.1, any free port,
# up to its "listening on" line (the model may still be loading). The
# environment entries of the array DAEMON_ENV (NAME=VALUE), if set, are
# given to the daemon alone.
launch_daemon() {
  DAEMONS=$((DAEMONS + 1))
  LOG=$WORK/daemon$DAEMONS.log
  : >"$LOG"
  env ${DAEMON_ENV[@]+"${DAEMON_ENV[@]}"} "$SERVE" ${MODEL:+--model "$MODEL"} --host 127.0.0.1 --port 0 "$@" 2>"$LOG" &
  DAEMON_PID=$!
  local i
  PORT=
  for ((i = 0; i < 300; i++)); do
    # text: "... listening on HOST:PORT"; json: {..., "msg":"listening on HOST:PORT"}
    PORT=$(sed -n 's/.*listening on [^ "]*:\([0-9]*\).*/\1/p' "$LOG")
    [ -n "$PORT" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "daemon exited during start-up"
    sleep 0.1
  done
  [ -n "$PORT" ] || fail "no 'listening on' line in 30 s"
  URL=http://127.0.0.1:$PORT
}

# start_daemon [FLAG VALUE]...: launch_daemon, then ready.
start_daemon() {
  launch_daemon "$@"
  poll 30 ready || fail "not ready in 30 s"
}

daemon_gone() { ! kill -0 "$DAEMON_PID" 2>/dev/null; }

# wait_exit SECONDS: waits (bounded) for the daemon to exit; sets EXIT_CODE.
wait_exit() {
  local seconds=$1
  poll "$seconds" daemon_gone ||
    fail "daemon still running $seconds s after SIGTERM"
  EXIT_CODE=0
  wait "$DAEMON_PID" || EXIT_CODE=$?
  DAEMON_PID=
}

stop_daemon() {
  kill -TERM "$DAEMON_PID"
  wait_exit 60
  [ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM"
  log_has 'comrope-serve: stopped\|"msg":"stopped"' || fail "no clean stop in the log"
}

# metric NAME: the value of the sample NAME (with its labels, if any) on /metrics.
# metric NAME: the sum of the samples of NAME (`name` or `name{k="v",...}`)
# whose labels include NAME's, in any order (per-model series carry model
# and version labels: NAME need not name them); fails when there is none.
metric() {
  curl -sf --max-time 10 "$URL/metrics" | awk -v n="$1" '
    function name(s) { return s ~ /{/ ? substr(s, 1, index(s, "{") - 1) : s }
    function labels(s) { return s ~ /{/ ? substr(s, index(s, "{") + 1, length(s) - index(s, "{") - 1) : "" }
    BEGIN { want = split(labels(n), w, ",") }
    /^#/ || name($1) != name(n) { next }
    {
      have = "," labels($1) ","
      for (i = 1; i <= want; i++) if (index(have, "," w[i] ",") == 0) next
      sum += $2; found = 1
    }
    END { if (found) printf "%.15g\n", sum; exit !found }'
}

# under_load: /v1/classify answers are coming and more requests are queued
# or running (a load generator started in the background reached the daemon)
under_load() {
  [ "$(metric 'comrope_requests_total{endpoint="v1_classify",code="200"}' || echo 0)" -ge 1 ] &&
    [ "$(metric comrope_in_flight_requests || echo 0)" -ge 2 ]
}

# hey_codes OUT: the status codes in hey's summary OUT; hey_count OUT CODE: how many.
hey_codes() { sed -n 's/^ *\[\([0-9]*\)\].*responses$/\1/p' "$1" | sort -u | tr '\n' ' '; }
hey_count() { sed -n "s/^ *\[$2\][[:space:]]*\([0-9]*\) responses$/\1/p" "$1"; }

