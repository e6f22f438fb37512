#!/usr/bin/env bash
# clients.sh: slow and greedy clients against the real daemon
# (tests/integration/clients.py does the raw sockets).
#   1. receive-timeout-s: a body, and headers, trickled a byte at a time
#      (each byte well inside connection-timeout-s) are cut at the
#      deadline; the access log says 408 for the request that had begun.
#   2. max-connections-per-client and max-connections: past either cap a
#      new connection is closed at once, never left waiting in the backlog;
#      another client, and a new one once a connection left, are served.
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
grep -q 'POST /v1/classify 408 ' "$LOG" || fail "no 408 access log line for the trickled body"
stop_daemon

MPORT=$(free_port)
start_daemon --max-connections 4 --max-connections-per-client 2 --receive-timeout-s 120 \
  --metrics-port "$MPORT" --access-log off
clients caps "$PORT" "$MPORT" || fail "caps"
stop_daemon
echo "clients.sh: all passed"
