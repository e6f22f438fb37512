#!/usr/bin/env bash
# oslimits.sh: the daemon when the operating system refuses it something.
#   1. Memory: RLIMIT_AS lowered on the serving daemon (prlimit) to what it
#      holds, so that the next allocation that needs more fails. Requests
#      are answered 200 or with a JSON error (never an empty body), the
#      daemon lives, and serves again once the limit is raised.
# The limits are set with prlimit on the daemon itself: no root needed.
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# json_error FILE: FILE is a JSON object with an "error" string.
json_error() {
  "$PY" -c 'import json, sys; assert isinstance(json.load(open(sys.argv[1]))["error"], str)' "$1" 2>/dev/null
}

# --- 1. malloc failing while serving ------------------------------------------
start_daemon --access-log off
classify() { curl -s --max-time 10 -o "$1" -w '%{http_code}' -H 'Content-Type: image/png' --data-binary @"$IMG" "$URL/v1/classify"; }
[ "$(classify "$WORK/warm")" = 200 ] || fail "no 200 before the limit"
vm_kib=$(awk '/^VmSize/ { print $2 }' "/proc/$DAEMON_PID/status")
prlimit --pid "$DAEMON_PID" --as=$((vm_kib * 1024)):
refused=0
for i in $(seq 20); do
  code=$(classify "$WORK/oom.$i")
  [ "$code" = 200 ] && continue
  refused=$((refused + 1))
  json_error "$WORK/oom.$i" || fail "under RLIMIT_AS: a $code whose body is not a JSON error: '$(head -c 200 "$WORK/oom.$i")'"
done
[ "$refused" -gt 0 ] || fail "RLIMIT_AS at the daemon's size refused nothing: the test did not test"
kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon died under RLIMIT_AS"
[ "$(http_code "$URL/v2/health/live")" = 200 ] || fail "not live under RLIMIT_AS"
prlimit --pid "$DAEMON_PID" --as=unlimited:
[ "$(classify "$WORK/after")" = 200 ] || fail "no 200 once RLIMIT_AS was raised again"
stop_daemon
echo "ok RLIMIT_AS at the daemon's size: $refused of 20 refused with a JSON error, alive, 200 once raised"

echo "oslimits.sh: all passed"
