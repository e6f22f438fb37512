#!/usr/bin/env bash
# log_stall.sh: a reader of stderr that stops reading (a stopped
# `docker logs`, journald or log shipper) stops neither the requests nor the
# drain (server/log.h); the cases are tests/integration/log_stall.py's,
# which holds the daemon's stderr pipe itself.
#   log_stall.sh SERVE
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
"$PY" "$ROOT/tests/integration/log_stall.py" "$SERVE" "$MODEL" "$IMG" || fail "log_stall.py"
