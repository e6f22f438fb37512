# shellcheck shell=bash
# common.sh: what the integration tests (tests/integration/lib.sh) and the
# container tests (tests/deploy/lib.sh) both use; sourced by those two
# files, after they set PY.
#
#   poll SECONDS CMD...     runs CMD every 0.1 s until it succeeds; 1 on timeout
#   http_code ARGS...       curl's status code for ARGS (10 s at most)
#   free_port               a TCP port free right now on 127.0.0.1, below the
#                           ephemeral range (tests/free_port.py says why)

poll() {
  local seconds=$1 i
  shift
  for ((i = 0; i < seconds * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  "$@"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@"; }

FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/free_port.py
free_port() { "$PY" "$FREE_PORT_PY"; }
