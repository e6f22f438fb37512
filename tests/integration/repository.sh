#!/usr/bin/env bash
# repository.sh SERVE: the model repository (server/repository.h) against
# real daemons, the bundled model (ld) and a study model (ap) as content.
#  1. SIGHUP on a one-model daemon: it rescans and serves on (it used to
#     die of the signal); so does one that gets it while it reads its
#     config file, before its handler is set.
#  2. Two models at once: each answers what its one-model daemon answers;
#     a model's serve.conf (version policy specific:2,3, a batch limit; a "02" folder is no version)
#     over the global settings; no version asked: the highest; the
#     metadata lists every ready version; /v1/models/<m>/classify reaches
#     each model, /v1/classify the default, /v1/models lists them. Each
#     version's metrics and statistics count its own requests only.
#  3. Reload under load: the model's files replaced, SIGHUP; repo_client.py
#     keeps 4 connections busy throughout: zero failed requests, answers
#     of the old model and then of the new. Then a corrupt checkpoint:
#     the new one goes on serving, the index gives the reason, the
#     failure counter counts it; a SIGHUP on the same corrupt files tries
#     the load again (counted, logged); still zero failed requests.
#  4. A version change under poll: <name>/2 appears beside <name>/1 while
#     the load runs (latest:1): version 2 serves, version 1 is unloaded,
#     zero failed requests. load/unload are refused in poll mode. A
#     corrupt checkpoint under poll fails once: the polls after it do not
#     load the unchanged files again. A version 3 that fails to load:
#     version 2 is kept serving (index reason, log) until 3 loads; a
#     serve.conf broken then cured leaves its reason the kept one.
#  5. Explicit mode: only --load-model at start; load and unload through
#     the API (refused to a page of another origin (Origin), and with
#     allowed-hosts to one under a name rebound to the daemon (Host); a serve.conf with a daemon-only key: the load fails naming
#     file:line; a FIFO as serve.conf, config.json or preprocessor_config.json,
#     also under a loaded model: refused at once naming it, never waited
#     on, what serves serves on; 1025 versions under latest:1: the highest
#     alone loads; three newer ones published in turn: each retired
#     version's series leave /metrics, the failures counter keeps its
#     counts; their directories removed, a rescan drops their index
#     entries and comrope_model_state lines; 65 under all: the metadata lists each); an unload while a request is in flight (its body half
#     sent, so it holds the version) answers it with the unloaded model.
#  6. Model names: UTF-8 and quotes served as named; names not UTF-8 or
#     with control characters left out (said once); "stats" and names with
#     ',' left out, in the index saying why; promtool clean.
#  7. The repository's directory unreadable for a while (renamed away):
#     a rescan changes nothing (it unloaded every model), an explicit load
#     answers 503 naming the reason; logged when it starts and ends.
#  8. One model's directory unreadable for a while (its stat fails with
#     ELOOP, as with EIO or EACCES): that model is kept as it is (it was
#     unloaded as gone), a load of it answers 503 naming the reason;
#     logged when it starts and ends.
#  9. A scan of 8,000 versions (symlinks to one): the daemon's peak RSS
#     grows by less than 16 MiB (two paths of 4 KiB kept per version made
#     it 70 MB, at every rescan or poll). A load's body is held to
#     max-body-bytes, announced or chunked (413, nothing loaded).
#  Every wait is on observable state (index, metrics, log, files).
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
LD=$ROOT/models/fashion-comrope-ld
AP=$ROOT/models/study/fashion-comrope-ap
SAMPLE=$ROOT/models/samples/sneaker.png
CLIENT=$ROOT/tests/integration/repo_client.py
client() { "$PY" "$CLIENT" "$@"; }
index() { curl -sf -X POST "$URL/v2/repository/index"; }
# state NAME VERSION: the index's state of that version ("" if none)
state() { index | jq -r --arg n "$1" --arg v "$2" '.[] | select(.name == $n and .version == $v) | .state'; }
is_state() { [ "$(state "$1" "$2")" = "$3" ]; }
# copy_model SRC DST: DST appears at once, complete (rename)
copy_model() {
  rm -rf "$2.tmp"
  cp -r "$1" "$2.tmp"
  mv -T "$2.tmp" "$2"
}
# replace FILE SRC: FILE replaced at once (rename), as an operator's deploy does
replace() { cp "$2" "$1.tmp" && mv "$1.tmp" "$1"; }
# load_start NAME TAG REF...: repo_client.py load in the background
load_start() {
  local name=$1 tag=$2
  shift 2
  rm -f "$WORK/stop.$tag"
  # (python itself in the background, not a subshell running client(): the
  # exit trap's kill -9 reached only the subshell, and a client left behind
  # when a check failed spun on refused connections for good)
  "$PY" "$CLIENT" load "$URL" "$name" "$SAMPLE" "$WORK/stop.$tag" "$WORK/load.$tag.json" "$@" &
  OTHER_PIDS+=($!)
}
load_stop() {
  : >"$WORK/stop.$1"
  poll 60 test -s "$WORK/load.$1.json" || fail "the load client ($1) did not finish"
  cat "$WORK/load.$1.json"; echo
}
load_field() { jq -r "$2" "$WORK/load.$1.json"; }
# stat_of PATH FIELD: FIELD of GET /v2/models/PATH/stats (success.count: of inference_stats)
stat_of() {
  local f=$2
  case $f in success.* | fail.* | queue.*) f=inference_stats.$f ;; esac
  curl -sf "$URL/v2/models/$1/stats" | jq -r ".model_stats[0].$f"
}
infers() { metric 'comrope_requests_total{endpoint="v2_infer",code="200"}' || echo 0; }
infers_at_least() { [ "$(infers)" -ge "$1" ]; }
load_failures_are() { [ "$(metric "comrope_model_load_failures_total{model=\"$1\"}" || echo 0)" = "$2" ]; }
receiving() { [ "$(metric comrope_receiving_requests || echo 0)" -ge 1 ]; }
rescans_done() { [ "$(grep -c 'rescan done' "$LOG")" -ge "$1" ]; }
ready_lines_at_least() { [ "$(grep -c "model $1 version $2 ready" "$LOG")" -ge "$3" ]; }
# memory_of MODEL KIND: comrope_model_memory_bytes of MODEL's version 1 (fails when absent)
memory_of() { metric "comrope_model_memory_bytes{model=\"$1\",version=\"1\",kind=\"$2\"}"; }
no_memory_of() { ! memory_of "$1" weights >/dev/null && ! memory_of "$1" workspace >/dev/null; }
same_logits() {
  "$PY" -c 'import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:3]); sys.exit(not (len(a)==len(b) and max(abs(x-y) for x,y in zip(a,b))<1e-3))' "$1" "$2"
}

# --- references: each model alone, as --model serves it ----------------------
MODEL=$LD start_daemon --access-log off
client logits "$URL" fashion-comrope-ld "$SAMPLE" >"$WORK/ref.ld"
# 1. SIGHUP: a rescan, not a death
kill -HUP "$DAEMON_PID"
poll 30 log_has "SIGHUP: rescanning" || fail "no rescan logged after SIGHUP"
# what a SIGHUP does not reread is said (a key taken out of api-key-file
# stayed valid, silently, after a systemctl reload)
log_has "SIGHUP: rescanning .* (settings and api-key-file stay as read at start)" ||
  fail "the SIGHUP line does not say the settings stay: $(grep SIGHUP "$LOG")"
kill -0 "$DAEMON_PID" 2>/dev/null || fail "SIGHUP killed the daemon"
client logits "$URL" fashion-comrope-ld "$SAMPLE" >"$WORK/after_hup" || fail "no answer after SIGHUP"
same_logits "$WORK/ref.ld" "$WORK/after_hup" || fail "answers changed after a SIGHUP with unchanged files"
stop_daemon
# a SIGHUP while the daemon reads its settings, before its handler is set
# (a reload or a log rotation's, just after a restart): it ended the
# daemon (the signal's default action). The config file is a pipe held
# here, so the SIGHUP comes while the daemon waits on it: blocked in
# read(2) on the pipe, as its main thread's /proc/PID/syscall says
# (wchan, read before, is "0" under gVisor and some hardened kernels).
mkfifo "$WORK/hup.fifo"
"$SERVE" --config /dev/stdin --model "$ROOT/tests/fixtures/parity/comrope_ld_b2" --host 127.0.0.1 --port 0 \
  <"$WORK/hup.fifo" 2>"$WORK/hup.log" &
hup_pid=$!
OTHER_PIDS+=("$hup_pid")
exec 3>"$WORK/hup.fifo"
case $(uname -m) in x86_64) read_nr=0 ;; aarch64) read_nr=63 ;; *) read_nr= ;; esac
# reading_config: the daemon is in read(2) on a descriptor of the pipe (its stdin's)
reading_config() {
  local nr fd
  read -r nr fd _ <"/proc/$hup_pid/syscall" 2>/dev/null || return 1
  [ "$nr" = "$read_nr" ] && [ "$(readlink "/proc/$hup_pid/fd/$((fd))")" = "$(readlink "/proc/$hup_pid/fd/0")" ]
}
if [ -n "$read_nr" ] && read -r _ <"/proc/$hup_pid/syscall" 2>/dev/null; then
  poll 30 reading_config || fail "the daemon never blocked reading its config file"
  kill -HUP "$hup_pid"
  hup_said="ok a SIGHUP while the config is read is ignored"
