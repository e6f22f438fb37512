#!/usr/bin/env bash
# loading.sh SERVE LOAD_GATE_SO: the daemon listens before its model is
# loaded. An LD_PRELOAD shim (tests/load_gate.c) holds the checkpoint's
# open() until a gate file exists, so the load lasts as long as the test
# needs: no timing assumption. Meanwhile: live 200, ready 503 overall and
# for the model, the model's routes 503 with Retry-After, /metrics 200 (model LOADING). The
# gate opened, the same daemon becomes ready and serves. A SIGTERM during
# the start-up load, and during a rescan's: each the usual stop after it.
set -euo pipefail
SERVE=${1:-}
GATE_SO=$2
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
NAME=$(basename "$MODEL")
GATE=$WORK/gate
# (the sanitizer build's runtime then does not come first: allowed)
DAEMON_ENV=("LOAD_GATE=$GATE" "LD_PRELOAD=$GATE_SO"
  "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")
launch_daemon --access-log text
DAEMON_ENV=()
poll 30 test -e "$GATE.waiting" || fail "the load never reached the checkpoint"
# the load is held: every answer below is of a loading daemon
[ "$(http_code "$URL/v2/health/live")" = 200 ] || fail "live while loading: not 200"
[ "$(http_code "$URL/healthz")" = 200 ] || fail "/healthz while loading: not 200"
[ "$(http_code "$URL/v2/health/ready")" = 503 ] || fail "ready while loading: not 503"
[ "$(http_code "$URL/readyz")" = 503 ] || fail "/readyz while loading: not 503"
[ "$(http_code "$URL/v2/models/$NAME/ready")" = 503 ] || fail "model ready while loading: not 503"
[ "$(http_code "$URL/v2/models/$NAME/versions/1/ready")" = 503 ] || fail "versioned model ready: not 503"
curl -s "$URL/v2/models/$NAME/ready" | jq -e '.ready == false' >/dev/null || fail "model ready body"
for p in /v2/models/$NAME /v2/models/$NAME/config /v1/models; do
  [ "$(http_code "$URL$p")" = 503 ] || fail "GET $p while loading: not 503"
done
# a scrape during a long load must not fail: /metrics answers, the model LOADING
curl -sf "$URL/metrics" >"$WORK/loading.prom" || fail "GET /metrics while loading: not 200"
grep -q "^comrope_model_state{model=\"$NAME\",version=\"1\",state=\"LOADING\"} 1" "$WORK/loading.prom" ||
  fail "comrope_model_state not LOADING while loading: $(grep model_state "$WORK/loading.prom")"
