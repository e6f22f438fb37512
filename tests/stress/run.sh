#!/usr/bin/env bash
# The short overload and soak of tests/stress/stress.py, for CI (about a
# minute): 5x the measured capacity open loop for 15 s, then a 30 s soak of
# good, hostile and vanishing clients (connection-timeout-s 5 so that
# connections of clients that vanished mid-body are reclaimed within the
# 10 s the fd check waits). Every assertion a correct daemon must pass;
# those listed in STRESS_XFAIL (default: the soak's rss, an open item of
# issue 19: the daemon's RSS grows 3-14% over the 30 s soak, 7.4% over the
# 20-minute one, not yet explained) are reported as XFAIL instead of
# failing, and as XPASS once they hold. (The overload's recovery was XFAIL
# until the request bounds of issue 19 landed; it holds now.) The full
# runs: tests/stress/stress.py overload / soak (60 s / 20 min).
#
#   tests/stress/run.sh build/comrope-serve [build/comrope-loadgen]
set -euo pipefail
SERVE=${1:?usage: tests/stress/run.sh COMROPE_SERVE [COMROPE_LOADGEN]}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
COMROPE_LOADGEN=${2:-${COMROPE_LOADGEN:-$ROOT/build/comrope-loadgen}}
export COMROPE_LOADGEN
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
XFAIL=${STRESS_XFAIL-rss}
rc=0
"$PY" "$ROOT/tests/stress/stress.py" overload --serve "$SERVE" --seconds 15 --capacity-seconds 2 \
  | grep -v '^{' || rc=1
"$PY" "$ROOT/tests/stress/stress.py" soak --serve "$SERVE" --seconds 30 --capacity-seconds 2 \
  --serve-flags "--access-log off --connection-timeout-s 5" --rss-ref-s 10 --fd-settle-s 10 \
  --xfail "$XFAIL" | grep -v '^{' || rc=1
[ "$rc" = 0 ] && echo "ok stress" || echo "FAIL stress"
exit "$rc"
