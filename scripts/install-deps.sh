#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs. The names live in one
# place, scripts/packages.txt, tagged by group:
#   build  compile the engine, the CLI and the daemon
#   test   run the whole test suite (ctest)
#   tools  the Python tools in tools/ (reference model, fixtures, training)
#   runtime  the shared libraries comrope-serve runs with (deploy/Dockerfile)
#   runtime-onednn  and those of a build with oneDNN (not in the image)
#   bench  bench/run.sh on top of build and tools (node, npm, taskset)
# Usage: scripts/install-deps.sh [GROUP...]   (default: build test)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(build test)

wanted=()
for g in "${groups[@]}"; do
  mapfile -t names < <(awk -v g="$g" '$1 == g { print $2 }' "$here/packages.txt")
  if [ ${#names[@]} -eq 0 ]; then
    echo "install-deps: unknown group '$g' (see scripts/packages.txt)" >&2
    exit 2
  fi
  wanted+=("${names[@]}")
done

# an installed package that Provides a name counts too (e.g. NodeSource's
# nodejs provides, and conflicts with, Debian's npm)
provided=$(dpkg-query -W -f='${Status}\t${Provides}\n' 2>/dev/null |
  awk -F'\t' '$1 == "install ok installed" { print $2 }' | tr ',' '\n' |
  sed -e 's/^ *//' -e 's/ .*//' | sort -u)
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && continue
  grep -qx -- "$p" <<<"$provided" && continue
  missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#wanted[@]} packages of [${groups[*]}] are installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Another apt or dpkg (unattended-upgrades, a second install) holds the
# lock: wait for it (up to 10 minutes) instead of failing at once.
lock=(-o DPkg::Lock::Timeout=600)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}"
