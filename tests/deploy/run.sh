#!/usr/bin/env bash
# Every container test of tests/deploy, one after the other (they share the
# CPU, the image and podman's storage), each with its time. A test that
# finds podman unable to run exits 77: reported as SKIPPED, loudly, here
# and at the end; any other failure fails the run after the rest ran.
#
#   tests/deploy/run.sh [build/comrope-serve]      (scripts/test.sh runs it)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
SERVE=${1:-build/comrope-serve}
tests=(kserve image compose replicas k8s fresh)
failed=()
skipped=()
total=$SECONDS
for t in "${tests[@]}"; do
  echo "-- tests/deploy/$t.sh"
  start=$SECONDS
  args=()
  [ "$t" = kserve ] && args=("$SERVE")
  bash "tests/deploy/$t.sh" "${args[@]}"
  rc=$?
  case $rc in
    0) echo "-- $t: passed in $((SECONDS - start)) s" ;;
    77) echo "-- $t: SKIPPED after $((SECONDS - start)) s"; skipped+=("$t") ;;
    *) echo "-- $t: FAILED (exit $rc) after $((SECONDS - start)) s"; failed+=("$t") ;;
  esac
done
echo "-- deployment tests: $((SECONDS - total)) s"
# Every source change leaves the previous build's images untagged: those a
# day old go (the layer cache of the last day stays).
if command -v podman >/dev/null && [ "$(id -u)" -eq 0 ]; then
  CONTAINERS_CONF=${COMROPE_CACHE_DIR:-/var/cache/comrope}/containers.conf \
    podman image prune -f --filter until=24h >/dev/null 2>&1 || true
fi
if [ "${#skipped[@]}" -gt 0 ]; then
  echo "##################################################################"
  echo "SKIPPED container tests: ${skipped[*]} (podman cannot run here; see the SKIP lines above)"
  echo "##################################################################"
fi
[ "${#failed[@]}" -eq 0 ] || { echo "FAILED deployment tests: ${failed[*]}" >&2; exit 1; }
