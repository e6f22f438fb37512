#!/usr/bin/env bash
# oslimits.sh: the daemon when the operating system refuses it something.
#   1. Memory: RLIMIT_AS lowered on the serving daemon (prlimit) to what it
#      holds, so that the next allocation that needs more fails. Requests
#      are answered 200 or with a JSON error (never an empty body), the
#      daemon lives, and serves again once the limit is raised.
#   2. Threads refused at start (pthread_create EAGAIN, as past RLIMIT_NPROC
#      or pids.max), at each thread the daemon starts in turn: it exits 3
#      (waiting may cure it) naming why (never as "cannot listen": the port
#      is free), or it is ready and a SIGHUP rescans.
#   3. Threads refused at run time: a model added to the repository fails to
#      load naming why (its state and reason in the index), the model
#      already loaded serves on, and the new one loads at the next SIGHUP
#      once threads start (its files unchanged: a SIGHUP retries a failed
#      load, as an operator who cured its cause asks). The loaded model's
#      files replaced by another pe_type and resolution meanwhile: its
#      reload fails too, and comrope_model_info keeps the labels of the
#      copy that serves on until the reload succeeds.
#   4. Standard descriptors closed at exec (`<&- >&- 2>&-`): each is
#      /dev/null in the daemon, never its listening socket (descriptor 2
#      was, and every log line a write() on it).
#   5. Memory refused to a load at run time (RLIMIT_AS at the daemon's
#      size): a model added to the repository fails to load, saying the OS
#      refused it (not a bad checkpoint), the one loaded serves on; the
#      limit raised, a SIGHUP loads it (files unchanged).
#   6. Memory refused to --model's load at start (RLIMIT_AS from exec):
#      exit 3 saying the OS refused memory (waiting may cure it), while the
#      same files without the limit, a checkpoint that lacks its tensors,
#      exit 1 (a bad model: no restart).
#   7. A workspace larger than the machine's memory (max-batch-tokens at
#      its bound on a model with a wide MLP: terabytes): exit 2, a bad
#      setting, naming max-batch-tokens and max-batch-size to lower (it was
#      exit 3, "waiting may cure it", and systemd restarted it for ever);
#      and workspaces that fit one by one but not as many as the workers
#      together: exit 2 naming the workers (each was checked alone); the
#      workers derived from the CPUs (not set) are lowered until they fit.
#   8. Models whose workspaces fit one by one but not together (physical
#      memory made 100 MiB by the shim: PHYS_MEMORY_MIB): the second's load
#      is refused, UNAVAILABLE naming the memory held and by whom, the
#      first serves (each model was checked alone: both loaded, and the
#      daemon was OOM-killed under load); unloaded, the first makes room
#      for the second. A reload counts the copy it replaces by its weights
#      only, and so does a new version the versions its policy drops: one
#      that fits once swapped loads. A version kept serving because its
#      successor failed to load counts whole for another model's load.
# The limits are set with prlimit on the daemon itself, and pthread_create
# fails through an LD_PRELOAD shim (tests/thread_limit.c): no root needed.
#   oslimits.sh SERVE THREAD_LIMIT_SO
set -euo pipefail
SERVE=${1:-}
SHIM=${2:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# json_error FILE: FILE is a JSON object with an "error" string.
json_error() {
  "$PY" -c 'import json, sys; assert isinstance(json.load(open(sys.argv[1]))["error"], str)' "$1" 2>/dev/null
}
started_or_gone() { log_has 'comrope-serve: ready' || daemon_gone; }
rescans_done() { [ "$(grep -c 'rescan done' "$LOG")" -ge "$1" ]; }
why='Resource temporarily unavailable' # strerror(EAGAIN): a thread refused

# (ldd's output read whole, as limits.sh says why)
libs=$(ldd "$SERVE")
sanitized=0
[[ $libs == *libasan* || $libs == *libubsan* || $libs == *libtsan* ]] && sanitized=1
# the shim after a sanitizer's runtime (loading.sh does the same)
SHIM_ENV=("LD_PRELOAD=$SHIM" "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0")

# --- 1. malloc failing while serving ------------------------------------------
if [ "$sanitized" = 1 ]; then
  echo "skip RLIMIT_AS: a sanitizer build (its shadow memory is terabytes of address space)"
else
  start_daemon --access-log off
  classify() { curl -s --max-time 10 -o "$1" -w '%{http_code}' -H 'Content-Type: image/png' --data-binary @"$IMG" "$URL/v1/classify"; }
  [ "$(classify "$WORK/warm")" = 200 ] || fail "no 200 before the limit"
  vm_kib=$(awk '/^VmSize/ { print $2 }' "/proc/$DAEMON_PID/status")
  serving_kib=$vm_kib # a serving daemon's size, for 6.
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
fi

# --- 2. threads refused at start ----------------------------------------------
for ((n = 0; n < 60; n++)); do
  LOG=$WORK/threads$n.log
  : >"$LOG"
  env THREAD_LIMIT_AFTER=$n "${SHIM_ENV[@]}" "$SERVE" --model "$MODEL" --host 127.0.0.1 --port 0 \
    --http-threads 2 --workers 2 --access-log off 2>"$LOG" &
  DAEMON_PID=$!
  poll 30 started_or_gone || fail "$n threads allowed: neither ready nor gone in 30 s"
  if daemon_gone; then
    EXIT_CODE=0
    wait "$DAEMON_PID" || EXIT_CODE=$?
    DAEMON_PID=
    log_has "$why" || fail "$n threads allowed: exit $EXIT_CODE without saying why: $(tail -1 "$LOG")"
    log_has "cannot listen" && fail "$n threads allowed: a thread refused was told as the port: $(tail -1 "$LOG")"
    # 3 whichever of the daemon's threads it was (HTTP, worker, control):
    # waiting may cure it, and the systemd unit restarts on 3, not on 1
    # (a worker's or the control thread's was 1, an HTTP thread's 3). Not
    # ours: OpenBLAS's own pool, started when the library loads (before
    # main; the deployments set OPENBLAS_NUM_THREADS=1), raises SIGINT
    # when refused (130), which systemd restarts too.
    if [ "$EXIT_CODE" = 130 ] && log_has 'OpenBLAS blas_thread_init'; then continue; fi
    [ "$EXIT_CODE" = 3 ] || fail "$n threads allowed: exit $EXIT_CODE, not 3: $(tail -1 "$LOG")"
    continue
  fi
  kill -HUP "$DAEMON_PID"
  poll 30 rescans_done 1 || fail "$n threads allowed: ready, but a SIGHUP rescans nothing"
  stop_daemon
  break
done
[ "$n" -lt 60 ] || fail "never ready with 60 threads"
echo "ok threads refused at start: each of the first $n thread starts refused, exit 3 naming why; then ready, rescans"

# --- 3. threads refused at run time ---------------------------------------------
mkdir -p "$WORK/repo/a" "$WORK/repo/b"
ln -s "$MODEL" "$WORK/repo/a/1"
NO_THREADS=$WORK/no-threads
DAEMON_ENV=("THREAD_LIMIT_WHILE=$NO_THREADS" "${SHIM_ENV[@]}")
MODEL='' start_daemon --model-repository "$WORK/repo" --access-log off
unset DAEMON_ENV
logits() { "$PY" "$ROOT/tests/integration/repo_client.py" logits "$URL" "$1" "$IMG" >/dev/null; }
logits a || fail "model a does not answer"
info() { metric "comrope_model_info{model=\"a\",pe_type=\"$1\",training_resolution=\"$2\",version=\"1\"}"; }
[ "$(info comrope-ld 16)" = 1 ] || fail "model a's comrope_model_info: $(curl -s "$URL/metrics" | grep model_info)"
: >"$NO_THREADS"
cp -r "$MODEL" "$WORK/repo/b/1" # a copy: touched below
OTHER=$ROOT/tests/fixtures/parity/liere_b3 # liere at 12 x 12
ln -sfn "$OTHER" "$WORK/repo/a/1"
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 1 || fail "no rescan after SIGHUP"
log_has 'model a version 1 failed to load (the loaded copy goes on serving)' ||
  fail "model a's reload without threads did not fail: $(grep 'model a' "$LOG" | tail -1)"
if [ "$(info comrope-ld 16)" != 1 ] || info liere 12 >/dev/null; then
  fail "a failed reload relabelled the served copy's series: $(curl -s "$URL/metrics" | grep model_info)"
fi
index=$(curl -s --max-time 10 -X POST "$URL/v2/repository/index")
"$PY" -c 'import json, sys; b = [m for m in json.loads(sys.argv[1]) if m["name"] == "b"][0]
sys.exit(not (b["state"] == "UNAVAILABLE" and sys.argv[2] in b["reason"]))' "$index" "$why" ||
  fail "model b without threads: not UNAVAILABLE naming '$why': $index"
logits a || fail "model a stopped answering when b could not start its threads"
rm "$NO_THREADS"
# the cause cured, a SIGHUP retries the failed load on the same files (a
# poll would not: repository.c, sync_models)
kill -HUP "$DAEMON_PID"
poll 30 rescans_done 2 || fail "no second rescan"
logits b || fail "model b does not load at a SIGHUP once threads start again (its files unchanged)"
if [ "$(info liere 12)" != 1 ] || info comrope-ld 16 >/dev/null; then
  fail "model a reloaded as liere 12 x 12: comrope_model_info says $(curl -s "$URL/metrics" | grep model_info)"
fi
stop_daemon
echo "ok threads refused at run time: b UNAVAILABLE naming why, a serves on with its labels, both load at the next SIGHUP"

# --- 4. standard descriptors closed at exec ------------------------------------
PORT=$(free_port)
URL=http://127.0.0.1:$PORT
LOG=
"$SERVE" --model "$MODEL" --host 127.0.0.1 --port "$PORT" <&- >&- 2>&- &
DAEMON_PID=$!
poll 30 ready || fail "not ready in 30 s with descriptors 0, 1, 2 closed"
for fd in 0 1 2; do
  target=$(readlink "/proc/$DAEMON_PID/fd/$fd")
  [ "$target" = /dev/null ] || fail "descriptor $fd, closed at exec, is $target in the daemon"
done
kill -TERM "$DAEMON_PID"
wait_exit 60
[ "$EXIT_CODE" = 0 ] || fail "exit $EXIT_CODE after SIGTERM with descriptors 0, 1, 2 closed"
echo "ok descriptors 0, 1, 2 closed at exec: /dev/null in the daemon, ready, exit 0"

# --- 5. memory refused to a load at run time --------------------------------------
if [ "$sanitized" = 1 ]; then
  echo "skip RLIMIT_AS on a load: a sanitizer build (its shadow memory is terabytes of address space)"
else
  rm -rf "$WORK/repo"
  mkdir -p "$WORK/repo/a" "$WORK/repo/b"
  ln -s "$MODEL" "$WORK/repo/a/1"
  MODEL='' start_daemon --model-repository "$WORK/repo" --access-log off
  logits a || fail "model a does not answer"
  # 4 MiB over its size: room for the scan, not for a worker's stack (8 MiB)
  vm_kib=$(awk '/^VmSize/ { print $2 }' "/proc/$DAEMON_PID/status")
  prlimit --pid "$DAEMON_PID" --as=$(((vm_kib + 4096) * 1024)):
  ln -s "$MODEL" "$WORK/repo/b/1"
  kill -HUP "$DAEMON_PID"
  poll 30 rescans_done 1 || fail "no rescan after SIGHUP under RLIMIT_AS"
  prlimit --pid "$DAEMON_PID" --as=unlimited:
  index=$(curl -s --max-time 10 -X POST "$URL/v2/repository/index")
  "$PY" -c 'import json, sys; b = [m for m in json.loads(sys.argv[1]) if m["name"] == "b"][0]
sys.exit(not (b["state"] == "UNAVAILABLE" and "the OS refused" in b["reason"]))' "$index" ||
    fail "model b under RLIMIT_AS at the daemon's size: not UNAVAILABLE saying the OS refused it: $index"
  log_has 'model b version 1 failed to load: .*(the OS refused .*: waiting may cure it)' ||
    fail "model b under RLIMIT_AS: the log does not tell it from a bad checkpoint"
  logits a || fail "model a stopped answering when b's load was refused memory"
  kill -HUP "$DAEMON_PID"
  poll 30 rescans_done 2 || fail "no second rescan"
  logits b || fail "model b does not load at a SIGHUP once RLIMIT_AS is raised (its files unchanged)"
  stop_daemon
  echo "ok memory refused to a load: b UNAVAILABLE, a serves on, b loads at the SIGHUP after the limit is raised"
fi

# --- 6. memory refused to --model's load at start ---------------------------------
if [ "$sanitized" = 1 ]; then
  echo "skip RLIMIT_AS at start: a sanitizer build (its shadow memory is terabytes of address space)"
else
  # The fixture's config with a 2048 x 262144 MLP: its load allocates 4 GiB
  # of parameters and a 2 GiB scratch before it reads a tensor, far more
  # than a serving daemon's size varies by (glibc's arenas, 64 MiB of
  # address space per thread that allocated: 1.6 GiB, the first version,
  # was let through when part 1's daemon had grown by that much under a
  # parallel ctest). model.safetensors is a sparse file just large enough
  # for the loader's size check, with none of the tensors: without a limit
  # the load fails as a bad checkpoint (nothing of the 6 GiB is touched).
  BIG=$WORK/big
  mkdir -p "$BIG"
  "$PY" - "$MODEL/config.json" "$BIG" <<'PY'
import json, struct, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=2048, intermediate_size=262144, num_hidden_layers=1, num_attention_heads=16)
json.dump(c, open(sys.argv[2] + "/config.json", "w"))
n = 5 << 30
h = json.dumps({"pad": {"dtype": "F16", "shape": [n // 2], "data_offsets": [0, n]}}).encode()
with open(sys.argv[2] + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    f.truncate(8 + len(h) + n)
PY
  start_exit() { # start_exit NAME AS: the daemon on $BIG under RLIMIT_AS, to its exit; EXIT_CODE, LOG
    LOG=$WORK/$1.log
    EXIT_CODE=0
    timeout 60 prlimit --as="$2": "$SERVE" --model "$BIG" --host 127.0.0.1 --port 0 --access-log off 2>"$LOG" ||
      EXIT_CODE=$?
  }
  start_exit big-unlimited unlimited
  [ "$EXIT_CODE" = 1 ] || fail "a checkpoint without its tensors: exit $EXIT_CODE, not 1"
  log_has 'is missing' || fail "a checkpoint without its tensors: not named: $(tail -1 "$LOG")"
  # what a serving daemon of the tiny fixture holds, and 64 MiB: room for
  # the start up to the load, not for the load's scratch
  start_exit big-limited $(((serving_kib + 65536) * 1024))
  [ "$EXIT_CODE" = 3 ] || fail "--model refused memory at its load: exit $EXIT_CODE, not 3: $(tail -1 "$LOG")"
  log_has 'out of memory.*the OS refused memory: waiting may cure it' ||
    fail "--model refused memory: the log does not say so: $(tail -1 "$LOG")"
  echo "ok --model refused memory at its load: exit 3 saying so; the same files, a bad checkpoint, exit 1"
fi

# --- 7. a workspace larger than the machine's memory ------------------------------
# The fixture with one layer and a 65536-wide MLP (zeros, a sparse file):
# a quarter MiB of activations per token, 4 TiB at max-batch-tokens'
# bound. Its load needs some 48 MiB; its workspace, more than any machine
# has. Sanitized builds too: nothing that large is ever asked for.
WIDE=$WORK/wide
mkdir -p "$WIDE"
"$PY" - "$MODEL" "$WIDE" <<'PY'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
c = json.load(open(src + "/config.json"))
c.update(intermediate_size=65536, num_hidden_layers=1)
json.dump(c, open(dst + "/config.json", "w"))
with open(src + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header, data = json.loads(f.read(n)), f.read()
D, I = c["hidden_size"], c["intermediate_size"]
wide = {"vision_model.encoder.layers.0.mlp.fc1.weight": [I, D],
        "vision_model.encoder.layers.0.mlp.fc1.bias": [I],
        "vision_model.encoder.layers.0.mlp.fc2.weight": [D, I]}
out, body = {}, bytearray()
for name, t in header.items():
    if name == "__metadata__" or ".layers.1." in name or name in wide:
        continue
    b, e = t["data_offsets"]
    out[name] = dict(t, data_offsets=[len(body), len(body) + e - b])
    body += data[b:e]
end = len(body)
for name, shape in wide.items():  # F16 zeros, left as holes
    size = 2
    for d in shape:
        size *= d
    out[name] = {"dtype": "F16", "shape": shape, "data_offsets": [end, end + size]}
    end += size
h = json.dumps(out).encode()
with open(dst + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + body)
    f.truncate(8 + len(h) + end)
PY
LOG=$WORK/wide.log
EXIT_CODE=0
timeout 120 "$SERVE" --model "$WIDE" --host 127.0.0.1 --port 0 --access-log off --workers 1 \
  --max-batch-size 4096 --max-batch-tokens 16777216 2>"$LOG" || EXIT_CODE=$?
[ "$EXIT_CODE" = 2 ] || fail "a workspace larger than the machine's memory: exit $EXIT_CODE, not 2: $(tail -1 "$LOG")"
log_has 'workspace of 4096 images / 16777216 tokens needs .* MiB, more than the .* MiB of .*; .* fits*.*: lower max-batch-tokens or max-batch-size' ||
  fail "a workspace larger than the machine's memory: not said so: $(tail -1 "$LOG")"
log_has "less the [0-9]* MiB held already (memory_held); .* (memory held: this version's weights: [0-9]* MiB)" ||
  fail "a workspace larger than the machine's memory: what is held not said to be the weights: $(tail -1 "$LOG")"
log_has 'waiting may cure it' && fail "a workspace larger than the machine's memory told as one a wait may cure: $(tail -1 "$LOG")"
# the same files at lower limits: a model that serves. Not the defaults:
# 16384 tokens x 65536 x 4 B is 4 GiB, refused where memory (or the
# cgroup's memory.max) is smaller; 64 tokens is raised to one image's
# 4097, about 1 GiB, the least this fixture's workspace can be.
MODEL=$WIDE start_daemon --access-log off --workers 1 --max-batch-tokens 64
stop_daemon
echo "ok a workspace larger than the machine's memory: exit 2 naming max-batch-tokens / max-batch-size; the same files serve at lower limits"

# Those 1 GiB workspaces, one per worker, with more workers than memory
# holds them: each fits alone, all together do not. The bound is the
# daemon's: physical memory, or the cgroup's memory.max where lower.
mem=$("$PY" - <<'PY'
import os
mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
try:
    cg = open("/proc/self/cgroup").read().split("\n")[0].split(":", 2)[2]
    v = open("/sys/fs/cgroup" + cg + "/memory.max").read().strip()
    if v != "max":
        mem = min(mem, int(v))
except (OSError, IndexError, ValueError):
    pass
print(mem)
PY
)
workers=$((mem / (1 << 30) + 1)) # each one's share below 1 GiB
if [ "$workers" -gt 1024 ]; then
  echo "skip workers x workspace: $((mem >> 30)) GiB of memory take more than 1024 workers (workers' bound)"
else
  LOG=$WORK/wide_workers.log
  EXIT_CODE=0
  timeout 120 "$SERVE" --model "$WIDE" --host 127.0.0.1 --port 0 --access-log off --workers "$workers" \
    --max-batch-tokens 64 2>"$LOG" || EXIT_CODE=$?
  [ "$EXIT_CODE" = 2 ] || fail "$workers workers' workspaces larger than memory: exit $EXIT_CODE, not 2: $(tail -1 "$LOG")"
  log_has "$workers workers, each with a workspace of its own: .*workspace of .* images / 4097 tokens needs .* MiB, more than .* MiB, its 1/$workers share .*; not even one image of 4097 tokens fits.*: lower max-batch-tokens or max-batch-size (or workers)" ||
    fail "$workers workers' workspaces larger than memory: not said so: $(tail -1 "$LOG")"
  echo "ok $workers workers whose workspaces fit one by one, not together: exit 2 naming the workers and each one's share"
fi

# Workers derived from the CPUs (not set) whose workspaces together pass
# memory: fewer of them and the daemon serves, as it did before the bound
# (--memory 1g on a host of many CPUs exited 2). The bundled model (one
# worker per CPU) at a token count two shares cannot hold and one whole can:
# 1.5 x what two set workers' refusal says one share fits. Not under a
# sanitizer: the one worker reserves that workspace (address space only).
BUNDLED=$ROOT/models/fashion-comrope-ld
if [ "$(nproc)" -lt 2 ]; then
  echo "skip derived workers lowered: $(nproc) CPU derives one worker"
elif [ "$sanitized" = 1 ]; then
  echo "skip derived workers lowered: a sanitizer build (the workspace kept is some GiB of address space)"
else
  LOG=$WORK/derived_refused.log
  EXIT_CODE=0
  timeout 120 "$SERVE" --model "$BUNDLED" --host 127.0.0.1 --port 0 --access-log off --workers 2 \
    --max-batch-size 4096 --max-batch-tokens 16777216 2>"$LOG" || EXIT_CODE=$?
  [ "$EXIT_CODE" = 2 ] || fail "2 set workers past memory: exit $EXIT_CODE, not 2: $(tail -1 "$LOG")"
  share=$(sed -n 's/.*its 1\/2 share .*at most \([0-9]*\) tokens fit.*/\1/p' "$LOG" | head -1)
  [ -n "$share" ] || fail "2 set workers past memory: no 'at most N tokens fit' for a share: $(tail -1 "$LOG")"
  MODEL=$BUNDLED start_daemon --access-log off --max-batch-size 4096 --max-batch-tokens $((share * 3 / 2))
  log_has "workers (derived from [0-9]* CPUs) lowered to 1, [0-9]* gemm threads each, so that their workspaces fit" ||
    fail "derived workers past memory: not lowered to 1: $(grep -m1 ready "$LOG")"
  log_has "ready (.*; 1 workers x" || fail "derived workers past memory: not 1 worker: $(grep -m1 ready "$LOG")"
  stop_daemon
  echo "ok derived workers whose workspaces together pass memory: lowered to 1 (set ones exit 2)"
fi

# --- 8. models whose workspaces fit one by one, not together ----------------------
# The bundled model at 1 worker x 16384 tokens: an ~81-87 MiB workspace (51-57
# MiB of activations by gemm threads, 30 of rotation tables) and 1.5 MiB of weights.
# Under 100 MiB of physical memory (the shim), one fits, two do not; nothing depends on the machine's memory (its cgroup's
# memory.max, the bound where lower, is not 100 MiB on any machine this runs on).
rm -rf "$WORK/repo"
mkdir -p "$WORK/repo/a" "$WORK/repo/b"
ln -s "$ROOT/models/fashion-comrope-ld" "$WORK/repo/a/1"
cp -r "$ROOT/models/fashion-comrope-ld" "$WORK/repo/b/1" # a copy: touched below
DAEMON_ENV=("PHYS_MEMORY_MIB=100" "${SHIM_ENV[@]}")
MODEL='' start_daemon --model-repository "$WORK/repo" --model-control-mode explicit --load-model a \
  --workers 1 --max-batch-tokens 16384 --access-log off
unset DAEMON_ENV
code=$(curl -s --max-time 30 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/b/load")
[ "$code" = 400 ] || fail "two models past memory: the load of b answered $code, not 400: $(cat "$WORK/body")"
index=$(curl -s --max-time 10 -X POST "$URL/v2/repository/index")
"$PY" -c 'import json, re, sys; b = [m for m in json.loads(sys.argv[1]) if m["name"] == "b"][0]
sys.exit(not (b["state"] == "UNAVAILABLE" and re.search(r"needs [0-9]+ MiB, more than the 100 MiB of physical memory less the [0-9]+ MiB held already .*memory held: model a version 1: [0-9]+ MiB; this version.s weights: [0-9]+ MiB; unload a model to make room.*lower max-batch-tokens", b["reason"])))' "$index" ||
  fail "two models past memory: b not UNAVAILABLE naming the memory, a holding it and the cure: $index"
logits a || fail "two models past memory: a, loaded first, stopped answering"
[ "$(http_code -X POST "$URL/v2/repository/models/a/unload")" = 200 ] || fail "unload of a not 200"
[ "$(http_code -X POST "$URL/v2/repository/models/b/load")" = 200 ] ||
  fail "b, a unloaded, does not load: $(tail -1 "$LOG")"
logits b || fail "b, loaded once a was unloaded, does not answer"
touch "$WORK/repo/b/1/config.json"
[ "$(http_code -X POST "$URL/v2/repository/models/b/load")" = 200 ] ||
  fail "the reload of b, which fits once swapped, refused: $(tail -1 "$LOG")"
[ "$(grep -c 'model b version 1 ready' "$LOG")" = 2 ] || fail "b not reloaded: $(tail -1 "$LOG")"
# a version 2 under latest:1 supersedes version 1 (retired once it loads):
# counted whole, version 1 refused it, and was retired all the same
cp -r "$ROOT/models/fashion-comrope-ld" "$WORK/repo/b/2"
code=$(curl -s --max-time 30 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/b/load")
[ "$code" = 200 ] || fail "b's version 2, which fits once version 1 is retired, answered $code: $(cat "$WORK/body")"
logits b || fail "b, its version 2 loaded, does not answer"
# a version 3 that fails to load (corrupt): version 2 is kept serving, and
# counts whole again for another model's load; once version 3's files are
# cured, its load counts version 2 by its weights (it retires it) and fits
cp -r "$ROOT/models/fashion-comrope-ld" "$WORK/b3"
head -c 1000 "$ROOT/models/fashion-comrope-ld/model.safetensors" >"$WORK/b3/model.safetensors"
mv "$WORK/b3" "$WORK/repo/b/3"
[ "$(http_code -X POST "$URL/v2/repository/models/b/load")" = 400 ] || fail "b's corrupt version 3 did not fail"
logits b || fail "b's version 3 failed to load: version 2 not kept serving"
code=$(curl -s --max-time 30 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/a/load")
{ [ "$code" = 400 ] && grep -Eq 'model b version 2: [0-9]+ MiB;' "$WORK/body"; } ||
  fail "a's load did not count b's kept version 2 whole: $code $(cat "$WORK/body")"
cp "$ROOT/models/fashion-comrope-ld/model.safetensors" "$WORK/repo/b/3/model.safetensors.tmp"
mv "$WORK/repo/b/3/model.safetensors.tmp" "$WORK/repo/b/3/model.safetensors"
code=$(curl -s --max-time 30 -o "$WORK/body" -w '%{http_code}' -X POST "$URL/v2/repository/models/b/load")
[ "$code" = 200 ] || fail "b's cured version 3, which fits once the kept version 2 retires, answered $code: $(cat "$WORK/body")"
logits b || fail "b, its version 3 loaded, does not answer"
stop_daemon
echo "ok models whose workspaces fit one by one, not together: the second UNAVAILABLE naming who holds the memory; loads once the first is unloaded; a reload, and a new version, that fit once swapped load; a version kept as its successor failed counts whole for others"

echo "oslimits.sh: all passed"
