#!/usr/bin/env bash
# The container image (deploy/Dockerfile), built with podman and run:
#  - it adds less than 80 MB to debian:12-slim (the layers are listed);
#  - it carries the OCI labels;
#  - `podman run --read-only` (no tmpfs either) as its non-root user 10001,
#    all capabilities dropped, --model pointing at a checkpoint mounted
#    read-only: the health check (comrope-serve --health-probe, no curl)
#    turns healthy; the time from `podman run` to healthy is printed;
#  - an image is classified through the published port, with the label;
#  - the health check follows the port: COMROPE_PORT=9001, and --port 9002
#    given to the container (the probe reads PID 1's arguments);
#  - `podman stop` (SIGTERM) drains and exits 0.
#
#   tests/deploy/image.sh
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
podman_ready
build_image

# --- size and labels ---------------------------------------------------------
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base=$(podman image inspect --format '{{.Size}}' "$BASE")
added=$(((size - base) / 1000000))
echo "image: $((size / 1000000)) MB, $added MB over debian:12-slim ($((base / 1000000)) MB); layers:"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 | head -12
[ "$added" -lt 80 ] || fail "the image adds $added MB to debian:12-slim (at most 80)"
for l in title description version revision documentation base.name; do
  v=$(podman image inspect --format "{{ index .Labels \"org.opencontainers.image.$l\" }}" "$IMAGE")
  { [ -n "$v" ] && [ "$v" != "<no value>" ]; } || fail "no label org.opencontainers.image.$l"
done
echo "ok OCI labels"
podman run --rm --entrypoint sh "$IMAGE" -c '! command -v curl' >/dev/null ||
  fail "curl is in the image (the health check must not need it)"

# --- run: read-only, non-root, a mounted checkpoint --------------------------
healthy() { podman healthcheck run "$1" >/dev/null 2>&1; }
# (without systemd podman cannot schedule the checks itself and says so on
# stderr; the test runs them with `podman healthcheck run`)
start=$(date +%s%N)
podman run -d --name comrope-image-test --read-only --read-only-tmpfs=false --cap-drop ALL \
  --security-opt no-new-privileges -p 127.0.0.1::8080 \
  -v "$ROOT/models/fashion-comrope-ld:/models/fashion:ro" \
  "$IMAGE" --model /models/fashion --model-name fashion >/dev/null 2>"$WORK/run.err" ||
  fail "podman run: $(cat "$WORK/run.err")"
track_container comrope-image-test
port=$(podman port comrope-image-test 8080/tcp | sed 's/.*://')
ready() { [ "$(http_code "http://127.0.0.1:$port/v2/health/ready")" = 200 ]; }
poll 60 ready || { podman logs comrope-image-test >&2; fail "not ready in 60 s"; }
ready_ms=$((($(date +%s%N) - start) / 1000000))
poll 60 healthy comrope-image-test || { podman logs comrope-image-test >&2; fail "not healthy in 60 s"; }
healthy_ms=$((($(date +%s%N) - start) / 1000000))
echo "ok ready $ready_ms ms, healthy (podman's check) $healthy_ms ms after podman run (--read-only, --cap-drop ALL, mounted model)"
[ "$(podman inspect --format '{{.State.Health.Status}}' comrope-image-test)" = healthy ] ||
  fail "podman inspect does not say healthy"
uid=$(podman top comrope-image-test huser | tail -1 | tr -d ' ')
[ "$uid" = 10001 ] || fail "the daemon runs as uid '$uid', expected 10001"
out=$(curl -sf --max-time 10 -H 'Content-Type: image/png' --data-binary @"$ROOT/models/samples/ankle-boot.png" \
  "http://127.0.0.1:$port/v1/classify?top_k=1") || fail "classify through published port $port"
label=$(jq -r '.predictions[0].top[0].label' <<<"$out")
[ "$label" = "Ankle boot" ] || fail "ankle-boot.png classified as '$label': $out"
name=$(curl -sf "http://127.0.0.1:$port/v1/models" | jq -r '.models[0].name') || fail "GET /v1/models"
[ "$name" = fashion ] || fail "served model name '$name', expected fashion"
echo "ok classified through the published port ($label), model from the mount"

# --- the health check follows the port ------------------------------------------
podman run -d --name comrope-image-env -e COMROPE_PORT=9001 "$IMAGE" >/dev/null 2>&1
track_container comrope-image-env
podman run -d --name comrope-image-flag "$IMAGE" --port 9002 >/dev/null 2>&1
track_container comrope-image-flag
poll 60 healthy comrope-image-env || fail "COMROPE_PORT=9001: not healthy: $(podman logs comrope-image-env 2>&1 | tail -5)"
poll 60 healthy comrope-image-flag || fail "--port 9002: not healthy: $(podman logs comrope-image-flag 2>&1 | tail -5)"
podman logs comrope-image-flag 2>&1 | grep -c 'listening on 0.0.0.0:9002' >/dev/null || fail "--port 9002 not used"
echo "ok the health check follows COMROPE_PORT and --port"
podman rm -f -t 0 comrope-image-env comrope-image-flag >/dev/null

# --- podman stop drains, exit 0 --------------------------------------------------
podman stop -t 45 comrope-image-test >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' comrope-image-test)
podman logs comrope-image-test >"$WORK/log" 2>&1
[ "$code" = 0 ] || { tail "$WORK/log" >&2; fail "exit code $code after podman stop"; }
grep -q 'SIGTERM: draining' "$WORK/log" || fail "no drain in the log"
grep -Eq 'comrope-serve: stopped$|"msg":"stopped"' "$WORK/log" || fail "no clean stop in the log"
echo "ok podman stop: drained, exit 0"
echo "image: all passed (added $added MB, ready in $ready_ms ms, healthy in $healthy_ms ms)"