else
  hup_said="skipped: a SIGHUP while the config is read: no readable /proc/PID/syscall, or read(2)'s number unknown on $(uname -m)"
fi
echo "access-log off" >&3
exec 3>&-
poll 30 grep -q 'comrope-serve: ready' "$WORK/hup.log" || fail "a SIGHUP at start: not ready: $(tail -3 "$WORK/hup.log")"
kill -TERM "$hup_pid"
rc=0
wait "$hup_pid" || rc=$?
[ "$rc" = 0 ] || fail "a SIGHUP at start: exit $rc after SIGTERM, not 0"
echo "$hup_said"
MODEL=$AP start_daemon --access-log off
client logits "$URL" fashion-comrope-ap "$SAMPLE" >"$WORK/ref.ap"
stop_daemon
same_logits "$WORK/ref.ld" "$WORK/ref.ap" && fail "the two models answer alike: the test could not tell them apart"
echo "ok SIGHUP rescans; references taken"

# --- 2. two models at once ---------------------------------------------------------
REPO=$WORK/repo
mkdir -p "$REPO"
copy_model "$LD" "$REPO/ld"
mkdir -p "$REPO/ap"
copy_model "$AP" "$REPO/ap/3"
copy_model "$LD" "$REPO/ap/2" # (ld's files as ap's version 2: tells the versions apart)
copy_model "$LD" "$REPO/ap/1"
# not a version: "02" would be version 2 a second time, loaded in turn with "2"
copy_model "$AP" "$REPO/ap/02"
# ap's own settings over the global ones: two of its three versions, its batch limit
printf 'version-policy specific:2,3\nmax-batch-size 3\n' >"$REPO/ap/serve.conf"
MODEL='' start_daemon --model-repository "$REPO" --model-name ld --access-log off
client logits "$URL" ld "$SAMPLE" >"$WORK/two.ld"
[ "$(grep -c "model ap version 2 ready" "$LOG")" = 1 ] ||
  fail "ap version 2 loaded $(grep -c "model ap version 2 ready" "$LOG") times (its '02' directory is not a version)"
# each model version's metrics are its own: one request to ld, none to ap
[ "$(stat_of ld success.count)" = 1 ] || fail "ld's stats: $(curl -s "$URL/v2/models/ld/stats")"
[ "$(stat_of ld execution_count)" = 1 ] || fail "ld's stats: $(curl -s "$URL/v2/models/ld/stats")"
{ [ "$(stat_of ap success.count)" = 0 ] && [ "$(stat_of ap execution_count)" = 0 ] &&
  [ "$(stat_of ap/versions/2 inference_count)" = 0 ]; } ||
  fail "ap's stats count ld's request: $(curl -s "$URL/v2/models/ap/stats")"
[ "$(metric 'comrope_requests_total{endpoint="v2_infer",code="200",model="ld",version="1"}')" = 1 ] ||
  fail "ld's request not counted as ld's"
[ "$(metric 'comrope_requests_total{endpoint="v2_infer",model="ap"}' || echo 0)" = 0 ] ||
  fail "ld's request counted as ap's"
{ [ "$(metric 'comrope_batch_images_count{model="ld",version="1"}')" = 1 ] &&
  [ "$(metric 'comrope_batch_images_count{model="ap"}')" = 0 ] &&
  [ "$(metric 'comrope_queue_wait_seconds_count{model="ap"}')" = 0 ] &&
  [ "$(metric 'comrope_request_duration_seconds_count{endpoint="v2_infer",model="ap"}')" = 0 ]; } ||
  fail "batch/queue/latency series mix the models: $(curl -s "$URL/metrics" | grep -E '^comrope_(batch_images|queue_wait_seconds|request_duration_seconds)_count')"
for mv in 'model="ld",version="1"' 'model="ap",version="2"' 'model="ap",version="3"'; do
  [ "$(metric "comrope_model_info{$mv}")" = 1 ] || fail "comrope_model_info lacks $mv"
done
[ "$(metric comrope_model_info)" = 3 ] || fail "comrope_model_info: not one series per loaded version"
if command -v promtool >/dev/null; then
  curl -sf "$URL/metrics" >"$WORK/two.metrics"
  out=$(promtool check metrics <"$WORK/two.metrics" 2>&1) || fail "promtool: $out"
  [ -z "$out" ] || fail "promtool printed: $out"
fi
client logits "$URL" ap "$SAMPLE" >"$WORK/two.ap"
same_logits "$WORK/ref.ld" "$WORK/two.ld" || fail "ld in the repository answers unlike ld alone"
same_logits "$WORK/ref.ap" "$WORK/two.ap" || fail "ap (its highest version, 3) answers unlike ap alone"
client logits "$URL" ap/versions/2 "$SAMPLE" >"$WORK/two.ap2"
same_logits "$WORK/ref.ld" "$WORK/two.ap2" || fail "ap version 2 does not answer with its own files"
{ [ "$(stat_of ap/versions/2 success.count)" = 1 ] && [ "$(stat_of ap/versions/3 success.count)" = 1 ] &&
  [ "$(stat_of ap success.count)" = 1 ] && [ "$(stat_of ld success.count)" = 1 ]; } ||
  fail "stats not per version: $(curl -s "$URL/v2/models/ap/versions/2/stats") $(curl -s "$URL/v2/models/ap/stats")"
# Triton's scopes: a model's stats list each ready version (highest first),
# a version's only itself, /v2/models/stats every model's every version
[ "$(curl -sf "$URL/v2/models/ap/stats" | jq -c '[.model_stats[] | [.name, .version, .inference_stats.success.count]]')" = \
  '[["ap","3",1],["ap","2",1]]' ] || fail "ap's stats do not list both versions: $(curl -s "$URL/v2/models/ap/stats")"
