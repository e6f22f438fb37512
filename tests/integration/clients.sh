#!/usr/bin/env bash
# clients.sh: slow and greedy clients against the real daemon
# (tests/integration/clients.py does the raw sockets).
#   1. receive-timeout-s: a body, and headers, trickled a byte at a time
#      (each byte well inside connection-timeout-s) are cut at the
#      deadline, and so is a silent connection; the access log says 408
#      for the request that had begun.
#   2. max-connections-per-client and max-connections: past either cap a
#      new connection is closed at once, never left waiting in the backlog;
#      another client, and a new one once a connection left, are served.
#   3. An open-file limit too low for max-connections (past it accept()
#      fails and clients wait in the backlog below the cap): a soft limit is
#      raised, a hard one stops the start naming max-connections.
# Observed through /metrics on --metrics-port, so that checking does not
# take a connection of the port under test.
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
clients() { "$PY" "$ROOT/tests/integration/clients.py" "$@"; }

MPORT=$(free_port)
start_daemon --receive-timeout-s 2 --connection-timeout-s 60 --metrics-port "$MPORT" --access-log text
clients trickle "$PORT" "$MPORT" 2 || fail "trickle"
poll 10 log_has 'POST /v1/classify 408 ' || fail "no 408 access log line for the trickled body"
stop_daemon

MPORT=$(free_port)
start_daemon --max-connections 4 --max-connections-per-client 2 --receive-timeout-s 120 \
  --metrics-port "$MPORT" --access-log off
clients caps "$PORT" "$MPORT" || fail "caps"
stop_daemon
rc=0
(ulimit -n 300 && exec timeout 60 "$SERVE" --model "$MODEL" --host 127.0.0.1 --port 0 \
  --max-connections 1000) 2>"$WORK/nofile.log" || rc=$?
if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then fail "started with 300 open files for 1000 connections"; fi
grep -q "max-connections: 1000 connections need 1064 open files, but the limit is 300" "$WORK/nofile.log" ||
  fail "no max-connections message: $(cat "$WORK/nofile.log")"
ulimit -S -n 300
start_daemon --max-connections 1000
soft=$(awk '/^Max open files/ { print $4 }' "/proc/$DAEMON_PID/limits")
[ "$soft" -ge 1064 ] || fail "soft open-file limit $soft not raised for 1000 connections"
stop_daemon
echo "ok: open-file limit: a hard 300 refused for max-connections 1000, a soft one raised to $soft"
echo "clients.sh: all passed"
