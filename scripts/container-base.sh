#!/usr/bin/env bash
# Makes the Debian 12 base image that deploy/Dockerfile, the Prometheus image
# and the fresh-machine test start FROM, without an image registry: a
# bookworm minbase bootstrapped by mmdebstrap from Debian's mirror and
# `podman import`ed as docker.io/library/debian:12-slim (the name a
# `FROM debian:12-slim` resolves to). Like Docker's debian:12-slim it keeps
# no documentation, man pages or translations, and apt keeps no package
# cache or .deb files after an install.
#
# Cached: the tarball under $COMROPE_CACHE_DIR (default /var/cache/comrope
# as root, else ~/.cache/comrope), named by a hash of this recipe; the
# image carries the same key as a label. A recipe change, or a tarball older
# than COMROPE_BASE_MAX_AGE_DAYS (default 30: security updates), rebuilds.
# A second run with both in place does nothing (about a second).
#
#   scripts/container-base.sh          prints the image name on its last line
set -euo pipefail
IMAGE=docker.io/library/debian:12-slim
MIRROR=${COMROPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${COMROPE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
if [ "$(id -u)" -eq 0 ]; then default_cache=/var/cache/comrope; else default_cache=$HOME/.cache/comrope; fi
CACHE=${COMROPE_CACHE_DIR:-$default_cache}
MAX_AGE=${COMROPE_BASE_MAX_AGE_DAYS:-30}

# The recipe: everything that decides the image's content. Its hash is the key.
# shellcheck disable=SC2016  # "$1" in a hook is mmdebstrap's: the chroot
recipe=(
  --variant=minbase --mode=root --format=tar
  # merged /usr without the usrmerge package (which pulls in perl: 40 MB)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # Docker's slim variant: no docs (copyright files stay), man, info, locales
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  # and Docker's apt settings: no translations, no binary package caches,
  # downloaded .debs deleted after an install
  --aptopt='Acquire::Languages "none"'
  --aptopt='Dir::Cache::pkgcache ""'
  --aptopt='Dir::Cache::srcpkgcache ""'
  --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; }'
  --aptopt='APT::Install-Recommends "false"'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* "$1"/var/log/dpkg.log'
  # the sources of Docker's image: the release, its updates, security
  bookworm - "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main"
  "deb $SECURITY bookworm-security main"
)
mkdir -p "$CACHE"
# one bootstrap / import at a time (tests may start together)
exec 9>"$CACHE/container-base.lock"
flock 9

key=$( (printf '%s\n' "${recipe[@]}"; mmdebstrap --version) | sha256sum | cut -c1-16)
tar=$CACHE/debian-12-slim-$key.tar

if [ -f "$tar" ] && [ -z "$(find "$tar" -mtime +"$MAX_AGE")" ]; then
  echo "container-base: cached $tar"
else
  echo "container-base: bootstrapping Debian 12 minbase from $MIRROR (a few minutes) -> $tar"
  rm -f "$CACHE"/debian-12-slim-*.tar
  if ! mmdebstrap -q "${recipe[@]}" >"$tar.part" 2>"$CACHE/mmdebstrap.log"; then
    tail -40 "$CACHE/mmdebstrap.log" >&2
    echo "container-base: mmdebstrap failed (log: $CACHE/mmdebstrap.log)" >&2
    exit 1
  fi
  mv "$tar.part" "$tar"
fi

have=$(podman image inspect --format '{{ index .Config.Labels "org.comrope.base-key" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$key" ]; then
  echo "container-base: $IMAGE is up to date (key $key)"
else
  echo "container-base: importing $tar as $IMAGE"
  # (the image it replaces keeps serving the containers made from it; it
  # is only untagged)
  podman import -q --change "LABEL org.comrope.base-key=$key" --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tar" "$IMAGE" >/dev/null
fi
echo "$IMAGE"
