#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12 (a container from the
# debian:12-slim base of scripts/container-base.sh, nothing else installed):
#  1. scripts/run.sh alone, in one container: it must install what it
#     needs, build and start the daemon; the curl command it prints, run
#     as printed (from the checkout, against the published port), answers
#     200 with the sample's label, Ankle boot.
#  2. COMROPE_QUICK=1 scripts/test.sh, in a second fresh container (started
#     at the same time): exit 0.
# The checkout copied in is this one's tracked and untracked files, minus
# what git ignores (what a clone plus your edits holds). Downloaded .debs
# are kept between runs in $CACHE/debs/<container> (apt's archive directory is pointed
# there): the install still runs from apt-get update on, only the
# download is saved.
#
#   tests/deploy/fresh.sh [run|test]...     (default: both)
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(run test)
podman_ready

(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf "$WORK/checkout.tar")
echo "fresh: checkout of $(tar -tf "$WORK/checkout.tar" | wc -l) files"
# What every fresh container does first: unpack the checkout, keep .debs.
prelude='set -e
echo "Dir::Cache::Archives \"/var/cache/comrope-debs/\"; APT::Sandbox::User \"root\";" >/etc/apt/apt.conf.d/99comrope-debs
mkdir /src && tar -xf /checkout.tar -C /src && cd /src'
fresh() { # NAME [podman run options...] -- COMMAND
  local name=$1
  shift
  local opts=()
  # a cache per container: apt locks its archive directory
  mkdir -p "$CACHE/debs/$name/partial"
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  track_container "$name"
  # npm's registry may be reached through a TLS proxy whose CA this host
  # trusts by NODE_EXTRA_CA_CERTS (the console test's npm ci failed with
  # SELF_SIGNED_CERT_IN_CHAIN without it): a fresh machine on the same
  # network is given the same trust
  if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
    opts+=(-v "$NODE_EXTRA_CA_CERTS:/etc/comrope-host-ca.crt:ro" -e NODE_EXTRA_CA_CERTS=/etc/comrope-host-ca.crt)
  fi
  podman run -d --name "$name" "${opts[@]}" \
    -v "$WORK/checkout.tar:/checkout.tar:ro" -v "$CACHE/debs/$name:/var/cache/comrope-debs" \
    "$BASE" bash -c "$prelude
$*" >/dev/null
}
# progress: the container's log as it grows, prefixed, less dpkg's lines
# per package
follow() {
  podman logs -f "$1" 2>&1 | grep --line-buffered -Ev '^(Selecting|Preparing|Unpacking|Setting up|\(Reading|Processing triggers)' |
    sed -u "s/^/  [$1] /" &
  OTHER_PIDS+=("$!")
}

# Both containers start at once: one's downloads and installs overlap the
# other's compiling; the run container is removed as soon as it answered.
start=$SECONDS
for step in "${steps[@]}"; do
  case $step in
  run) fresh comrope-fresh-run -p 127.0.0.1::8080 -- scripts/run.sh ;;
  test) fresh comrope-fresh-test -- COMROPE_QUICK=1 scripts/test.sh ;;
  *) fail "unknown step '$step' (run or test)" ;;
  esac
  follow "comrope-fresh-$step"
done
for step in "${steps[@]}"; do
  case $step in
  run)
    printed() { podman logs comrope-fresh-run 2>&1 | grep -c "^   curl .*/v1/classify" >/dev/null; }
    listening() { podman logs comrope-fresh-run 2>&1 | grep -c 'comrope-serve: ready$' >/dev/null; }
    running() { [ "$(podman inspect --format '{{.State.Running}}' comrope-fresh-run)" = true ]; }
    until printed && listening; do
      running || fail "scripts/run.sh exited $(podman inspect --format '{{.State.ExitCode}}' comrope-fresh-run) before serving"
      [ $((SECONDS - start)) -lt 1500 ] || fail "scripts/run.sh not serving after 1500 s"
      sleep 1
    done
    cmd=$(podman logs comrope-fresh-run 2>&1 | sed -n 's/^   \(curl .*\/v1\/classify.*\)$/\1/p' | head -1)
    port=$(podman port comrope-fresh-run 8080/tcp | sed 's/.*://')
    echo "fresh: scripts/run.sh serving after $((SECONDS - start)) s; its command: $cmd"
    # as printed, only the host's port for the container's 8080
    local_cmd=${cmd//localhost:8080/127.0.0.1:$port}
    [ "$local_cmd" != "$cmd" ] || fail "the printed command does not name localhost:8080: $cmd"
    out=$(cd "$ROOT" && bash -c "$local_cmd -w '\n%{http_code}'")
    code=$(tail -1 <<<"$out")
    label=$(head -n -1 <<<"$out" | jq -r '.predictions[0].top[0].label')
    { [ "$code" = 200 ] && [ "$label" = "Ankle boot" ]; } || fail "the printed curl answered $code, label '$label': $out"
    echo "ok README command 1 on a fresh Debian 12: 200, $label ($((SECONDS - start)) s)"
    podman rm -f -t 0 comrope-fresh-run >/dev/null
    ;;
  test)
    code=$(podman wait comrope-fresh-test)
    [ "$code" = 0 ] || fail "COMROPE_QUICK=1 scripts/test.sh exited $code on a fresh Debian 12"
    echo "ok README command 2 (COMROPE_QUICK=1) on a fresh Debian 12 in $((SECONDS - start)) s"
    podman rm -f -t 0 comrope-fresh-test >/dev/null
    ;;
  esac
done
echo "fresh: all passed in $((SECONDS - start)) s"
