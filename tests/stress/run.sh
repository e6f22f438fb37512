#!/usr/bin/env bash
# The short overload and soak of tests/stress/stress.py, for CI (about a
# minute and a half): 5x the measured capacity open loop for 15 s (the
# daemon with --max-queue-wait-ms 500, stress.py's default for overload),
# then a 10 s warm-up and a 30 s soak of good, hostile and vanishing
# clients (connection-timeout-s 5 so that connections of clients that
# vanished mid-body are reclaimed within the 10 s the fd check waits).
# Every assertion a correct daemon must pass; those listed in STRESS_XFAIL
# (none by default) are reported as XFAIL instead of failing, and as XPASS
# once they hold. The overload's recovery (normal latency within 1 s of the
# stop) came at +0.10 to +0.70 s with the queue bounded at 500 ms; the one
# miss seen (+1.35 s) was on a host at load average 8 from neighbours,
# where the daemon got 0.4 of a CPU to drain what it had accepted: the
# bound is on the daemon's own queue, not on its share of the CPU. So
# stress.py judges a drain during which other processes held the CPUs
# (host under 10 % idle, the daemon under 3/4 of its CPUs) by the CPU time
# the daemon spent on it, and a daemon that idles while probes wait by the
# wall clock.
# The full runs: tests/stress/stress.py overload / soak (60 s / 20 min).
#
#   tests/stress/run.sh build/comrope-serve [build/comrope-loadgen]
set -euo pipefail
SERVE=${1:?usage: tests/stress/run.sh COMROPE_SERVE [COMROPE_LOADGEN]}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
COMROPE_LOADGEN=${2:-${COMROPE_LOADGEN:-$ROOT/build/comrope-loadgen}}
export COMROPE_LOADGEN
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
XFAIL=${STRESS_XFAIL-}
rc=0
"$PY" "$ROOT/tests/stress/stress.py" overload --serve "$SERVE" --seconds 15 --capacity-seconds 2 \
  --xfail "$XFAIL" | grep -v '^{' || rc=1
"$PY" "$ROOT/tests/stress/stress.py" soak --serve "$SERVE" --seconds 30 --capacity-seconds 2 \
  --serve-flags "--access-log off --connection-timeout-s 5" --warmup-s 10 --fd-settle-s 10 \
  --xfail "$XFAIL" | grep -v '^{' || rc=1
[ "$rc" = 0 ] && echo "ok stress" || echo "FAIL stress"
exit "$rc"