[ "$(curl -sf "$URL/v2/models/ap/versions/2/stats" | jq -c '[.model_stats[] | [.name, .version]]')" = '[["ap","2"]]' ] ||
  fail "ap version 2's stats: $(curl -s "$URL/v2/models/ap/versions/2/stats")"
[ "$(curl -sf "$URL/v2/models/stats" | jq -c '[.model_stats[] | [.name, .version, .inference_stats.success.count]]')" = \
  '[["ap","3",1],["ap","2",1],["ld","1",1]]' ] || fail "all models' stats: $(curl -s "$URL/v2/models/stats")"
[ "$(curl -sf "$URL/v2/models/ap" | jq -r '.versions[0]')" = 3 ] || fail "ap's metadata does not give version 3"
# the metadata lists every ready version (as Triton and KServe do), from any version's route
[ "$(curl -sf "$URL/v2/models/ap" | jq -c .versions)" = '["3","2"]' ] ||
  fail "ap's metadata versions: $(curl -s "$URL/v2/models/ap")"
[ "$(curl -sf "$URL/v2/models/ap/versions/2" | jq -c .versions)" = '["3","2"]' ] ||
  fail "ap version 2's metadata versions: $(curl -s "$URL/v2/models/ap/versions/2")"
[ "$(curl -sf "$URL/v2/models/ld" | jq -c .versions)" = '["1"]' ] || fail "ld's metadata versions"
# /v1 reaches every model: /v1/models/<m>[/versions/<v>]/classify; /v1/classify the default (ld, by
# --model-name: not the first by name, so that the list's order below tells "default first" from "by name")
v1() { curl -sf -H 'Content-Type: image/png' --data-binary @"$SAMPLE" "$URL/v1$1/classify?return_logits=true"; }
v1 /models/ap >"$WORK/v1.ap" || fail "/v1/models/ap/classify failed"
[ "$(jq -r .model "$WORK/v1.ap")" = ap ] || fail "/v1/models/ap/classify: $(cat "$WORK/v1.ap")"
jq .predictions[0].logits "$WORK/v1.ap" >"$WORK/v1.ap.logits"
same_logits "$WORK/ref.ap" "$WORK/v1.ap.logits" || fail "/v1/models/ap/classify does not answer as ap"
v1 /models/ap/versions/2 | jq .predictions[0].logits >"$WORK/v1.ap2.logits"
same_logits "$WORK/ref.ld" "$WORK/v1.ap2.logits" || fail "/v1/models/ap/versions/2/classify does not answer as ap version 2"
v1 /models/ld | jq .predictions[0].logits >"$WORK/v1.ld.logits"
same_logits "$WORK/ref.ld" "$WORK/v1.ld.logits" || fail "/v1/models/ld/classify does not answer as ld"
v1 "" | jq -r .model >"$WORK/v1.default.model"
[ "$(cat "$WORK/v1.default.model")" = ld ] || fail "/v1/classify does not serve the default model (ld)"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H 'Content-Type: image/png' --data-binary @"$SAMPLE" "$URL/v1/models/nope/classify")
{ [ "$code" = 404 ] && jq -e '.error | contains("nope")' "$WORK/body" >/dev/null; } ||
  fail "/v1/models/nope/classify: $code $(cat "$WORK/body") (want 404 naming it)"
[ "$(curl -sf "$URL/v1/models" | jq -c '[.models[].name]')" = '["ld","ap"]' ] ||
  fail "/v1/models does not list every model: $(curl -s "$URL/v1/models")"
[ "$(metric 'comrope_requests_total{endpoint="v1_classify",code="200",model="ld",version="1"}')" = 2 ] ||
  fail "/v1/models/ld/classify not counted as ld's"
[ "$(http_code "$URL/v2/models/ap/versions/3/ready")" = 200 ] || fail "ap version 3 not ready"
[ "$(http_code "$URL/v2/models/ap/versions/1/ready")" = 404 ] || fail "ap version 1 (not in its policy) not 404"
# a version is named in decimal, as its directory: not "+2", "02" or " 2"
for v in +2 02 %202; do
  [ "$(http_code "$URL/v2/models/ap/versions/$v/ready")" = 404 ] || fail "ap version '$v' routed as version 2"
done
# the binary extension's header length is digits, not what strtoull takes
for h in +5 -1; do
  code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H "Inference-Header-Content-Length: $h" \
    -H 'Content-Type: application/octet-stream' --data-binary '{"inputs": []}' "$URL/v2/models/ld/infer")
  { [ "$code" = 400 ] && jq -e '.error | contains("Inference-Header-Content-Length")' "$WORK/body" >/dev/null; } ||
    fail "Inference-Header-Content-Length '$h': $code $(cat "$WORK/body")"
done
# one past what strtoull holds: the error names the length sent, not ULLONG_MAX
h=99999999999999999999
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H "Inference-Header-Content-Length: $h" \
  -H 'Content-Type: application/octet-stream' --data-binary '{"inputs": []}' "$URL/v2/models/ld/infer")
{ [ "$code" = 400 ] && jq -e --arg h "$h" '.error | contains($h + " is larger than the body")' "$WORK/body" >/dev/null; } ||
  fail "Inference-Header-Content-Length '$h': $code $(cat "$WORK/body")"
[ "$(curl -sf "$URL/v2/models/ap/config" | jq -r .max_batch_size)" = 3 ] || fail "ap's serve.conf batch limit not applied"
[ "$(curl -sf "$URL/v2/models/ld/config" | jq -r .max_batch_size)" = 8 ] || fail "ld does not keep the global batch limit"
# Triton's config names the version policy in force: ap's own, ld the global
policy=$(curl -sf "$URL/v2/models/ap/config" | jq -c .version_policy)
[ "$policy" = '{"specific":{"versions":[2,3]}}' ] || fail "ap's config version_policy: $policy (serve.conf: specific:2,3)"
policy=$(curl -sf "$URL/v2/models/ld/config" | jq -c .version_policy)
[ "$policy" = '{"latest":{"num_versions":1}}' ] || fail "ld's config version_policy: $policy (global: latest:1)"
{ is_state ld 1 READY && is_state ap 3 READY && is_state ap 2 READY && [ -z "$(state ap 1)" ]; } ||
  fail "index: $(index)"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/ap/unload")
{ [ "$code" = 400 ] && jq -e '.error | contains("\"ap\"")' "$WORK/body" >/dev/null; } ||
  fail "unload in none mode: $code $(cat "$WORK/body") (want 400 naming the model)"
echo "ok two models at once, each its own answers"

# --- 3. reload under load: SIGHUP with changed files, then a corrupt one ------------------
load_start ld reload "$WORK/ref.ld" "$WORK/ref.ap"
poll 60 infers_at_least 20 ||
  fail "the load never reached the daemon"
replace "$REPO/ld/model.safetensors" "$AP/model.safetensors"
replace "$REPO/ld/config.json" "$AP/config.json"
kill -HUP "$DAEMON_PID"
poll 60 ready_lines_at_least ld 1 2 || fail "ld was not reloaded"
before=$(infers)
poll 60 infers_at_least $((before + 20)) ||
  fail "no load after the swap"
client logits "$URL" ld "$SAMPLE" >"$WORK/swapped"
same_logits "$WORK/ref.ap" "$WORK/swapped" || fail "after the reload ld does not answer with the new files"
# a corrupt checkpoint: the loaded copy goes on serving, the index says why
head -c 1000 "$AP/model.safetensors" >"$WORK/corrupt"
replace "$REPO/ld/model.safetensors" "$WORK/corrupt"
kill -HUP "$DAEMON_PID"
poll 60 load_failures_are ld 1 ||
  fail "no load failure counted for the corrupt checkpoint"
