#!/usr/bin/env bash
# config_log.sh: config and auth that cannot slip, a log that cannot be
# forged or lost (tests/integration/logs.py sends and checks).
#   1. api-key-file set in a config file is in force whichever way the file
#      is named: --config=FILE, --config FILE after a --key=value flag.
#   2. A key file that holds only a (long) comment, or cannot be read, and a
#      config file with an unknown key stop the start with a message. So do
#      a config or key file that is not a regular file or a pipe (/dev/zero,
#      also through a symlink: read until the daemon was killed), a FIFO no
#      one writes (the start hung), or more than 1 MiB, a pipe's too (`yes`).
#      Both files from pipes (`<(...)`) are read and in force.
#      So does a model-name no route can address ('a/b', '..').
#   3. Text log: a path with a percent-encoded newline and a forged line,
#      escape sequences in the path and the user agent: every line is one
#      line with a timestamp, client strings escaped.
#   4. JSON log: the same plus bytes that are not UTF-8: no line dropped,
#      every line (start-up and drain too) a JSON object.
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
logs() { "$PY" "$ROOT/tests/integration/logs.py" "$@"; }

echo "secret-token" >"$WORK/keys"
printf '# auth\napi-key-file "%s"\n' "$WORK/keys" >"$WORK/serve.conf"
for form in "--config=$WORK/serve.conf" "--workers=1 --config $WORK/serve.conf"; do
  # shellcheck disable=SC2086  # the form is two words or four
  start_daemon $form --access-log off
  code=$(http_code "$URL/v1/models")
  [ "$code" = 401 ] || fail "$form: /v1/models without a token gave $code (auth off)"
  code=$(http_code -H "Authorization: Bearer secret-token" "$URL/v1/models")
  [ "$code" = 200 ] || fail "$form: /v1/models with the token gave $code"
  stop_daemon
  echo "ok: $form: the file's api-key-file is in force"
done

# refuses_start MESSAGE FLAG...: the daemon exits 2 (a bad setting,
# deploy/README's exit statuses) within 60 s (before loading anything
# slow), saying MESSAGE.
refuses_start() {
  local msg=$1 rc=0
  shift
  timeout 60 "$SERVE" --model "$MODEL" --host 127.0.0.1 --port 0 "$@" 2>"$WORK/refused.log" || rc=$?
  if [ "$rc" != 2 ]; then
    fail "exit $rc, not 2 (a bad setting), with $*: $(cat "$WORK/refused.log")"
  fi
  grep -q -- "$msg" "$WORK/refused.log" || fail "$*: no \"$msg\" in: $(cat "$WORK/refused.log")"
  echo "ok: refused to start with $* ($msg)"
}
{ printf '#'; head -c 3000 /dev/zero | tr '\0' c; printf '\n'; } >"$WORK/comment-only-keys"
refuses_start "holds no token" --api-key-file "$WORK/comment-only-keys"
# a served name is one segment of /v2/models/<name>/...: 'a/b' was served
# by /v1/classify while every v2 route of it was a 404
refuses_start "model-name: \"a/b\" cannot be served: it holds a '/'" --model-name a/b
refuses_start "model-name: \"..\" cannot be served: it is . or .." --model-name ..
refuses_start "api-key-file: $WORK: is a directory" --api-key-file "$WORK"
printf 'secret # the prod key\n' >"$WORK/commented-keys"
refuses_start "commented-keys:1: a token is one word" --api-key-file="$WORK/commented-keys"
printf 'port 0\nmax-batch-sise 4\n' >"$WORK/typo.conf"
refuses_start "typo.conf:2: unknown key \"max-batch-sise\"" --config="$WORK/typo.conf"
ln -s /dev/zero "$WORK/zero.conf"
refuses_start "config: $WORK/zero.conf: is a device, not a regular file or a pipe" --config "$WORK/zero.conf"
refuses_start "api-key-file: /dev/zero: is a device, not a regular file or a pipe" --api-key-file /dev/zero
mkfifo "$WORK/fifo"
refuses_start "config: $WORK/fifo: a pipe that gave nothing" --config "$WORK/fifo"
refuses_start "api-key-file: $WORK/fifo: a pipe that gave nothing" --api-key-file "$WORK/fifo"
{ head -c $((1 << 20)) /dev/zero | tr '\0' '#'; echo; echo "port 0"; } >"$WORK/big.conf"
refuses_start "config: $WORK/big.conf: is larger than 1048576 bytes" --config "$WORK/big.conf"
refuses_start "api-key-file: /dev/fd/[0-9]*: is larger than 1048576 bytes" --api-key-file <(yes token)

# Secrets and templates through a pipe, as a shell gives them: read to
# their end (the key in force: 401 without it, 200 with it).
start_daemon --api-key-file <(printf 'piped-token\n') --config <(printf 'access-log off\n')
[ "$(http_code -X POST "$URL/v2/repository/index")" = 401 ] || fail "a key from a pipe not in force"
[ "$(http_code -H 'Authorization: Bearer piped-token' -X POST "$URL/v2/repository/index")" = 200 ] ||
  fail "the key from a pipe refused"
stop_daemon
echo "ok: --api-key-file and --config read from pipes"

start_daemon --access-log text
logs send "$PORT" || fail "send (text)"
stop_daemon
logs check-text "$LOG" || fail "check-text"

start_daemon --access-log json
logs send "$PORT" || fail "send (json)"
stop_daemon
logs check-json "$LOG" || fail "check-json"
echo "config_log.sh: all passed"
