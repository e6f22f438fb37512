#!/usr/bin/env bash
# comrope-serve under a service manager, without one running here:
#  1. sd_notify (systemd's notify protocol, a Type=notify unit): a
#     receiving socket in $NOTIFY_SOCKET gets STATUS=loading model ...,
#     then READY=1 only once the port answers (its STATUS names the port),
#     then at SIGTERM STOPPING=1 with a draining STATUS, then the drained
#     STATUS; READY=1 exactly once.
#  2. A port that is taken exits 3 (the unit restarts on 3, not on the
#     bad model / bad config statuses 1 and 2).
#  3. --health-probe, the image's curl-less health check: 0 against the
#     ready daemon via --port and via COMROPE_PORT, 1 on a closed port and
#     against a server answering 503, 2 for port 0 and for a bad setting.
#
#   tests/integration/notify.sh build/comrope-serve
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# --- 1. sd_notify ------------------------------------------------------------
SOCK=$WORK/notify.sock
MSGS=$WORK/notify.txt
: >"$MSGS"
# One line per datagram, its fields joined by " | ".
"$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
out = open(sys.argv[2], "a", buffering=1)
while True:
    out.write(s.recv(4096).decode().replace("\n", " | ") + "\n")
' "$SOCK" "$MSGS" &
OTHER_PIDS+=("$!")
poll 10 test -S "$SOCK" || fail "the notify receiver did not bind $SOCK"
msgs_have() { grep -q -- "$1" "$MSGS"; }

NOTIFY_SOCKET=$SOCK start_daemon --access-log text
poll 10 msgs_have 'READY=1' || fail "no READY=1 on \$NOTIFY_SOCKET: $(cat "$MSGS")"
first=$(head -1 "$MSGS")
case $first in
  "STATUS=loading model $MODEL") ;;
  *) fail "first notification is '$first', expected the model loading" ;;
esac
ready_line=$(grep -n 'READY=1' "$MSGS" | head -1)
case $ready_line in
  2:"READY=1 | STATUS=serving comrope_ld_b2 on 127.0.0.1:$PORT "*) ;;
  *) fail "READY line '$ready_line' is not the second message naming port $PORT" ;;
esac
kill -TERM "$DAEMON_PID"
wait_exit 60
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM"
poll 10 msgs_have 'STATUS=drained' || fail "no drained STATUS: $(cat "$MSGS")"
stopping=$(grep -n 'STOPPING=1' "$MSGS" || true)
case $stopping in
  3:"STOPPING=1 | STATUS=SIGTERM: draining (up to 30 s)") ;;
  *) fail "STOPPING line '$stopping' is not the third message, the drain's" ;;
esac
[ "$(grep -c 'READY=1' "$MSGS")" = 1 ] || fail "READY=1 more than once: $(cat "$MSGS")"
echo "ok sd_notify: $(tr '\n' '/' <"$MSGS")"

# --- 2. a taken port exits 3 ---------------------------------------------------
start_daemon --access-log text
rc=0
"$SERVE" --model "$MODEL" --host 127.0.0.1 --port "$PORT" 2>"$WORK/taken.log" || rc=$?
[ "$rc" = 3 ] || fail "second daemon on taken port $PORT exited $rc, expected 3: $(cat "$WORK/taken.log")"
grep -q "cannot listen on 127.0.0.1:$PORT" "$WORK/taken.log" || fail "no 'cannot listen' message: $(cat "$WORK/taken.log")"
echo "ok a taken port exits 3"

# --- 3. --health-probe -----------------------------------------------------------
probe() {
  local rc=0
  "$SERVE" --health-probe "$@" >"$WORK/probe.out" 2>&1 || rc=$?
  echo "$rc"
}
[ "$(probe --host 127.0.0.1 --port "$PORT")" = 0 ] || fail "probe --port $PORT: $(cat "$WORK/probe.out")"
grep -q "127.0.0.1:$PORT/v2/health/ready: 200" "$WORK/probe.out" || fail "probe said: $(cat "$WORK/probe.out")"
# the wildcard default host means the loopback; the port from the environment
rc=$(COMROPE_PORT=$PORT probe)
[ "$rc" = 0 ] || fail "probe with COMROPE_PORT=$PORT: $rc, $(cat "$WORK/probe.out")"
stop_daemon
[ "$(probe --port "$PORT")" = 1 ] || fail "probe of the stopped daemon's port $PORT: $(cat "$WORK/probe.out")"
[ "$(probe --port 0)" = 2 ] || fail "probe --port 0: $(cat "$WORK/probe.out")"
[ "$(probe --port 99999)" = 2 ] || fail "probe --port 99999: $(cat "$WORK/probe.out")"
grep -q 'port' "$WORK/probe.out" || fail "probe --port 99999 did not name the key: $(cat "$WORK/probe.out")"
# a server that answers 503 (as the daemon does while loading or draining)
P503=$(free_port)
"$PY" -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$P503" &
OTHER_PIDS+=("$!")
answers() { [ "$(http_code "http://127.0.0.1:$P503/v2/health/ready")" = 503 ]; }
poll 10 answers || fail "the 503 server did not start"
[ "$(probe --port "$P503")" = 1 ] || fail "probe against a 503: $(cat "$WORK/probe.out")"
grep -q ': 503' "$WORK/probe.out" || fail "probe said: $(cat "$WORK/probe.out")"
echo "ok --health-probe: 0 ready (flag, env), 1 closed or 503, 2 no port"
echo "notify: all passed"