reason=$(index | jq -r '.[] | select(.name == "ld" and .version == "1") | .reason')
{ [ -n "$reason" ] && [ "$(state ld 1)" = READY ]; } || fail "index after a corrupt checkpoint: $(index)"
poll 10 log_has "model ld version 1 failed to load (the loaded copy goes on serving)" || fail "corrupt load not logged"
# the same corrupt files at the next SIGHUP: tried again (the operator asks:
# the cause may have been a passing one), counted and logged again, the
# loaded copy still serving (a poll leaves them: part 4)
poll 30 rescans_done 2 || fail "no 'rescan done' after the second SIGHUP"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 3 || fail "no 'rescan done' after the third SIGHUP"
load_failures_are ld 2 ||
  fail "unchanged corrupt files not tried again on SIGHUP: $(metric comrope_model_load_failures_total)"
[ "$(grep -c 'model ld version 1 failed to load (the loaded copy goes on serving)' "$LOG")" = 2 ] ||
  fail "the retried corrupt load not logged again"
[ "$(state ld 1)" = READY ] || fail "index after the retried corrupt load: $(index)"
client logits "$URL" ld "$SAMPLE" >"$WORK/kept"
same_logits "$WORK/ref.ap" "$WORK/kept" || fail "the corrupt checkpoint changed the answers"
load_stop reload
[ "$(load_field reload .failed)" = 0 ] || fail "failed requests during the reload: $(cat "$WORK/load.reload.json")"
{ [ "$(load_field reload '.matched[0]')" -ge 1 ] && [ "$(load_field reload '.matched[1]')" -ge 1 ] &&
  [ "$(load_field reload .other)" = 0 ]; } || fail "answers not old-then-new: $(cat "$WORK/load.reload.json")"
echo "ok reload under load: $(load_field reload .requests) requests, 0 failed; corrupt kept the old: $reason"
stop_daemon

# --- 4. a version change under poll ----------------------------------------------------
REPO=$WORK/repo_poll
mkdir -p "$REPO/v"
copy_model "$LD" "$REPO/v/1"
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode poll --repository-poll-s 1 --access-log off
load_start v poll "$WORK/ref.ld" "$WORK/ref.ap"
poll 60 infers_at_least 20 ||
  fail "the load never reached the daemon"
copy_model "$AP" "$REPO/v/2"
poll 60 is_state v 2 READY || fail "version 2 never became ready: $(index)"
poll 60 is_state v 1 UNAVAILABLE || fail "version 1 not unloaded under latest:1: $(index)"
[ "$(http_code "$URL/v2/models/v/versions/1/ready")" = 404 ] || fail "version 1 still routed"
before=$(infers)
poll 60 infers_at_least $((before + 20)) ||
  fail "no load after the version change"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/v/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("\"v\"")' "$WORK/body" >/dev/null; } ||
  fail "load in poll mode: $code $(cat "$WORK/body")"
load_stop poll
[ "$(load_field poll .failed)" = 0 ] || fail "failed requests during the version change: $(cat "$WORK/load.poll.json")"
{ [ "$(load_field poll '.matched[0]')" -ge 1 ] && [ "$(load_field poll '.matched[1]')" -ge 1 ] &&
  [ "$(load_field poll .other)" = 0 ]; } || fail "answers not version 1 then 2: $(cat "$WORK/load.poll.json")"
echo "ok version change under poll: $(load_field poll .requests) requests, 0 failed"
# A corrupt checkpoint under poll: it fails once, and the polls after it do
# not load (log, count) the same files again every repository-poll-s. A
# model w added after the failure was counted is loaded by a later poll,
# which sees v (sorted first) before w: once w is ready, a poll has passed
# over v's unchanged files.
head -c 1000 "$AP/model.safetensors" >"$WORK/corrupt"
replace "$REPO/v/2/model.safetensors" "$WORK/corrupt"
poll 60 load_failures_are v 1 || fail "no load failure counted for the corrupt checkpoint under poll"
copy_model "$LD" "$REPO/w"
poll 60 is_state w 1 READY || fail "model w never loaded under poll: $(index)"
load_failures_are v 1 ||
  fail "a poll loaded unchanged corrupt files again: $(metric comrope_model_load_failures_total)"
