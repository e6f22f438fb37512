#!/usr/bin/env bash
# The web console's files over plain HTTP (no browser: tests/console/ has
# the Chromium test):
#   GET / and every file the page names: 200, their content types, the
#   Content-Security-Policy and its companions; the samples byte for byte
#   the PNGs of models/samples/, listed in samples.json; HEAD; 405 for
#   POST; 404 for an unknown console path; counted as endpoint "console"
#   --api-key-file: the page public, the API still 401
#   --console off: 404 for all of it, the API unchanged
#
#   tests/integration/console.sh build/comrope-serve
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
SAMPLES=$ROOT/models/samples

# headers URL: the response headers, lower-cased names
headers() { curl -s -D - -o /dev/null --max-time 10 "$1" | tr -d '\r' | sed 's/^\([^:]*\):/\L\1:/'; }
header() { headers "$1" | sed -n "s/^$2: //p"; }

start_daemon
[ "$(http_code "$URL/")" = 200 ] || fail "GET /: not 200"
[ "$(header "$URL/" content-type)" = "text/html; charset=utf-8" ] || fail "GET /: not text/html"
csp=$(header "$URL/" content-security-policy)
for directive in "default-src 'none'" "script-src 'self'" "style-src 'self'" "connect-src 'self'" \
  "frame-ancestors 'none'" "base-uri 'none'"; do
  grep -qF "$directive" <<<"$csp" || fail "CSP lacks \"$directive\": $csp"
done
grep -q "unsafe" <<<"$csp" && fail "CSP allows something unsafe: $csp"
[ "$(header "$URL/" x-content-type-options)" = nosniff ] || fail "GET /: no X-Content-Type-Options: nosniff"

# Every file the page and its modules name is served, with its type and the CSP.
curl -sf "$URL/" >"$WORK/index.html" || fail "GET / failed"
mapfile -t refs < <(grep -o '\(src\|href\)="/[^"]*"' "$WORK/index.html" | sed 's/.*="\(.*\)"/\1/')
[ ${#refs[@]} -ge 3 ] || fail "index.html names ${#refs[@]} files, expected its CSS, script and icon"
for f in "${refs[@]}"; do
  curl -sf "$URL$f" >"$WORK/asset" || fail "GET $f (named by index.html): not 200"
  type=$(header "$URL$f" content-type)
  case $f in
    *.css) [ "$type" = "text/css; charset=utf-8" ] ;;
    *.mjs) [ "$type" = "text/javascript; charset=utf-8" ] ;;
    *.svg) [ "$type" = "image/svg+xml" ] ;;
    *) false ;;
  esac || fail "GET $f: content type \"$type\""
  [ -n "$(header "$URL$f" content-security-policy)" ] || fail "GET $f: no CSP"
  if [[ $f == *.mjs ]]; then # the modules' own imports
    while read -r m; do
      [ "$(http_code "$URL/console/$m")" = 200 ] || fail "GET /console/$m (imported by $f): not 200"
    done < <(grep -o "from '\./[^']*'" "$WORK/asset" | sed "s/from '\.\/\(.*\)'/\1/")
  fi
done
# No file of the page comes from elsewhere.
grep -qiE '(src|href)="(https?:)?//' "$WORK/index.html" && fail "index.html names a file from another origin"

# The samples: listed, and the very bytes of models/samples/.
listed=$(curl -sf "$URL/console/samples.json" | jq -r '.[]' | sort | tr '\n' ' ')
samples=("$SAMPLES"/*.png)
expected=$(for f in "${samples[@]}"; do basename "$f"; done | sort | tr '\n' ' ')
[ "$listed" = "$expected" ] || fail "samples.json lists \"$listed\", models/samples/ has \"$expected\""
for f in "${samples[@]}"; do
  name=$(basename "$f")
  curl -sf "$URL/console/samples/$name" >"$WORK/sample" || fail "GET /console/samples/$name: not 200"
  cmp -s "$WORK/sample" "$f" || fail "/console/samples/$name differs from models/samples/$name"
  [ "$(header "$URL/console/samples/$name" content-type)" = image/png ] || fail "$name: not image/png"
done

# HEAD: the headers alone; POST: 405 with the API's JSON error; unknown: 404.
[ "$(curl -s -I -o /dev/null -w '%{http_code} %{size_download}' "$URL/")" = "200 0" ] || fail "HEAD /: not 200 without a body"
[ "$(http_code -X POST --data x "$URL/")" = 405 ] || fail "POST /: not 405"
curl -s -X POST --data x "$URL/" | jq -e '.error == "method POST is not allowed on / (allowed: GET, HEAD)"' >/dev/null ||
  fail "POST /: not the API's error body"
[ "$(http_code "$URL/console/nope.js")" = 404 ] || fail "GET /console/nope.js: not 404"
served=$(metric 'comrope_requests_total{endpoint="console",code="200"}') || fail "no console requests in /metrics"
[ "${served%.*}" -ge 10 ] || fail "console requests counted: $served"
stop_daemon

# With tokens required: the page is public, its API calls are not.
echo "console-test-token" >"$WORK/keys"
start_daemon --api-key-file "$WORK/keys"
[ "$(http_code "$URL/")" = 200 ] || fail "with --api-key-file, GET /: not 200"
[ "$(http_code "$URL/console/app.mjs")" = 200 ] || fail "with --api-key-file, GET /console/app.mjs: not 200"
[ "$(http_code "$URL/v1/models")" = 401 ] || fail "with --api-key-file, GET /v1/models: not 401"
stop_daemon

# --console off: none of it, the API as before.
start_daemon --console off
for p in / /console/app.mjs /console/samples.json "/console/samples/$(basename "${samples[0]}")"; do
  [ "$(http_code "$URL$p")" = 404 ] || fail "--console off, GET $p: not 404"
done
[ "$(http_code "$URL/v1/models")" = 200 ] || fail "--console off, GET /v1/models: not 200"
stop_daemon
echo "console.sh: all passed"
