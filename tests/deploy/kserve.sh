#!/usr/bin/env bash
# deploy/kserve: the daemon started the way the ServingRuntime starts it
# serves the InferenceService's model at /v2/models/<name>/infer.
#  - the InferenceService names the runtime, its model format is one the
#    runtime supports, and the runtime speaks v2;
#  - the runtime's container args, {{.Name}} replaced by the
#    InferenceService's name, /mnt/models holding the bundled model:
#    (a) build/comrope-serve with those args (/mnt/models -> the model's
#        directory, --port -> a free port): no container engine needed;
#    (b) the image with those args exactly, the model mounted at
#        /mnt/models (skipped, loudly, where podman cannot run);
#    each answers a v2 infer request with images BYTES and the
#    classification extension: the sample's top label is Ankle boot, and
#    /v2/models/<name>/ready is 200.
#
#   tests/deploy/kserve.sh [build/comrope-serve]
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
SERVE=${1:-$ROOT/build/comrope-serve}
[ -x "$SERVE" ] || fail "no $SERVE"

# name, args (one per line), from the YAML
read_specs() {
  "$PY" - "$ROOT/deploy/kserve/servingruntime.yaml" "$ROOT/deploy/kserve/inferenceservice.yaml" <<'PYEOF'
import sys, yaml
rt = yaml.safe_load(open(sys.argv[1]))
isvc = yaml.safe_load(open(sys.argv[2]))
m = isvc["spec"]["predictor"]["model"]
assert m["runtime"] == rt["metadata"]["name"], "InferenceService runtime %r is not %r" % (m["runtime"], rt["metadata"]["name"])
fmts = [f["name"] for f in rt["spec"]["supportedModelFormats"]]
assert m["modelFormat"]["name"] in fmts, "model format %r not in %r" % (m["modelFormat"]["name"], fmts)
assert "v2" in rt["spec"]["protocolVersions"] and m.get("protocolVersion") == "v2", "not v2"
name = isvc["metadata"]["name"]
print(name)
for a in rt["spec"]["containers"][0]["args"]:
    print(a.replace("{{.Name}}", name))
PYEOF
}
mapfile -t spec < <(read_specs) || true
[ "${#spec[@]}" -gt 1 ] || fail "could not read deploy/kserve/*.yaml"
NAME=${spec[0]}
ARGS=("${spec[@]:1}")
echo "kserve: InferenceService $NAME, runtime args: ${ARGS[*]}"
case " ${ARGS[*]} " in *" --model /mnt/models "*) ;; *) fail "the runtime does not load /mnt/models" ;; esac

B64=$(base64 -w0 "$ROOT/models/samples/ankle-boot.png")
printf '{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%s"]}],
  "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}' "$B64" >"$WORK/req.json"
check_infer() { # BASE-URL WHAT
  local got top
  [ "$(http_code "$1/v2/models/$NAME/ready")" = 200 ] || fail "$2: /v2/models/$NAME/ready not 200"
  got=$(curl -sf --max-time 10 -H 'Content-Type: application/json' --data-binary @"$WORK/req.json" \
    "$1/v2/models/$NAME/infer") || fail "$2: POST /v2/models/$NAME/infer failed"
  top=$(jq -r '.outputs[0].data[0]' <<<"$got" | cut -d: -f3-)
  [ "$top" = "Ankle boot" ] || fail "$2: top label '$top': $got"
  [ "$(jq -r '.model_name' <<<"$got")" = "$NAME" ] || fail "$2: model_name in $got"
  echo "ok $2 serves /v2/models/$NAME/infer (Ankle boot)"
}

# (a) the binary, the args as given, /mnt/models and the port mapped
PORT=$(free_port)
local_args=()
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  a=${ARGS[i]}
  [ "$a" = /mnt/models ] && a=$ROOT/models/fashion-comrope-ld
  [ "$i" -gt 0 ] && [ "${ARGS[i - 1]}" = --port ] && a=$PORT
  local_args+=("$a")
done
"$SERVE" "${local_args[@]}" --host 127.0.0.1 2>"$WORK/serve.log" &
OTHER_PIDS+=("$!")
ready() { [ "$(http_code "http://127.0.0.1:$PORT/v2/health/ready")" = 200 ]; }
poll 30 ready || fail "daemon with the runtime's args not ready: $(tail -5 "$WORK/serve.log")"
check_infer "http://127.0.0.1:$PORT" "comrope-serve ${local_args[*]}"

# (b) the image, the args exactly, the model at /mnt/models
podman_ready
build_image
podman run -d --name comrope-kserve-test --read-only -p 127.0.0.1::8080 \
  -v "$ROOT/models/fashion-comrope-ld:/mnt/models:ro" "$IMAGE" "${ARGS[@]}" >/dev/null 2>"$WORK/run.err" ||
  fail "podman run: $(cat "$WORK/run.err")"
track_container comrope-kserve-test
cport=$(podman port comrope-kserve-test 8080/tcp | sed 's/.*://')
cready() { [ "$(http_code "http://127.0.0.1:$cport/v2/health/ready")" = 200 ]; }
poll 60 cready || fail "the image with the runtime's args not ready: $(podman logs comrope-kserve-test 2>&1 | tail -5)"
check_infer "http://127.0.0.1:$cport" "the image with ${ARGS[*]}"
echo "kserve: all passed"
