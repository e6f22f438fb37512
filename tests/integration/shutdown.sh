#!/usr/bin/env bash
# Graceful shutdown (SIGTERM) of comrope-serve.
#  1. Under load: hey posts images on 16 connections; once answers flow,
#     SIGTERM. The daemon must exit 0 within the drain bound, and hey must
#     see only 200 or 503 answers; its only errors may be refused
#     connections (the listening socket is closed at once) and requests
#     written onto a kept-alive connection just as the daemon closed it idle
#     at stop (Go reports "server closed idle connection", "EOF" or, when the
#     close crossed the request, "connection reset by peer"; no server can
#     rule that race out, RFC 9112 9.6), and only while the daemon's log
#     shows that every request it had started reading was answered in full
#     (no "ended without a complete answer" or "cut at stop" line): nothing
#     the daemon had accepted may be lost.
#  2. Seen from single connections (edge.py drain): readiness 503 with
#     Connection: close on a kept-alive connection, inference on a
#     kept-alive connection after the signal gets 503 with Connection:
#     close, new connections are refused, a request whose body was arriving
#     at the signal is still answered 200; at the end an idle kept-alive
#     connection is closed and a request begun on another is answered, not
#     cut by the stop; then exit 0 with nothing left unanswered.
#
#   tests/integration/shutdown.sh build/comrope-serve
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
DRAIN=10

# --- 1. SIGTERM under hey load ---------------------------------------------
# Images at 16x16 patches (256 tokens), so that batches are queued and
# running when the signal comes.
start_daemon --access-log off --drain-timeout-s "$DRAIN"
P=$(curl -sf "$URL/v1/models" | jq -r '.models[0].patch_size')
# hey runs until it is stopped below: a fixed run (and a count of answers
# to wait for) would assume a throughput that a loaded or sanitized build
# may not reach, and the load could end before the signal.
hey -z 600s -c 16 -t 30 -m POST -T image/png -D "$IMG" "$URL/v1/classify?top_k=1&resolution=$((16 * P))" \
  >"$WORK/hey.txt" 2>&1 &
HEY_PID=$!
OTHER_PIDS+=("$HEY_PID")
poll 120 under_load || fail "load never reached the daemon (no answers, or nothing in flight)"
in_flight=$(metric comrope_in_flight_requests)
start=$(date +%s%N)
kill -TERM "$DAEMON_PID"
wait_exit $((DRAIN + 20))
ms=$((($(date +%s%N) - start) / 1000000))
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM under load"
[ "$ms" -le $((DRAIN * 1000 + 5000)) ] || fail "took $ms ms to stop (drain bound $DRAIN s)"
log_has 'comrope-serve: stopped' || fail "no clean stop"
# hey would go on being refused: stop it (on SIGINT it prints its report).
kill -INT "$HEY_PID" 2>/dev/null || true
wait "$HEY_PID" || fail "hey failed"

codes=$(hey_codes "$WORK/hey.txt")
case "$codes" in
  "200 " | "200 503 ") ;;
  *) cat "$WORK/hey.txt" >&2; fail "status codes [$codes]: only 200 and 503 are allowed" ;;
esac
ok=$(hey_count "$WORK/hey.txt" 200)
unavailable=$(hey_count "$WORK/hey.txt" 503)
# Error lines look like "  [N]	Post "...": dial tcp ...: connect: connection refused".
errors=$(sed -n '/^Error distribution/,$p' "$WORK/hey.txt" | grep '^ *\[' || true)
if log_has 'ended without a complete answer' || log_has 'cut at stop'; then
  lost=$(grep -v 'connection refused' <<<"$errors" || true)  # the daemon dropped some: no excuse
else
  lost=$(grep -v -e 'connection refused' -e 'server closed idle connection' -e '": EOF$' \
    -e 'connection reset by peer' <<<"$errors" || true)
fi
if [ -n "$lost" ]; then
  cat "$WORK/hey.txt" >&2
  fail "requests lost at shutdown (errors other than refused or idle-closed connections): $lost"
fi
refused=$(awk -F'[][]' '{ n += $2 } END { print n + 0 }' <<<"$errors")
echo "ok SIGTERM under load ($in_flight requests in flight): exit 0 after $ms ms; ${ok} x 200, ${unavailable:-0} x 503, $refused refused or idle-closed connections, nothing lost"

# --- 2. keep-alive connections and a request arriving across SIGTERM -------
# (D in edge.py holds its request from before the signal to the drain's end:
# receive deadlines far past that, even under a sanitizer)
start_daemon --access-log text --drain-timeout-s "$DRAIN" --receive-timeout-s 300 --connection-timeout-s 300
edge drain "$PORT" "$DAEMON_PID" "$IMG" || fail "drain seen from connections"
wait_exit $((DRAIN + 20))
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM"
log_has 'comrope-serve: stopped' || fail "no clean stop"
! log_has 'ended without a complete answer\|cut at stop' ||
  fail "a request was cut at stop: $(grep 'ended without\|cut at stop' "$LOG")"
echo "shutdown: all passed"
