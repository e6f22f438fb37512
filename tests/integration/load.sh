#!/usr/bin/env bash
# Concurrent load at mixed resolutions with hey: three runs at once, each
# 8 connections for 3 s posting a raw PNG at its own ?resolution=. Every
# response must be 200 (hey's status code distribution, no errors), and the
# batcher must have put several requests, of different resolutions, into
# one batch: comrope_batch_images has observations above 1 and
# comrope_batches_mixed_resolution_total is positive.
#
#   tests/integration/load.sh build/comrope-serve
set -euo pipefail
SERVE=${1:-}
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

start_daemon --access-log off --max-queue-delay-us 2000
P=$(curl -sf "$URL/v1/models" | jq -r '.models[0].patch_size')
T=$(curl -sf "$URL/v1/models" | jq -r '.models[0].training_resolution')
resolutions=("$T" "$((2 * P))x$((4 * P))" "$((3 * P))x$((3 * P))")

pids=()
for r in "${resolutions[@]}"; do
  hey -z 3s -c 8 -t 30 -m POST -T image/png -D "$IMG" "$URL/v1/classify?resolution=$r&top_k=1" \
    >"$WORK/hey-$r.txt" 2>&1 &
  pids+=("$!")
done
OTHER_PIDS+=("${pids[@]}")
for p in "${pids[@]}"; do wait "$p" || fail "hey exited with an error"; done

total=0
for r in "${resolutions[@]}"; do
  out=$WORK/hey-$r.txt
  codes=$(hey_codes "$out")
  [ "$codes" = "200 " ] || { cat "$out" >&2; fail "resolution $r: status codes [$codes], not only 200"; }
  if grep -q '^Error distribution' "$out"; then cat "$out" >&2; fail "resolution $r: hey saw errors"; fi
  n=$(hey_count "$out" 200)
  [ "$n" -gt 0 ] || fail "resolution $r: no response"
  total=$((total + n))
  echo "ok $r: $n responses, all 200 ($(sed -n "s/^ *Requests\/sec:[[:space:]]*//p" "$out") req/s)"
done

batches=$(metric comrope_batches_total)
single=$(metric 'comrope_batch_images_bucket{le="1"}')
mixed=$(metric comrope_batches_mixed_resolution_total)
images=$(metric comrope_batch_images_sum)
echo "$total requests, $images images in $batches batches ($single of one image, $mixed mixed resolutions)"
[ "${images%.*}" -ge "$total" ] || fail "fewer images computed ($images) than answered ($total)"
[ "$batches" -gt "$single" ] || fail "no batch held more than one image"
[ "$mixed" -gt 0 ] || fail "no batch mixed resolutions"
[ "$(metric 'comrope_requests_total{endpoint="v1_classify",code="200"}')" = "$total" ] || fail "200s miscounted"
stop_daemon
echo "load: all passed"
