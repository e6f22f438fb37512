#!/usr/bin/env bash
# tls.sh: HTTPS (tls-cert-file, tls-key-file; server/tls.h). With the
# committed test CA (tests/fixtures/tls, made by its make.sh):
#   - v1 classify, v2 infer and /metrics on the main port and on
#     --metrics-port over https (curl trusts the test CA only); a plain
#     HTTP request to the TLS port fails cleanly and the daemon serves on;
#     TLS 1.0 and 1.1 handshakes are refused on both ports
#   - connections that never complete a handshake are closed by the
#     connection and receive timeouts
#   - bad settings stop the start, exit 2, naming the file: one of the pair
#     alone (flag and environment), a mismatched key, garbage PEM, a
#     directory, a missing file
#   - rotation: an atomic swap of the directory's symlink (cert-manager's
#     way) is served from the next handshake on, and the expiry gauge
#     follows; a garbage file renamed over the certificate, or an expired
#     pair swapped in, keeps the served one, logged naming the file and
#     counted once (on a second look that finds the same files); certbot's
#     symlinks repointed one by one are served once both are in place, and
#     a state between the two seen by one look only is not counted
#   - a replaced pair is freed when the last connection holding it closes:
#     rotated many times with a kept-alive connection holding the first
#     pair, two pairs are in memory (comrope_tls_certificate_pairs), then
#     one once that connection closes
#   - --health-probe speaks TLS to the daemon (flags and environment)
#   - SIGTERM with an HTTPS request in flight: answered 200, exit 0; and
#     under hey's HTTPS load: exit 0, only 200 / 503 / refused, nothing lost
# Usage: tls.sh [path/to/comrope-serve]
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
FIX=$ROOT/tests/fixtures/tls
CLIENT=$ROOT/tests/integration/tls_client.py
# every curl of this test (lib.sh's ready and metric too) trusts the test CA
export CURL_CA_BUNDLE=$FIX/ca.pem

# The served files as a Kubernetes Secret mounts them: live -> a data
# directory, swapped atomically.
mkdir "$WORK/d1" "$WORK/d2"
cp "$FIX/server.pem" "$WORK/d1/cert.pem"
cp "$FIX/server.key" "$WORK/d1/key.pem"
cp "$FIX/server2.pem" "$WORK/d2/cert.pem"
cp "$FIX/server2.key" "$WORK/d2/key.pem"
ln -s d1 "$WORK/live"
CERT=$WORK/live/cert.pem
KEY=$WORK/live/key.pem

# --- bad settings: exit 2, naming the file ---------------------------------
refused() { # WHAT EXPECTED-TEXT ARGS...
  local what=$1 want=$2 out rc=0
  shift 2
  out=$("$SERVE" --model "$MODEL" --host 127.0.0.1 --port 0 "$@" 2>&1) || rc=$?
  [ "$rc" = 2 ] || fail "$what: exit $rc, not 2 ($out)"
  grep -qF -- "$want" <<<"$out" || fail "$what: the message does not say \"$want\": $out"
  echo "ok $what: exit 2, ${out#*error: }"
}
printf 'not a certificate\n' >"$WORK/garbage.pem"
refused "tls-cert-file alone" "tls-cert-file is set but tls-key-file is not" --tls-cert-file "$CERT"
out=$(COMROPE_TLS_KEY_FILE=$KEY "$SERVE" --port 0 2>&1) && fail "COMROPE_TLS_KEY_FILE alone started"
grep -q "tls-key-file is set but tls-cert-file is not" <<<"$out" || fail "key alone: $out"
echo "ok COMROPE_TLS_KEY_FILE alone refused"
refused "a key that does not match" "$FIX/other.key" --tls-cert-file "$CERT" --tls-key-file "$FIX/other.key"
refused "garbage as the certificate" "tls-cert-file: $WORK/garbage.pem: not a PEM certificate" \
  --tls-cert-file "$WORK/garbage.pem" --tls-key-file "$KEY"
refused "garbage as the key" "tls-key-file: $WORK/garbage.pem" --tls-cert-file "$CERT" \
  --tls-key-file "$WORK/garbage.pem"
refused "a directory as the certificate" "tls-cert-file: $FIX: is a directory" --tls-cert-file "$FIX" \
  --tls-key-file "$KEY"
refused "a missing key" "tls-key-file: $WORK/none.pem" --tls-cert-file "$CERT" --tls-key-file "$WORK/none.pem"
"$SERVE" --tls-cert-file "$CERT" --tls-key-file "$KEY" --print-config | grep -qx "tls-cert-file \"$CERT\"" ||
  fail "--print-config does not show tls-cert-file"

# --- serving ------------------------------------------------------------------
MPORT=$(free_port)
launch_daemon --tls-cert-file "$CERT" --tls-key-file "$KEY" --metrics-port "$MPORT" \
  --connection-timeout-s 2 --receive-timeout-s 2
