#!/usr/bin/env bash
# deploy/k8s, the kustomize base, run with `podman kube play`:
#  - the base renders (resources and labels only, so the renderer here is
#    exact; `kubectl kustomize` too where kubectl is installed, with the
#    same kinds) into ConfigMap, Deployment, Service, PDB, HPA;
#  - the ConfigMap, Deployment (one replica: one machine) and Service are
#    played. Podman 4.3 accepts the Service but implements none of it, and
#    publishes each containerPort on the same host port: the test moves
#    the port (ConfigMap COMROPE_PORT and containerPort, one free port) so
#    that a taken 8080 on this machine cannot fail it. It also turns the
#    httpGet probes into `curl` health checks, which the image does not
#    have (and with the named port as 0): so readiness is read over HTTP
#    here, as a kubelet would;
#  - the pod answers ready; its settings come from the ConfigMap (envFrom:
#    batch 8 in the start-up line, the access log in json);
#  - a request is classified through the published port and through the
#    pod's own address (what the Service's endpoints hold);
#  - stopping the pod drains the daemon, exit 0; `podman kube down`.
#
#   tests/deploy/k8s.sh
set -euo pipefail
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
podman_ready
build_image

PORT=$(free_port)
"$PY" - "$ROOT/deploy/k8s" "$PORT" "$WORK/all.yaml" "$WORK/play.yaml" <<'PYEOF'
import os, sys, yaml
base, port, out_all, out_play = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
k = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
extra = set(k) - {"apiVersion", "kind", "labels", "resources"}
assert not extra, "kustomization.yaml uses %s: render it with kustomize" % sorted(extra)
docs = []
for r in k["resources"]:
    docs += [d for d in yaml.safe_load_all(open(os.path.join(base, r))) if d]
for d in docs:
    for l in k.get("labels", []):
        assert not l.get("includeSelectors"), "labels with includeSelectors"
        d.setdefault("metadata", {}).setdefault("labels", {}).update(l["pairs"])
yaml.safe_dump_all(docs, open(out_all, "w"), sort_keys=False)
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"], kinds
play = []
for d in docs:
    if d["kind"] == "Deployment":
        d["spec"]["replicas"] = 1   # one machine
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["ports"][0]["containerPort"] == 8080
        c["ports"][0]["containerPort"] = port
        play.append(d)
    elif d["kind"] == "Service":
        play.append(d)
    elif d["kind"] == "ConfigMap":
        assert d["data"]["COMROPE_PORT"] == "8080"
        d["data"]["COMROPE_PORT"] = str(port)
        play.append(d)
yaml.safe_dump_all(play, open(out_play, "w"), sort_keys=False)
print("k8s: rendered " + ", ".join(kinds))
PYEOF
if command -v kubectl >/dev/null && kubectl kustomize "$ROOT/deploy/k8s" >"$WORK/kubectl.yaml" 2>"$WORK/kubectl.err"; then
  [ "$(grep '^kind:' "$WORK/kubectl.yaml" | sort | tr '\n' ' ')" = "$(grep '^kind:' "$WORK/all.yaml" | sort | tr '\n' ' ')" ] ||
    fail "kubectl kustomize renders other kinds: $(grep '^kind:' "$WORK/kubectl.yaml")"
  echo "ok kubectl kustomize deploy/k8s: the same kinds"
else
  echo "k8s: kubectl kustomize not run ($(command -v kubectl >/dev/null && head -1 "$WORK/kubectl.err" || echo 'no kubectl'))"
fi

down() { podman kube down "$WORK/play.yaml" >/dev/null 2>&1 || true; }
trap 'down; cleanup' EXIT
podman kube play "$WORK/play.yaml" >"$WORK/play.log" 2>&1 || { cat "$WORK/play.log" >&2; fail "podman kube play"; }
CTR=$(podman ps -a --filter label=io.kubernetes.container.name=comrope-serve --format '{{.Names}}' | head -1)
[ -n "$CTR" ] || CTR=$(podman ps -a --format '{{.Names}}' | grep '^comrope-serve-pod.*-comrope-serve$' | head -1)
[ -n "$CTR" ] || fail "no comrope-serve container after kube play: $(podman ps -a --format '{{.Names}}')"
echo "k8s: played, container $CTR"
ready() { [ "$(http_code "http://127.0.0.1:$PORT/v2/health/ready")" = 200 ]; }
poll 60 ready || fail "the pod is not ready on port $PORT: $(podman logs "$CTR" 2>&1 | tail -5)"
podman logs "$CTR" 2>&1 | grep -c 'batch 8 images' >/dev/null || fail "COMROPE_MAX_BATCH_SIZE=8 from the ConfigMap not applied"
IMG=$ROOT/models/samples/ankle-boot.png
classify() {
  curl -sf --max-time 10 -H 'Content-Type: image/png' --data-binary @"$IMG" "$1/v1/classify?top_k=1" | jq -r '.predictions[0].top[0].label'
}
label=$(classify "http://127.0.0.1:$PORT") || fail "nothing through the published port $PORT"
[ "$label" = "Ankle boot" ] || fail "through the published port: '$label'"
POD=$(podman inspect --format '{{.Pod}}' "$CTR")
INFRA=$(podman pod inspect --format '{{.InfraContainerID}}' "$POD")
IP=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$INFRA" | awk '{ print $1 }')
label=$(classify "http://$IP:$PORT") || fail "nothing through the pod's address $IP:$PORT"
[ "$label" = "Ankle boot" ] || fail "through the pod's address: '$label'"
# the line is written once the answer is sent, and podman copies it over later
json_logged() { podman logs "$CTR" 2>&1 | grep -c '"path": *"/v1/classify"\|"/v1/classify"' >/dev/null; }
poll 10 json_logged || fail "no json access log line (COMROPE_ACCESS_LOG=json)"
echo "ok classified through the published port $PORT and the pod's address $IP: $label"

podman pod stop -t 45 "$POD" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR")
[ "$code" = 0 ] || fail "the daemon exited $code when its pod stopped"
podman logs "$CTR" 2>&1 | grep -Ec 'comrope-serve: stopped$|"msg":"stopped"' >/dev/null || fail "no clean stop in the pod's log"
echo "ok pod stop: drained, exit 0"
podman kube down "$WORK/play.yaml" >/dev/null
echo "k8s: all passed"