[ "$(grep -c 'model v version 2 failed to load' "$LOG")" = 1 ] || fail "a poll logged the same failed load again"
[ "$(state v 2)" = READY ] || fail "index after the corrupt checkpoint under poll: $(index)"
client logits "$URL" v "$SAMPLE" >"$WORK/kept_poll"
same_logits "$WORK/ref.ap" "$WORK/kept_poll" || fail "the corrupt checkpoint under poll changed v's answers"
echo "ok a poll does not retry a failed load on unchanged files (a SIGHUP does: part 3)"
# A version 3 that fails to load (its checkpoint corrupt): version 2 goes on
# serving, kept, the default for requests without a version, until version
# 3's files are cured (it was retired as the policy no longer selects it:
# nothing served v).
mkdir -p "$WORK/v3"
cp "$LD"/*.json "$WORK/v3/"
cp "$WORK/corrupt" "$WORK/v3/model.safetensors"
copy_model "$WORK/v3" "$REPO/v/3"
poll 60 load_failures_are v 2 || fail "no load failure counted for the corrupt version 3"
reason=$(index | jq -r '.[] | select(.name == "v" and .version == "2") | .reason')
{ [ "$(state v 3)" = UNAVAILABLE ] && [ "$(state v 2)" = READY ] &&
  [[ $reason == "kept serving: version 3 that its version-policy selects failed to load"* ]]; } ||
  fail "index after a corrupt version 3: $(index)"
log_has "model v version 2: kept serving" || fail "keeping version 2 not logged"
client logits "$URL" v "$SAMPLE" >"$WORK/kept_v2"
same_logits "$WORK/ref.ap" "$WORK/kept_v2" || fail "without a version, v is not answered by the kept version 2"
# v's serve.conf broken, then cured (version 3 still corrupt): version 2's
# reason stays the kept one (it is never reloaded: the serve.conf error
# written there stayed after its cure); version 3's says each error
reason_of() { index | jq -r --arg v "$1" '.[] | select(.name == "v" and .version == $v) | .reason'; }
reason_has() { [[ $(reason_of "$1") == *"$2"* ]]; }
echo 'no-such-key 1' >"$WORK/serve.conf.bad"
replace "$REPO/v/serve.conf" "$WORK/serve.conf.bad"
poll 60 reason_has 3 no-such-key || fail "v's broken serve.conf not said: $(index)"
rm "$REPO/v/serve.conf"
poll 60 reason_has 3 "header length" || fail "v/3 not tried again once serve.conf was cured: $(index)"
{ [ "$(reason_of 2)" = "$reason" ] && is_state v 2 READY; } ||
  fail "kept version 2's reason after serve.conf was broken then cured: $(reason_of 2)"
replace "$REPO/v/3/model.safetensors" "$LD/model.safetensors"
poll 60 is_state v 3 READY || fail "version 3 never loaded once cured: $(index)"
[ "$(http_code "$URL/v2/models/v/versions/2/ready")" = 404 ] || fail "version 2 still routed once 3 serves"
echo "ok a new version that fails to load keeps the one that served: $reason"
stop_daemon

# --- 5. explicit: load, unload with a request in flight --------------------------------
REPO=$WORK/repo_explicit
mkdir -p "$REPO"
copy_model "$LD" "$REPO/ld"
copy_model "$AP" "$REPO/ap"
# load-model naming a model the repository lacks (a typo): exit 2 (a bad
# setting) naming it and the models there, before any load; it was served
# without it, and ready, as readiness waits only for models that exist
rc=0
timeout 60 "$SERVE" --model-repository "$REPO" --model-control-mode explicit --load-model ld,lx \
  --host 127.0.0.1 --port 0 2>"$WORK/absent.log" || rc=$?
[ "$rc" = 2 ] || fail "load-model naming an absent model: exit $rc, not 2: $(tail -3 "$WORK/absent.log")"
grep -q 'load-model: model-repository .* has no model "lx" (models there: ap ld)' "$WORK/absent.log" ||
  fail "load-model naming an absent model: $(tail -3 "$WORK/absent.log")"
grep -q "version 1 ready" "$WORK/absent.log" && fail "a model loaded before the absent one was refused"
# (empty names in the list are skipped; part 8 loads with '*'); the
# default model (model-name) is ap, not loaded at first
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode explicit --load-model ',ld,' \
  --model-name ap --access-log off --allowed-hosts models.example
is_state ld 1 READY || fail "ld not loaded at start: $(index)"
# /v1/models lists what serves while the default model does not (it was a
# 503, "no model is loaded", with ld serving: the console had no model)
[ "$(curl -sf "$URL/v1/models" | jq -c '[.models[].name]')" = '["ld"]' ] ||
  fail "/v1/models with the default model (ap) not loaded: $(curl -s -w ' %{http_code}' "$URL/v1/models")"
[ "$(index | jq -r '.[] | select(.name == "ap") | .state')" = UNAVAILABLE ] || fail "ap loaded without asking: $(index)"
[ "$(http_code "$URL/v2/models/ap")" = 404 ] || fail "ap routed before its load"
# a page of another origin (a form with a text/plain body: no preflight, no
# api-key-file) may not load or unload (it unloaded ld: cross-site request
# forgery); the daemon's own origin and clients sending no Origin may
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H 'Origin: http://evil.example' -H 'Content-Type: text/plain' \
  --data 'x=1' "$URL/v2/repository/models/ld/unload")
{ [ "$code" = 403 ] && jq -e '.error | contains("\"http://evil.example\" is another origin")' "$WORK/body" >/dev/null; } ||
  fail "a cross-site unload: $code $(cat "$WORK/body")"
is_state ld 1 READY || fail "a cross-site unload unloaded ld: $(index)"
# origin_load ORIGIN [HEADER]...: the status of a load of an unknown model
# (404 past the Origin check, 403 refused by it)
origin_load() {
  local origin=$1
  shift
  curl -s -o "$WORK/body" -w '%{http_code}' -H "Origin: $origin" "$@" -X POST "$URL/v2/repository/models/nope/load"
}
# the daemon's own origin, its default port named on either side (nginx's
# Host $host:$server_port), or the X-Forwarded-Host of a proxy that
# rewrites Host
for c in "http://127.0.0.1:$PORT" "http://localhost|Host: localhost:80" "http://localhost:80|Host: localhost" \
  "http://localhost|Host: localhost:80 " \
  "https://ml.example.com|X-Forwarded-Host: ml.example.com" "https://ml.example.com|X-Forwarded-Host: ml.example.com:443, proxy"; do
  origin=${c%%|*} header=${c#*|}
  if [ "$header" = "$c" ]; then code=$(origin_load "$origin"); else code=$(origin_load "$origin" -H "$header"); fi
  [ "$code" = 404 ] || fail "a load from the daemon's own origin ($c): $code $(cat "$WORK/body")"
done
# a port that is not the scheme's default, another forwarded host: refused
for c in "http://localhost:443|Host: localhost" "https://localhost|Host: localhost:80" \
  "http://127.0.0.1:1|Host: 127.0.0.1" "https://ml.example.com|X-Forwarded-Host: evil.example, ml.example.com"; do
  code=$(origin_load "${c%%|*}" -H "${c#*|}")
  [ "$code" = 403 ] || fail "a load from another origin ($c): $code $(cat "$WORK/body")"
done
# a page whose name its DNS then answers with the daemon's address (DNS
# rebinding) is same-origin for its browser: its Origin equals its Host,
# so the Origin check passes it (it unloaded ld). allowed-hosts refuses
# another Host on every route: 421 naming it. An allowed name (any port,
# any case), an IP address (every request above), localhost and no Host
# (HTTP/1.0) are served.
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H 'Host: attacker.example' -H 'Origin: http://attacker.example' \
  -H 'Content-Type: text/plain' --data 'x=1' "$URL/v2/repository/models/ld/unload")
{ [ "$code" = 421 ] &&
  jq -e '.error | contains("Host \"attacker.example\" is not in allowed-hosts")' "$WORK/body" >/dev/null; } ||
  fail "a rebound page's unload: $code $(cat "$WORK/body")"
is_state ld 1 READY || fail "a rebound page's unload unloaded ld: $(index)"
[ "$(http_code -H "Host: attacker.example:$PORT" "$URL/metrics")" = 421 ] || fail "a rebound page read /metrics"
code=$(origin_load "http://Models.Example:$PORT" -H "Host: Models.Example:$PORT")
[ "$code" = 404 ] || fail "a load under an allowed name: $code $(cat "$WORK/body")"
[ "$(http_code -0 -H 'Host:' "$URL/v2/health/ready")" = 200 ] || fail "HTTP/1.0 with no Host refused"
[ "$(metric 'comrope_request_failures_total{reason="misdirected"}')" = 2 ] ||
  fail "misdirected: $(metric 'comrope_request_failures_total{reason="misdirected"}'), not 2"
# the cross-site unload and the four loads from another origin (in "other" before)
[ "$(metric 'comrope_request_failures_total{reason="forbidden"}')" = 5 ] ||
  fail "forbidden: $(metric 'comrope_request_failures_total{reason="forbidden"}'), not 5"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/nope/load")
{ [ "$code" = 404 ] && jq -e '.error | contains("\"nope\"")' "$WORK/body" >/dev/null; } ||
  fail "load of an unknown model: $code $(cat "$WORK/body")"
# a name the scan leaves out ("stats": the route of every model's statistics)
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/stats/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("\"stats\" cannot be served")' "$WORK/body" >/dev/null; } ||
  fail "load of a model named stats: $code $(cat "$WORK/body")"
# a settings file with a key a model cannot set: the load fails, naming the file and line
mkdir -p "$REPO/bad"
printf '# ok\nport 9\n' >"$REPO/bad/serve.conf"
copy_model "$LD" "$REPO/bad/1"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/bad/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("bad/serve.conf:2")' "$WORK/body" >/dev/null; } ||
  fail "load with a bad serve.conf: $code $(cat "$WORK/body")"
index | jq -e '.[] | select(.name == "bad" and .version == "1") | .reason | contains("serve.conf:2")' >/dev/null ||
  fail "the index does not say why bad failed: $(index)"
ready || fail "a failed explicit load made the daemon unready"
# a FIFO as serve.conf: refused at once (its open blocked the control
# thread for good: no load, unload or rescan after it, a stop that hung)
mkdir -p "$REPO/fifo"
mkfifo "$REPO/fifo/serve.conf"
copy_model "$LD" "$REPO/fifo/1"
code=$(curl -s -m 20 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/fifo/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("not a regular file")' "$WORK/body" >/dev/null; } ||
  fail "load with a FIFO as serve.conf: $code $(cat "$WORK/body")"
# a FIFO as config.json or preprocessor_config.json: the load fails at once
# naming the file and what it is (config.json was taken for missing after
# a stat, and its open, swapped in after that stat, blocked the control
# thread as serve.conf's did; a FIFO preprocessor config was taken for
# none: the model served with preprocessing not its own); ld serves on
for f in config.json preprocessor_config.json; do
  m=fifo_${f%%.*}
  copy_model "$LD" "$REPO/$m"
  rm -f "$REPO/$m/$f"
  mkfifo "$REPO/$m/$f"
  code=$(curl -s -m 20 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/$m/load")
  { [ "$code" = 400 ] && jq -e --arg why "$m/$f: is a FIFO, not a regular file" '.error | contains($why)' \
    "$WORK/body" >/dev/null; } || fail "load with a FIFO as $f: $code $(cat "$WORK/body")"
done
client logits "$URL" ld "$SAMPLE" >"$WORK/fifo.ld" || fail "ld does not answer after the FIFO loads"
same_logits "$WORK/ref.ld" "$WORK/fifo.ld" || fail "ld answers otherwise after the FIFO loads"
# 1025 versions under latest:1: only the highest loads (the policy was
# judged against the first 1024 in readdir's order, so the highest of those
# loaded too when a higher one was listed after them). On tmpfs where there
# is one: it lists a directory newest first, so made from 1025 down, 1025
# is listed last, past the first 1024.
MANY=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d -p "$WORK")
trap 'rm -rf "$MANY"; cleanup' EXIT
# versions DIR N: N versions of the tiny parity model in DIR, made from N down
versions() {
  "$PY" - "$1" "$2" "$ROOT/tests/fixtures/parity/comrope_ld_b2" <<'PYEOF'
import os, sys
for v in range(int(sys.argv[2]), 0, -1):
    d = os.path.join(sys.argv[1], str(v))
    os.mkdir(d)
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(sys.argv[3], f), os.path.join(d, f))
PYEOF
}
versions "$MANY" 1025
ln -s "$MANY" "$REPO/many"
[ "$(http_code -X POST "$URL/v2/repository/models/many/load")" = 200 ] || fail "load of many not 200"
loaded=$(index | jq -c '[.[] | select(.name == "many" and .state == "READY") | .version]')
[ "$loaded" = '["1025"]' ] || fail "latest:1 of 1025 versions loaded versions $loaded"
# A new version published three times, one after another (latest:1): each
# retired version's series leave /metrics (they were kept forever, ~110 KB
# each, and listed in every scrape), while comrope_request_failures_total
# keeps what they counted. Each version answers one bad request (400,
# counted in its series).
bad_requests() { metric 'comrope_request_failures_total{reason="bad_request"}'; }
# (comrope_model_state is the index's: a retired version is UNAVAILABLE there)
series_of() { curl -sf "$URL/metrics" | grep -v '^comrope_model_state' | grep -c "model=\"many\",version=\"$1\"" || true; }
no_series_of() { [ "$(series_of "$1")" = 0 ]; }
for v in 1025 1026 1027 1028; do
  if [ "$v" != 1025 ]; then
    mkdir "$MANY/$v"
    ln -s "$ROOT/tests/fixtures/parity/comrope_ld_b2/"{config.json,model.safetensors} "$MANY/$v/"
    [ "$(http_code -X POST "$URL/v2/repository/models/many/load")" = 200 ] || fail "load of many $v not 200"
    is_state many "$v" READY || fail "many $v not READY after its load: $(index)"
    poll 30 no_series_of $((v - 1)) ||
      fail "version $((v - 1)) unloaded, its series still in /metrics: $(series_of $((v - 1))) lines"
    [ "$(bad_requests)" -ge "$failed" ] || fail "bad_request failures went from $failed to $(bad_requests)"
  fi
  [ "$(http_code -H 'Content-Type: application/json' -d '{}' "$URL/v2/models/many/infer")" = 400 ] || fail "a bad request to many $v not 400"
  [ "$(series_of "$v")" -gt 0 ] || fail "version $v served, no series of it in /metrics"
  failed=$(bad_requests)
done
if command -v promtool >/dev/null; then
  curl -sf "$URL/metrics" >"$WORK/retired.metrics"
  out=$(promtool check metrics <"$WORK/retired.metrics" 2>&1) || fail "promtool after versions retired: $out"
fi
echo "ok a retired version's series leave /metrics; the failures counter kept its $failed bad requests"
# The retired versions' directories removed: a rescan drops their index
# entries and comrope_model_state lines (each version ever seen kept ~1 KiB
# and four lines for ever: 8,760 a year at a version an hour). The one on
# disk and serving keeps its own.
state_lines() { curl -sf "$URL/metrics" | grep -c "^comrope_model_state{model=\"many\",version=\"$1\"" || true; }
for v in 1025 1026 1027; do
  poll 30 is_state many "$v" UNAVAILABLE || fail "many $v not UNAVAILABLE once retired: $(index)"
  rm -r "${MANY:?}/$v"
done
[ "$(http_code -X POST "$URL/v2/repository/models/many/load")" = 200 ] || fail "rescan (load) of many not 200"
for v in 1025 1026 1027; do
  [ -z "$(state many "$v")" ] || fail "many $v, its directory removed, still in the index: $(index)"
  [ "$(state_lines "$v")" = 0 ] || fail "many $v, its directory removed, has $(state_lines "$v") comrope_model_state lines"
done
is_state many 1028 READY || fail "many 1028 not READY after the rescan: $(index)"
[ "$(state_lines 1028)" = 4 ] || fail "many 1028 has $(state_lines 1028) comrope_model_state lines, not 4"
if command -v promtool >/dev/null; then
  curl -sf "$URL/metrics" >"$WORK/forgotten.metrics"
  out=$(promtool check metrics <"$WORK/forgotten.metrics" 2>&1) || fail "promtool after versions forgotten: $out"
fi
echo "ok the versions whose directories are gone leave the index and comrope_model_state"
[ "$(http_code -X POST "$URL/v2/repository/models/many/unload")" = 200 ] || fail "unload of many not 200"
rm "$REPO/many"
# 65 versions under "all": the metadata lists every one (it listed 64)
mkdir "$REPO/all65"
versions "$REPO/all65" 65
echo 'version-policy all' >"$REPO/all65/serve.conf"
[ "$(http_code -X POST "$URL/v2/repository/models/all65/load")" = 200 ] || fail "load of all65 not 200"
listed=$(curl -sf "$URL/v2/models/all65" | jq -c '[(.versions | length), .versions[0]]')
[ "$listed" = '[65,"65"]' ] || fail "the metadata of 65 ready versions lists [count, first] $listed"
[ "$(http_code -X POST "$URL/v2/repository/models/all65/unload")" = 200 ] || fail "unload of all65 not 200"
rm -r "$REPO/all65"
[ "$(http_code -X POST "$URL/v2/repository/models/ap/load")" = 200 ] || fail "load ap not 200"
is_state ap 1 READY || fail "ap not READY after its load: $(index)"
# what ap holds, as its load counted it: its weights (within 10 % of its
# checkpoint: fp32 parameters and their packed copies of the GEMMs' share),
# its workspaces (> 0), under the bound the loads share; the
# ready line says them too
weights=$(memory_of ap weights) || fail "no weights gauge for ap: $(curl -s "$URL/metrics" | grep memory)"
file=$(stat -c %s "$REPO/ap/model.safetensors")
{ [ $((weights * 10)) -ge $((file * 9)) ] && [ $((weights * 10)) -le $((file * 11)) ]; } ||
  fail "ap's weights gauge $weights, its checkpoint $file bytes: not within 10 %"
workspace=$(memory_of ap workspace) || fail "no workspace gauge for ap"
limit=$(metric comrope_memory_limit_bytes) || fail "no comrope_memory_limit_bytes"
{ [ "$workspace" -gt 0 ] && [ $((weights + workspace)) -lt "$limit" ]; } ||
  fail "ap's workspace gauge $workspace, the limit $limit"
log_has "model ap version 1 ready (.*; memory: weights [0-9.]* MiB, workspaces [0-9.]* MiB at most" ||
  fail "ap's ready line does not say its memory: $(grep 'model ap version 1 ready' "$LOG")"
[ "$(curl -sf "$URL/v1/models" | jq -c '[.models[].name]')" = '["ap","ld"]' ] ||
  fail "/v1/models once the default model (ap) is loaded: $(curl -s "$URL/v1/models")"
client logits "$URL" ap "$SAMPLE" >"$WORK/exp.ap"
same_logits "$WORK/ref.ap" "$WORK/exp.ap" || fail "ap loaded explicitly answers unlike ap alone"
# a request holds ap (its headers routed it, half its body sent) across the unload
"$PY" "$CLIENT" partial 127.0.0.1 "$PORT" ap "$SAMPLE" "$WORK/go" "$WORK/partial.json" &
OTHER_PIDS+=($!)
poll 30 test -e "$WORK/partial.json.sent" || fail "the partial request was not sent"
poll 30 receiving || fail "the partial request is not being received"
[ "$(http_code -X POST "$URL/v2/repository/models/ap/unload")" = 200 ] || fail "unload ap not 200"
is_state ap 1 UNLOADING || fail "ap not UNLOADING while its request is in flight: $(index)"
[ "$(http_code "$URL/v2/models/ap")" != 200 ] || fail "ap still routed after its unload"
: >"$WORK/go"
poll 60 test -s "$WORK/partial.json" || fail "the in-flight request was not answered"
[ "$(jq -r .status "$WORK/partial.json")" = 200 ] || fail "in-flight request across the unload: $(cat "$WORK/partial.json")"
jq .logits "$WORK/partial.json" >"$WORK/partial.logits"
same_logits "$WORK/ref.ap" "$WORK/partial.logits" || fail "the in-flight request was not answered by ap"
poll 30 is_state ap 1 UNAVAILABLE || fail "ap not freed after its last request: $(index)"
poll 10 no_memory_of ap || fail "ap unloaded, its memory gauges still in /metrics"
memory_of ld weights >/dev/null || fail "ld's memory gauges went with ap's unload"
poll 10 log_has "model ap version 1 unloaded (its last request answered)" || fail "unload not logged"
is_state ld 1 READY || fail "ld disturbed by ap's unload: $(index)"
# a load that fails while a copy serves: 400 with the reason (it said 200,
# "loaded"), the loaded copy goes on serving
head -c 1000 "$AP/model.safetensors" >"$WORK/corrupt"
replace "$REPO/ld/model.safetensors" "$WORK/corrupt"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/ld/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("\"ld\"") and contains("goes on serving")' "$WORK/body" >/dev/null; } ||
  fail "a failed reload of ld: $code $(cat "$WORK/body") (want 400 with the reason)"
is_state ld 1 READY || fail "ld not serving after its failed reload: $(index)"
client logits "$URL" ld "$SAMPLE" >"$WORK/exp.ld" || fail "ld does not answer after its failed reload"
# the same with a FIFO swapped in as the loaded ld's config.json: refused
# at once naming it, never waited on; the loaded copy serves on
rm "$REPO/ld/config.json"
mkfifo "$REPO/ld/config.json"
code=$(curl -s -m 20 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/ld/load")
{ [ "$code" = 400 ] && jq -e '.error | contains("ld/config.json: is a FIFO, not a regular file")' "$WORK/body" \
  >/dev/null; } || fail "a reload of ld with a FIFO as config.json: $code $(cat "$WORK/body")"
is_state ld 1 READY || fail "ld not serving after its reload with a FIFO config.json: $(index)"
client logits "$URL" ld "$SAMPLE" >"$WORK/exp.ld" || fail "ld does not answer after its FIFO reload"
same_logits "$WORK/ref.ld" "$WORK/exp.ld" || fail "ld answers otherwise after its FIFO reload"
echo "ok explicit load/unload; an unload waits for the request in flight; a failed reload says so"
stop_daemon

# --- 6. model names: directory names are any bytes but '/' ------------------------------
# UTF-8 and quotes are served under their own names everywhere; a name that
# is not UTF-8 or holds a control character is left out (logged once, not
# on every rescan): one such directory made /metrics unparsable for every
# model (promtool, Prometheus), /v2/models/stats a 500, and answers lose
# their "model"; the index showed "é" as "??".
REPO=$WORK/repo_names
mkdir -p "$REPO"
for n in 'é' 'q"b\s' $'\xff' $'t\tb' stats a,b; do copy_model "$LD" "$REPO/$n"; done
# "stats" (GET /v2/models/stats is every model's statistics: its metadata
# route gave those) and "a,b" (load-model's list names a and b) are left
# out too, and listed in the index saying why
rc=0
timeout 60 "$SERVE" --model-repository "$REPO" --model-control-mode explicit --load-model 'a,b' \
  --host 127.0.0.1 --port 0 2>"$WORK/comma.log" || rc=$?
[ "$rc" = 2 ] || fail "load-model a,b: exit $rc, not 2: $(tail -3 "$WORK/comma.log")"
grep -q 'has no model "a" (.*); not served: "a,b" (it holds a .,.' "$WORK/comma.log" ||
  fail "load-model a,b: not told why: $(tail -1 "$WORK/comma.log")"
MODEL='' start_daemon --model-repository "$REPO" --access-log off
# in name order, byte by byte, the names left out among the others (as Triton's)
[ "$(index | jq -c '[.[].name]')" = '["a,b","q\"b\\s","stats","é"]' ] || fail "index names: $(index)"
index | jq -e '[.[] | select(.state == "UNAVAILABLE" and .version == "") | .reason]
  | (.[0] | contains("separates load-model")) and (.[1] | contains("GET /v2/models/stats is"))' >/dev/null ||
  fail "index entries of a,b and stats: $(index)"
[ "$(curl -sf "$URL/v1/models" | jq -c '[.models[].name]')" = '["q\"b\\s","é"]' ] ||
  fail "/v1/models names: $(curl -s "$URL/v1/models")"
[ "$(http_code "$URL/v2/models/stats")" = 200 ] || fail "/v2/models/stats: $(curl -s "$URL/v2/models/stats")"
[ "$(curl -sf "$URL/v2/models/%C3%A9" | jq -r .name)" = é ] || fail "/v2/models/é: $(curl -s "$URL/v2/models/%C3%A9")"
if command -v promtool >/dev/null; then
  curl -sf "$URL/metrics" >"$WORK/names.metrics"
  out=$(promtool check metrics <"$WORK/names.metrics" 2>&1) || fail "promtool with odd model names: $out"
fi
[ "$(metric 'comrope_model_state{model="é",version="1",state="READY"}')" = 1 ] ||
  fail "comrope_model_state of é: $(grep -a comrope_model_state "$WORK/names.metrics")"
kill -HUP "$DAEMON_PID"
poll 30 log_has "rescan done" || fail "no rescan after SIGHUP"
[ "$(grep -c "not served, a name no model can have: .*\"stats\" (GET" "$LOG")" = 1 ] ||
  fail "the names left out were not said once: $(grep "not served" "$LOG")"
grep -q 't\\x09b' "$LOG" || fail "the names left out are not named (escaped): $(grep "not served" "$LOG")"
echo "ok model names: UTF-8 and quotes served as they are, names not UTF-8 or with control characters left out, stats and a,b in the index saying why"
stop_daemon

# --- 7. the repository's directory cannot be read for a while ----------------------------
# Model $1, READY, while $2 cannot be read: it answers as before, and an
# explicit load of it gets 503 with Retry-After naming why ($3, a part of
# strerror's text).
serves_while_unreadable() {
  local m=$1 what=$2 why=$3 code
  is_state "$m" 1 READY || fail "$m not READY while $what cannot be read: $(index)"
  client logits "$URL" "$m" "$SAMPLE" >"$WORK/unreadable.$m" || fail "$m does not answer while $what cannot be read"
  same_logits "$WORK/ref.$m" "$WORK/unreadable.$m" || fail "$m answers otherwise while $what cannot be read"
  code=$(curl -s -D "$WORK/hdr" -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/$m/load")
  { [ "$code" = 503 ] && jq -e --arg w "$why" '.error | contains("cannot be read") and contains($w)' "$WORK/body" >/dev/null; } ||
    fail "a load of $m while $what cannot be read: $code $(cat "$WORK/body") (want 503 naming '$why')"
  grep -qi '^retry-after: 1' "$WORK/hdr" || fail "503 for the load without Retry-After: $(cat "$WORK/hdr")"
}
# A deploy that swaps directories by rename, or an NFS error: read as an
# empty repository, the next rescan unloaded every model. Nothing tells
# that from a passing failure: what serves goes on serving.
REPO=$WORK/repo_root
mkdir -p "$REPO"
copy_model "$LD" "$REPO/ld"
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode explicit --load-model ld --access-log off
mv -T "$REPO" "$REPO.away"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 1 || fail "no rescan after SIGHUP"
log_has "model-repository: cannot read $REPO: No such file or directory (a rescan changes nothing until it can)" ||
  fail "the unreadable repository not logged: $(tail -5 "$LOG")"
serves_while_unreadable ld "the repository" "No such file"
mv -T "$REPO.away" "$REPO"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 2 || fail "no second rescan after SIGHUP"
log_has "model-repository: $REPO can be read again" || fail "the repository's return not logged: $(tail -5 "$LOG")"
[ "$(grep -c "model-repository: cannot read" "$LOG")" = 1 ] || fail "the unreadable repository logged more than once"
is_state ld 1 READY || fail "ld not READY once the repository is back: $(index)"
echo "ok a repository that cannot be read for a while: nothing unloaded, a load 503 naming why, said once"
stop_daemon

# --- 8. one model's directory cannot be read for a while ---------------------------------
# A stat of a model's directory failing otherwise than "not there" (EIO on
# a bad disk or NFS, EACCES, ELOOP) was read as the model gone: the next
# rescan unloaded it. ELOOP stands for them all here, as it fails for root
# too: the directory moved out, a symlink to itself in its place. A
# directory never seen as a model that cannot be read is not taken for one
# (lost+found, 0700 and root's, on every ext4 volume mounted as the
# repository): not in the index, not logged.
REPO=$WORK/repo_model
mkdir -p "$REPO"
copy_model "$LD" "$REPO/ld"
copy_model "$AP" "$REPO/ap"
ln -s lost+found "$REPO/lost+found"
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode explicit --load-model '*' --access-log off
index | jq -e 'any(.[]; .name == "lost+found") | not' >/dev/null ||
  fail "an unreadable directory never seen as a model is listed: $(index)"
log_has "lost+found" && fail "an unreadable directory never seen as a model is logged: $(grep lost+found "$LOG")"
mv -T "$REPO/ap" "$WORK/ap.away"
ln -s ap "$REPO/ap"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 1 || fail "no rescan after SIGHUP"
log_has "model ap: cannot read $REPO/ap: Too many levels of symbolic links (kept as it is until it can)" ||
  fail "the unreadable model not logged: $(tail -5 "$LOG")"
serves_while_unreadable ap "its directory" "symbolic links"
is_state ld 1 READY || fail "ld disturbed by ap's directory: $(index)"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 2 || fail "no second rescan after SIGHUP"
rm "$REPO/ap"
mv -T "$WORK/ap.away" "$REPO/ap"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 3 || fail "no third rescan after SIGHUP"
log_has "model ap: $REPO/ap can be read again" || fail "ap's return not logged: $(tail -5 "$LOG")"
[ "$(grep -c "model ap: cannot read" "$LOG")" = 1 ] || fail "ap's unreadable directory logged more than once"
is_state ap 1 READY || fail "ap not READY once its directory is back: $(index)"
grep -q "model ap version 1: unloading" "$LOG" && fail "ap was unloaded: $(grep unloading "$LOG")"
log_has "lost+found" && fail "an unreadable directory never seen as a model is logged: $(grep lost+found "$LOG")"
echo "ok a model's directory that cannot be read for a while: kept as it is, a load 503 naming why, said once"
stop_daemon

# --- 9. a scan's memory does not grow by kilobytes a version ------------------
REPO=$WORK/repo9
mkdir -p "$REPO/many/base"
ln -s "$ROOT/tests/fixtures/parity/comrope_ld_b2/"{config.json,model.safetensors} "$REPO/many/base/"
MODEL='' start_daemon --model-repository "$REPO" --model-control-mode explicit --access-log off \
  --max-body-bytes 4096
hwm() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$DAEMON_PID/status"; }
hwm0=$(hwm)
"$PY" -c 'import os, sys; [os.symlink("base", os.path.join(sys.argv[1], str(v))) for v in range(1, 8001)]' "$REPO/many"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 1 || fail "no rescan after SIGHUP"
hwm1=$(hwm)
# (RSS says nothing under a sanitizer: TSan's shadow grew it by 19 MB;
# ldd's output read whole, as limits.sh says why)
libs=$(ldd "$SERVE")
if [[ $libs == *libasan* || $libs == *libubsan* || $libs == *libtsan* ]]; then
  echo "skip a scan's peak RSS: a sanitizer build (RSS is the sanitizer's)"
else
  [ $((hwm1 - hwm0)) -lt 16384 ] || fail "a scan of 8,000 versions: the daemon's peak RSS grew from $hwm0 to $hwm1 kB"
fi
# a load's body is not read, but held to max-body-bytes as every body (only
# receive-timeout-s bounded it): announced or chunked, 413 and no load
head -c 4097 /dev/zero >"$WORK/big"
for chunked in "" "Transfer-Encoding: chunked"; do
  code=$(curl -s -o "$WORK/body" -w '%{http_code}' -H "$chunked" --data-binary @"$WORK/big" \
    "$URL/v2/repository/models/many/load")
  { [ "$code" = 413 ] && jq -e '.error | contains("max-body-bytes (4096)")' "$WORK/body" >/dev/null; } ||
    fail "a load with a body over max-body-bytes (${chunked:-Content-Length}): $code $(cat "$WORK/body")"
done
[ "$(index | jq '[.[] | select(.state == "READY")] | length')" = 0 ] || fail "a refused load loaded"
code=$(curl -s -o "$WORK/body" -w '%{http_code}' --data-binary '{"parameters": {}}' \
  "$URL/v2/repository/models/nope/load")
[ "$code" = 404 ] || fail "a load with Triton's small body: $code $(cat "$WORK/body")"
stop_daemon
echo "ok a scan of 8,000 versions: peak RSS from $hwm0 to $hwm1 kB"
echo "repository: ok"
