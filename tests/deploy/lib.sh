# shellcheck shell=bash
# lib.sh: what the container tests (tests/deploy/*.sh) share (sourced).
#
#   . tests/deploy/lib.sh          sets ROOT, WORK, CACHE; traps cleanup
#   podman_ready                   podman can run a container here, or the
#                                  test exits 77 (ctest: skipped) with a
#                                  loud SKIP line saying why
#   build_image                    deploy/Dockerfile -> $IMAGE (built once
#                                  per source state: the tag names it)
#   fail MESSAGE / poll SECONDS CMD... / http_code ARGS...
#   track_container NAME           removed (podman rm -f) at exit
#
# Podman here: rootful, cgroup v1 (crun refuses "hybrid" cgroups: runc is
# used then), and a process that may not raise its rlimits (no
# CAP_SYS_RESOURCE) while podman's defaults ask for nofile 1048576: the
# generated containers.conf sets ulimits this shell can grant. Podman reads
# it through CONTAINERS_CONF, exported here, so the machine's own
# configuration is left alone.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ "$(id -u)" -eq 0 ]; then CACHE=${COMROPE_CACHE_DIR:-/var/cache/comrope}; else CACHE=${COMROPE_CACHE_DIR:-$HOME/.cache/comrope}; fi
export COMROPE_CACHE_DIR=$CACHE
WORK=$(mktemp -d)
# shellcheck disable=SC2034  # used by the scripts that source this file
PY=/usr/bin/python3
# poll, http_code, free_port (a TCP port free on 127.0.0.1 for a published port)
# shellcheck source=tests/common.sh
. "$ROOT/tests/common.sh"
BASE=docker.io/library/debian:12-slim
CONTAINERS=()
OTHER_PIDS=()

cleanup() {
  local c p
  for p in "${OTHER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# A command that fails outside a check of its own (set -e) says where.
set -E
trap 'echo "FAIL: $(basename "$0") line $LINENO: $BASH_COMMAND" >&2' ERR

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

skip() {
  echo "##################################################################" >&2
  echo "SKIP $(basename "$0"): $*" >&2
  echo "##################################################################" >&2
  exit 77
}

track_container() { CONTAINERS+=("$1"); }

# The containers.conf that works here: the first of runtime crun / runc
# that starts a container with ulimits this shell may set.
podman_conf() {
  local conf=$CACHE/containers.conf nofile nproc rt out
  nofile="$(ulimit -Sn):$(ulimit -Hn)"
  nproc=$(ulimit -Hu)
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  mkdir -p "$CACHE"
  for rt in crun runc; do
    command -v "$rt" >/dev/null || continue
    cat >"$conf.try" <<CONF
# written by tests/deploy/lib.sh: see its header
[containers]
default_ulimits = ["nofile=$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "$rt"
CONF
    if out=$(CONTAINERS_CONF=$conf.try podman run --rm --network none "$BASE" true 2>&1); then
      mv "$conf.try" "$conf"
      export CONTAINERS_CONF=$conf
      echo "podman: runtime $rt, ulimits nofile=$nofile nproc=$nproc ($conf)"
      return 0
    fi
    echo "podman: runtime $rt does not work here, trying the next: $out" >&2
  done
  rm -f "$conf.try"
  return 1
}

podman_ready() {
  command -v podman >/dev/null || skip "podman is not installed (scripts/packages.txt, group test)"
  [ "$(id -u)" -eq 0 ] || skip "the container tests run podman as root (rootful networking and ports); uid $(id -u)"
  local out
  out=$(podman info 2>&1) || skip "podman info fails: $(tail -3 <<<"$out")"
  "$ROOT/scripts/container-base.sh" >"$WORK/base.log" 2>&1 || {
    cat "$WORK/base.log" >&2
    skip "no Debian base image (scripts/container-base.sh failed: is deb.debian.org reachable?)"
  }
  tail -2 "$WORK/base.log" | head -1
  podman_conf || skip "podman cannot start a container here (see the runtime errors above)"
}

# build_image: deploy/Dockerfile -> $IMAGE, also tagged
# localhost/comrope-serve:0.1.0 (the name compose and k8s files use).
# Docker format: the OCI image format has no HEALTHCHECK.
# Docker format: the OCI image format has no HEALTHCHECK.
# Every test calls it; podman's layer cache makes the calls after the first
# cost seconds (the build context is what Dockerfile.dockerignore leaves).
build_image() {
  IMAGE=localhost/comrope-serve:test
  export IMAGE
  echo "image: podman build -f deploy/Dockerfile (minutes when the sources changed, else cached)"
  local start=$SECONDS
  (cd "$ROOT" && podman build --pull=never --layers --format docker -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" -t "$IMAGE" .) >"$WORK/build.log" 2>&1 || {
    tail -40 "$WORK/build.log" >&2
    fail "podman build"
  }
  podman tag "$IMAGE" localhost/comrope-serve:0.1.0
  echo "image: $IMAGE ready in $((SECONDS - start)) s"
}
