#!/usr/bin/env bash
# First command of the README: install the build dependencies, build, and
# start comrope-serve on the bundled default model (models/fashion-comrope-ld,
# the path fixed at build time), in the foreground: its log is on this
# terminal, Ctrl-C drains and stops it. Arguments go to comrope-serve
# (--port 9000, --config FILE, --model DIR, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"

# The port the example below talks to, as the daemon resolves it (flags,
# environment, a --config file, default 8080): --print-config prints the
# resolved settings and loads nothing. Settings it refuses are left for
# the daemon itself to name.
port=$(build/comrope-serve "$@" --print-config 2>/dev/null | sed -n 's/^port \([0-9]*\)$/\1/p') || true
port=${port:-8080}
sample=models/samples/ankle-boot.png
cat <<EOF
== starting build/comrope-serve on port $port (Ctrl-C to stop). In a browser: http://localhost:$port/
   (the web console, unless --console off). From another terminal:
   curl -s -H 'Content-Type: image/png' --data-binary @$sample 'localhost:$port/v1/classify?top_k=3'
EOF
exec build/comrope-serve "$@"