URL=https://127.0.0.1:$PORT
poll 30 ready || fail "not ready over https in 30 s"
MURL=https://127.0.0.1:$MPORT
mmetric() { URL=$MURL metric "$@"; } # /metrics is on the metrics port

code=$(http_code -H 'Content-Type: image/png' --data-binary "@$IMG" "$URL/v1/classify")
[ "$code" = 200 ] || fail "v1 classify over https: $code"
"$PY" - "$WORK/infer.json" <<'PY'
import json, sys
data = [0.5] * (3 * 16 * 16)
json.dump({"inputs": [{"name": "pixel_values", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": data}]},
          open(sys.argv[1], "w"))
PY
name=$(basename "$MODEL")
code=$(http_code -H 'Content-Type: application/json' --data-binary "@$WORK/infer.json" \
  "$URL/v2/models/$name/infer")
[ "$code" = 200 ] || fail "v2 infer over https: $code"
curl -sf --max-time 10 "$MURL/metrics" >"$WORK/metrics.txt" || fail "/metrics on the metrics port over https"
grep -q '^comrope_requests_total{endpoint="v1_classify",code="200"' "$WORK/metrics.txt" ||
  fail "the metrics port's /metrics lacks the classify"
promtool check metrics <"$WORK/metrics.txt" >/dev/null 2>&1 || fail "promtool: $(promtool check metrics <"$WORK/metrics.txt" 2>&1)"
[ "$(http_code "$URL/metrics")" = 404 ] || fail "/metrics on the main port with metrics-port set: not 404"
echo "ok v1 classify, v2 infer and /metrics (metrics port, promtool clean) over https"
# plain HTTP to the TLS port: no answer, the connection closed, the daemon serves on
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:$PORT/v2/health/ready" || true)
[ "$code" = 000 ] || fail "plain HTTP to the TLS port got $code"
ready || fail "not ready after a plain HTTP request"
echo "ok plain HTTP to the TLS port fails cleanly; https served on"

"$PY" "$CLIENT" versions "$PORT" "$FIX/ca.pem" || fail "TLS versions"
"$PY" "$CLIENT" versions "$MPORT" "$FIX/ca.pem" || fail "TLS versions on the metrics port"
"$PY" "$CLIENT" stall "$PORT" 15 || fail "stalled handshakes"
ready || fail "not ready after the stalled handshakes"

# --- the health probe ---------------------------------------------------------
# flags, and the environment as the image's HEALTHCHECK has it
probe=$("$SERVE" --health-probe --host 127.0.0.1 --port "$PORT" --tls-cert-file "$CERT" --tls-key-file "$KEY" 2>&1) ||
  fail "--health-probe over TLS: $probe"
echo "ok --health-probe over TLS: $probe"
probe=$(COMROPE_HOST=127.0.0.1 COMROPE_PORT=$PORT COMROPE_TLS_CERT_FILE=$CERT COMROPE_TLS_KEY_FILE=$KEY \
  "$SERVE" --health-probe 2>&1) || fail "--health-probe over TLS from the environment: $probe"
rc=0
probe=$("$SERVE" --health-probe --host 127.0.0.1 --port "$PORT" 2>&1) || rc=$?
[ "$rc" = 1 ] || fail "a plain HTTP probe of the TLS port: exit $rc, not 1 ($probe)"
echo "ok --health-probe from the environment; a plain probe of the TLS port says not ready: $probe"

# --- rotation -----------------------------------------------------------------
read -r serial1 expiry1 < <("$PY" "$CLIENT" serial "$PORT" "$FIX/ca.pem")
[ "$serial1" = 1001 ] || fail "served serial $serial1, not 1001"
[ "$(mmetric comrope_tls_certificate_expiry_timestamp_seconds)" = "$expiry1" ] || fail "expiry gauge"
"$PY" "$CLIENT" rotate "$PORT" "$FIX/ca.pem" "$WORK/live" d2 1002 || fail "rotation"
served() { [ "$("$PY" "$CLIENT" serial "$1" "$FIX/ca.pem" | cut -d' ' -f1)" = "$2" ]; }
poll 10 served "$MPORT" 1002 || fail "the metrics port does not serve the new certificate"
read -r _ expiry2 < <("$PY" "$CLIENT" serial "$PORT" "$FIX/ca.pem")
[ "$(mmetric comrope_tls_certificate_expiry_timestamp_seconds)" = "$expiry2" ] ||
  fail "expiry gauge not the new certificate's"
[ "$(mmetric comrope_tls_reload_failures_total)" = 0 ] || fail "reload failures after a good swap"
log_has "tls: serving the new certificate of $CERT" || fail "no log line for the rotation"
echo "ok a swapped certificate is served from the next handshake on, both ports; the expiry gauge follows"

cp "$WORK/garbage.pem" "$WORK/d2/cert.new"
mv "$WORK/d2/cert.new" "$WORK/d2/cert.pem"
failed() { [ "$(mmetric comrope_tls_reload_failures_total)" = "$1" ]; }
poll 10 failed 1 || fail "an invalid replacement was not counted"
served "$PORT" 1002 || fail "an invalid replacement is served"
log_has "tls: keeping the served certificate: tls-cert-file: $CERT: not a PEM certificate" ||
  fail "the invalid replacement is not logged naming the file"
[ "$(grep -c 'keeping the served certificate' "$LOG")" = 1 ] || fail "logged more than once"
code=$(http_code -H 'Content-Type: image/png' --data-binary "@$IMG" "$URL/v1/classify")
[ "$code" = 200 ] || fail "v1 classify after an invalid replacement: $code"
echo "ok an invalid replacement keeps the served certificate, logged naming the file and counted"

# an expired pair (it loads, the key matches) swapped in keeps the served one too
mkdir "$WORK/d3"
cp "$FIX/expired.pem" "$WORK/d3/cert.pem"
cp "$FIX/expired.key" "$WORK/d3/key.pem"
ln -s d3 "$WORK/live.new"
mv -T "$WORK/live.new" "$WORK/live"
poll 10 failed 2 || fail "an expired replacement was not counted"
served "$PORT" 1002 || fail "an expired replacement is served"
[ "$(mmetric comrope_tls_certificate_expiry_timestamp_seconds)" = "$expiry2" ] ||
  fail "expiry gauge moved to the expired certificate"
log_has "tls: keeping the served certificate: tls-cert-file: $CERT: the certificate expired on " ||
  fail "the expired replacement is not logged naming the file"
echo "ok an expired replacement keeps the served certificate, logged naming the file and counted"

# certbot's way: live/*.pem are symlinks into archive/, each unlinked and
# made again, one after the other: a look may find the file missing, or
# the new certificate with the old key; each is counted, and the pair is
# served once both are in place
mkdir "$WORK/archive" "$WORK/d4"
cp "$FIX/server.pem" "$WORK/archive/cert1.pem"
cp "$FIX/server.key" "$WORK/archive/key1.pem"
cp "$FIX/server2.pem" "$WORK/archive/cert2.pem"
cp "$FIX/server2.key" "$WORK/archive/key2.pem"
ln -s ../archive/cert2.pem "$WORK/d4/cert.pem"
ln -s ../archive/key2.pem "$WORK/d4/key.pem"
ln -s d4 "$WORK/live.new"
mv -T "$WORK/live.new" "$WORK/live" # the served pair again: not a failure
rm "$WORK/d4/cert.pem"
poll 10 failed 3 || fail "a missing certificate was not counted"
log_has "tls: keeping the served certificate: tls-cert-file: $CERT: cannot open" ||
  fail "the missing certificate is not logged"
ln -s ../archive/cert1.pem "$WORK/d4/cert.pem"
poll 10 failed 4 || fail "the new certificate with the old key was not counted"
rm "$WORK/d4/key.pem"
ln -s ../archive/key1.pem "$WORK/d4/key.pem"
poll 10 served "$PORT" 1001 || fail "certbot's renewal is not served"
# the usual renewal: one look falls between the two symlinks (the new
# certificate, the old key), the key follows before the next look: served,
# not counted (a failure raised an alert at every such renewal). Looks
# come only from handshakes and scrapes: none between the line and the key.
passing() { grep -c 'tls: not serving the files as they are now' "$LOG" || true; }
seen=$(passing)
before=$(mmetric comrope_tls_reload_failures_total)
rm "$WORK/d4/cert.pem"
ln -s ../archive/cert2.pem "$WORK/d4/cert.pem"
# (a look: its info line, or a failure counted at once, as it was)
# one scrape (one look) per try: a second scrape a second later would be a
# second look, which counts what it finds
looked() {
  local n
  n=$(mmetric comrope_tls_reload_failures_total)
  [ "$n" != "$before" ] || [ "$(passing)" -gt "$seen" ]
}
poll 10 looked || fail "no look at the new certificate with the old key"
rm "$WORK/d4/key.pem"
ln -s ../archive/key2.pem "$WORK/d4/key.pem"
poll 10 served "$PORT" 1002 || fail "the renewal is not served"
failed "$before" || fail "a look between a renewal's two files was counted: $(mmetric comrope_tls_reload_failures_total)"
echo "ok certbot's symlinks repointed one by one: counted while incomplete, then served; a passing state not counted"

# --- drain --------------------------------------------------------------------
"$PY" "$CLIENT" drain "$PORT" "$MPORT" "$FIX/ca.pem" "$DAEMON_PID" "$LOG" "$IMG" || fail "drain over TLS"
wait_exit 60
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM"
# --- a replaced pair lives while a connection holds it -----------------------
mkdir "$WORK/r1" "$WORK/r2"
cp "$FIX/server.pem" "$WORK/r1/cert.pem"
cp "$FIX/server.key" "$WORK/r1/key.pem"
cp "$FIX/server2.pem" "$WORK/r2/cert.pem"
cp "$FIX/server2.key" "$WORK/r2/key.pem"
ln -s r1 "$WORK/rot"
launch_daemon --tls-cert-file "$WORK/rot/cert.pem" --tls-key-file "$WORK/rot/key.pem"
URL=https://127.0.0.1:$PORT
poll 30 ready || fail "not ready over https in 30 s"
mkfifo "$WORK/hold.in"
"$PY" "$CLIENT" hold "$PORT" "$FIX/ca.pem" <"$WORK/hold.in" >"$WORK/hold.out" &
HOLD_PID=$!
OTHER_PIDS+=("$HOLD_PID")
exec 3>"$WORK/hold.in"
holding() { grep -qx 'held 1001' "$WORK/hold.out"; }
poll 10 holding || fail "the kept-alive connection did not get certificate 1001: $(cat "$WORK/hold.out")"
# each swap seen by a look (a new connection served it) before the next:
# every look loads a pair other than the served one
for target in r2 r1 r2 r1 r2 r1; do
  ln -s "$target" "$WORK/rot.new"
  mv -T "$WORK/rot.new" "$WORK/rot"
  want=1001
  [ "$target" = r2 ] && want=1002
  poll 10 served "$PORT" "$want" || fail "swap to $target not served"
done
pairs() { [ "$(metric comrope_tls_certificate_pairs)" = "$1" ]; }
poll 10 pairs 2 || fail "pairs in memory after 6 rotations with one held: $(metric comrope_tls_certificate_pairs), not 2"
exec 3>&-
wait "$HOLD_PID" || fail "the held connection: $(cat "$WORK/hold.out")"
poll 10 pairs 1 || fail "the held pair not freed when its connection closed: $(metric comrope_tls_certificate_pairs) pairs"
curl -sf --max-time 10 "$URL/metrics" | promtool check metrics >/dev/null 2>&1 || fail "promtool"
echo "ok 6 rotations with a connection holding the first pair: 2 pairs in memory, 1 once it closed"
stop_daemon

# --- SIGTERM under HTTPS load (as shutdown.sh part 1) ------------------------------
DRAIN=10
launch_daemon --tls-cert-file "$FIX/server.pem" --tls-key-file "$FIX/server.key" --access-log off \
  --drain-timeout-s "$DRAIN"
URL=https://127.0.0.1:$PORT
poll 30 ready || fail "not ready over https in 30 s"
P=$(curl -sf "$URL/v1/models" | jq -r '.models[0].patch_size')
# until stopped below. hey does not verify certificates, and sends the URL's
# host:port as the TLS server name, which GnuTLS refuses (not a host name;
# README "HTTPS"): -host gives it one
hey -z 600s -c 16 -t 30 -host localhost -m POST -T image/png -D "$IMG" \
  "$URL/v1/classify?top_k=1&resolution=$((16 * P))" \
  >"$WORK/hey.txt" 2>&1 &
HEY_PID=$!
OTHER_PIDS+=("$HEY_PID")
poll 120 under_load || fail "HTTPS load never reached the daemon"
kill -TERM "$DAEMON_PID"
wait_exit $((DRAIN + 20))
[ "$EXIT_CODE" = 0 ] || fail "exit status $EXIT_CODE after SIGTERM under HTTPS load"
kill -INT "$HEY_PID" 2>/dev/null || true
wait "$HEY_PID" || fail "hey failed"
codes=$(hey_codes "$WORK/hey.txt")
case "$codes" in
  "200 " | "200 503 ") ;;
  *) cat "$WORK/hey.txt" >&2; fail "status codes [$codes] under HTTPS load: only 200 and 503 are allowed" ;;
esac
errors=$(sed -n '/^Error distribution/,$p' "$WORK/hey.txt" | grep '^ *\[' || true)
lost=$(grep -v -e 'connection refused' -e 'server closed idle connection' -e '": EOF$' \
  -e 'connection reset by peer' <<<"$errors" || true)
if [ -n "$lost" ] || log_has 'ended without a complete answer' || log_has 'cut at stop'; then
  cat "$WORK/hey.txt" >&2
  fail "requests lost at shutdown under HTTPS load: $lost"
fi
unavailable=$(hey_count "$WORK/hey.txt" 503)
echo "ok SIGTERM under HTTPS load: exit 0; $(hey_count "$WORK/hey.txt" 200) x 200, ${unavailable:-0} x 503, nothing lost"
echo "PASS tls.sh"
