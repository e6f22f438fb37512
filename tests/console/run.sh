#!/usr/bin/env bash
# run.sh SERVE MODEL_DIR OUT_DIR: the web console in headless Chromium
# (e2e.mjs) against the real daemon on MODEL_DIR, on a free port:
#   1. open daemon: samples uploaded and picked by keyboard, every card's
#      top 5 against /v1/classify, an API refusal as worded, the live
#      panel, axe-core, phone width; screenshots in OUT_DIR
#   2. daemon with --api-key-file: page public, token asked, row matches
#   3. daemon serving two models (a repository of MODEL_DIR and a study
#      model): the model picker, each model's row from its own route
# Exit 77 (ctest: skipped, with a loud message) only when Chromium cannot
# start.
set -euo pipefail
SERVE=$1 # read by lib.sh
export SERVE
export COMROPE_TEST_MODEL=$2
OUT=$3
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/../integration/lib.sh"
mkdir -p "$OUT"
"$here/install.sh"

e2e() {
  local rc=0
  node "$here/e2e.mjs" "$@" || rc=$?
  if [ "$rc" = 77 ]; then exit 77; fi
  [ "$rc" = 0 ] || fail "e2e.mjs $1 (exit $rc)"
}

echo "== console: open daemon on $(basename "$COMROPE_TEST_MODEL")"
start_daemon
e2e open "$URL/" "$OUT"
stop_daemon

echo "== console: daemon with --api-key-file"
token=console-test-$RANDOM$RANDOM
echo "$token" >"$WORK/keys"
start_daemon --api-key-file "$WORK/keys"
e2e auth "$URL/" "$token"
stop_daemon

echo "== console: daemon serving two models"
mkdir -p "$WORK/repo"
ln -s "$COMROPE_TEST_MODEL" "$WORK/repo/$(basename "$COMROPE_TEST_MODEL")"
ln -s "$ROOT/models/study/fashion-comrope-ap" "$WORK/repo/fashion-comrope-ap"
MODEL='' start_daemon --model-repository "$WORK/repo" --model-name "$(basename "$COMROPE_TEST_MODEL")"
e2e models "$URL/"
stop_daemon
echo "console: browser test passed"