code=$(curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' -X POST -H 'Content-Type: image/png' \
  --data-binary @"$ROOT/tests/fixtures/images/rgb8.png" "$URL/v1/classify")
[ "$code" = 503 ] || fail "classify while loading: $code"
grep -qi '^retry-after: 1' "$WORK/headers" || fail "no Retry-After on a 503 while loading"
jq -e '.error == "the model is loading"' "$WORK/body" >/dev/null || fail "503 body: $(cat "$WORK/body")"
kill -0 "$DAEMON_PID" || fail "daemon gone while loading"
# open the gate: the same daemon loads, flips ready and serves
: >"$GATE"
poll 60 ready || fail "not ready after the load"
[ "$(http_code "$URL/v2/models/$NAME/ready")" = 200 ] || fail "model ready after load"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: image/png' \
  --data-binary @"$ROOT/tests/fixtures/images/rgb8.png" "$URL/v1/classify")
[ "$code" = 200 ] || fail "classify after load: $code"
awk '/listening on/ { l = NR } /loading model/ { m = NR } END { exit !(l && m && l < m) }' "$LOG" ||
  fail "no 'listening' line before the load"
# readiness answers 200 a moment before the line is written
listening_then_ready() { awk '/listening on/ { l = NR } /comrope-serve: ready$/ { r = NR } END { exit !(l && r && l < r) }' "$LOG"; }
poll 10 listening_then_ready ||
  fail "'ready' not logged after 'listening'"
stop_daemon

# SIGTERM while the model loads: the main thread is loading, not waiting for
# signals, and OpenBLAS's threads (started before main could block the
# signals) would take it and die of it (exit 143, no log line). It must be
# the usual stop: a drain once the load is over, exit 0.
rm -f "$GATE" "$GATE.waiting"
DAEMON_ENV=("LOAD_GATE=$GATE" "LD_PRELOAD=$GATE_SO"
  "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")
launch_daemon --access-log text
DAEMON_ENV=()
poll 30 test -e "$GATE.waiting" || fail "the second load never reached the checkpoint"
kill -TERM "$DAEMON_PID"
: >"$GATE"
wait_exit 60
[ "$EXIT_CODE" = 0 ] || fail "SIGTERM during a load: exit $EXIT_CODE, not 0 (143: killed by it)"
log_has "SIGTERM: draining" || fail "SIGTERM during a load: no drain in the log"
log_has "comrope-serve: stopped" || fail "SIGTERM during a load: no clean stop in the log"
echo "ok SIGTERM during a load: drained after it, exit 0"

# SIGTERM during a rescan's load (SIGHUP with two new models and a new
# version 2 of a serving z): a load cannot be interrupted, so the stop waits
# for it and says so, but loads no further model (it used to load every new
# one before it would drain) and retires nothing (z/1 would have gone for a
# z/2 never loaded, leaving z unserved through the drain).
REPO=$WORK/repo
mkdir -p "$REPO/z"
cp -r "$MODEL" "$REPO/a"
cp -r "$MODEL" "$REPO/z/1"
rm -f "$GATE.waiting"
: >"$GATE"
DAEMON_ENV=("LOAD_GATE=$GATE" "LD_PRELOAD=$GATE_SO"
  "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")
MODEL='' start_daemon --access-log text --model-repository "$REPO"
DAEMON_ENV=()
rm -f "$GATE" "$GATE.waiting"
cp -r "$MODEL" "$REPO/b"
cp -r "$MODEL" "$REPO/c"
cp -r "$MODEL" "$REPO/z/2"
kill -HUP "$DAEMON_PID"
poll 30 test -e "$GATE.waiting" || fail "the rescan's load never reached the checkpoint"
log_has "loading model b" || fail "the rescan did not begin with model b: $(tail -3 "$LOG")"
kill -TERM "$DAEMON_PID"
poll 30 log_has "stopping: waiting for the model load" || fail "no line saying the stop waits for the load"
: >"$GATE"
wait_exit 60
[ "$EXIT_CODE" = 0 ] || fail "SIGTERM during a rescan's load: exit $EXIT_CODE"
log_has "loading model c" && fail "a model loaded after SIGTERM (the rescan went on)"
log_has "model z version 1: unloading" && fail "z version 1 retired at the stop for a version 2 never loaded"
log_has "comrope-serve: stopped" || fail "SIGTERM during a rescan's load: no clean stop"
echo "ok SIGTERM during a rescan: the load under way finishes (logged), no further load, nothing retired, exit 0"

# A checkpoint rewritten in place (cp over it) during its load: tensors are
# read one by one, so with one of the same layout those read before the
# write came from the old file and the rest from the new one: a model of
# neither, served as ready. The load is held at the checkpoint's 10th read
# (LOAD_GATE_READ), the file rewritten, the gate opened: the load fails.
A=$ROOT/models/fashion-comrope-ld B=$ROOT/models/fashion-comrope-ld-28 C=$ROOT/models/study/fashion-comrope-ld
SAMPLE=$ROOT/models/samples/sneaker.png
logits() { "$PY" "$ROOT/tests/integration/repo_client.py" logits "$URL" "$1" "$SAMPLE"; }
same_logits() {
  "$PY" -c 'import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:3]); sys.exit(not (len(a)==len(b) and max(abs(x-y) for x,y in zip(a,b))<1e-3))' "$1" "$2"
}
MODEL=$B start_daemon --access-log off --model-name z
logits z >"$WORK/ref.b"
stop_daemon
mkdir -p "$WORK/mix"
cp "$A/config.json" "$A/model.safetensors" "$WORK/mix/"
rm -f "$GATE" "$GATE.waiting"
DAEMON_ENV=("LOAD_GATE=$GATE" "LOAD_GATE_READ=10" "LD_PRELOAD=$GATE_SO"
  "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")
MODEL=$WORK/mix launch_daemon --access-log off
poll 30 test -e "$GATE.waiting" || fail "the load never reached the checkpoint's 10th read"
cat "$B/model.safetensors" >"$WORK/mix/model.safetensors"
: >"$GATE"
gone_or_ready() { daemon_gone || ready; }
poll 30 gone_or_ready || fail "neither exited nor ready after the load"
daemon_gone || fail "a checkpoint rewritten during its load was served (its weights mixed from two files)"
wait_exit 5
[ "$EXIT_CODE" = 1 ] || fail "a checkpoint rewritten during its load: exit $EXIT_CODE, not 1"
log_has "model.safetensors: rewritten in place while loading" || fail "no line naming the rewrite"
echo "ok a checkpoint rewritten in place during the start-up load: exit 1 naming it, not a mixed model served"

# The same with a checkpoint of another layout (B's header one byte longer,
# its data one byte later; it loads on its own): the tensors read after the
# write are B's bytes at A's offsets, and one holds a NaN. The load failed
# naming that tensor, as if the checkpoint on disk were corrupt; the rewrite
# is what failed it.
"$PY" -c 'import struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
open(sys.argv[2], "wb").write(struct.pack("<Q", n + 1) + b[8:8 + n] + b" " + b[8 + n:])' \
  "$B/model.safetensors" "$WORK/shifted.safetensors"
cp "$A/model.safetensors" "$WORK/mix/"
rm -f "$GATE" "$GATE.waiting"
MODEL=$WORK/mix launch_daemon --access-log off
poll 30 test -e "$GATE.waiting" || fail "the load never reached the checkpoint's 10th read"
cat "$WORK/shifted.safetensors" >"$WORK/mix/model.safetensors"
: >"$GATE"
poll 30 daemon_gone || fail "a checkpoint rewritten during its load (another layout): no exit"
wait_exit 5
[ "$EXIT_CODE" = 1 ] || fail "a checkpoint rewritten during its load (another layout): exit $EXIT_CODE, not 1"
log_has "model.safetensors: rewritten in place while loading" ||
  fail "a rewrite of another layout blamed on the checkpoint: $(grep error "$LOG" | tail -1)"
echo "ok a checkpoint of another layout written in place during the load: the rewrite named, not a tensor"

# The same during a poll's reload: the copy loaded goes on serving, and the
# next poll loads the files as they are now (the failure is held against
# the files read, C then B, not against B alone: else B is never loaded).
mkdir -p "$WORK/prepo/z"
cp -r "$WORK/mix" "$WORK/prepo/z/1"
cp "$A/model.safetensors" "$WORK/prepo/z/1/"
: >"$GATE"
MODEL='' start_daemon --access-log off --model-repository "$WORK/prepo" --model-control-mode poll \
  --repository-poll-s 1
DAEMON_ENV=()
rm -f "$GATE" "$GATE.waiting"
cat "$C/model.safetensors" >"$WORK/prepo/z/1/model.safetensors"
poll 30 test -e "$GATE.waiting" || fail "the poll's reload never reached the checkpoint's 10th read"
cat "$B/model.safetensors" >"$WORK/prepo/z/1/model.safetensors"
: >"$GATE"
poll 30 log_has "rewritten in place while loading" || fail "the poll's reload of a rewritten checkpoint did not fail"
ready_lines() { [ "$(grep -c "model z version 1 ready" "$LOG")" -ge 2 ]; }
poll 30 ready_lines || fail "the next poll did not load the files as they are now"
logits z >"$WORK/polled"
same_logits "$WORK/ref.b" "$WORK/polled" || fail "z does not answer as the checkpoint now on disk"
stop_daemon
echo "ok a checkpoint rewritten in place during a poll's reload: the reload fails, the next poll loads it"
echo "loading: ok"
