#!/usr/bin/env bash
# Lints what deploys and tests comrope-serve (the container tests in
# tests/deploy/ run it; these checks need no container engine):
#  - deploy/**/*.yml, *.yaml (compose, Prometheus, k8s, KServe): yamllint --strict
#  - deploy/prometheus/prometheus.yml: promtool check config
#  - deploy/haproxy/haproxy.cfg: haproxy -c (names resolved at run time)
#  - deploy/grafana/dashboards/*.json: valid JSON, every query on the
#    provisioned datasource (tests/deploy/compose.sh runs the queries)
#  - scripts/*.sh, tests/*.sh, tests/integration/*.sh, tests/deploy/*.sh,
#    .ci/run: ShellCheck
#  - the drain bound is shorter than every stop timeout (k8s grace period,
#    systemd TimeoutStopSec, compose stop_grace_period)
#  - the k8s Deployment is Guaranteed QoS (requests == limits), as its
#    comment says, and only the pod template carries scrape annotations
#  - every library comrope-serve links is in the `runtime` (or, built with
#    oneDNN, `runtime-onednn`) group of
#    scripts/packages.txt (the Dockerfile's last stage installs only those)
#  - deploy/systemd/comrope-serve.service: systemd-analyze verify, when
#    systemd-analyze is there (ExecStart pointed at the binary just built)
#
#   tests/lint_deploy.sh [build/comrope-serve]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE=${1:-build/comrope-serve}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
PY=/usr/bin/python3

mapfile -t yaml < <(find deploy -name '*.yml' -o -name '*.yaml' | sort)
[ "${#yaml[@]}" -ge 10 ] || fail "expected the compose, Prometheus, Grafana, k8s and KServe files, found ${yaml[*]}"
yamllint --strict "${yaml[@]}" || fail "yamllint"
echo "ok yamllint: ${yaml[*]}"

promtool check config deploy/prometheus/prometheus.yml >/dev/null || fail "promtool check config deploy/prometheus/prometheus.yml"
echo "ok promtool check config deploy/prometheus/prometheus.yml"

if command -v haproxy >/dev/null; then
  # the replicas' names resolve only on the compose network: checked with
  # those addresses replaced
  sed -e 's/comrope-serve-[0-9]:8080/127.0.0.1:8080/' -e '/resolvers compose$/d' -e 's/ resolvers compose//' \
    -e '/parse-resolv-conf/d' -e '/hold valid/d' -e '/hold obsolete/d' deploy/haproxy/haproxy.cfg >"$WORK/haproxy.cfg"
  haproxy -c -q -f "$WORK/haproxy.cfg" || fail "haproxy -c deploy/haproxy/haproxy.cfg"
  echo "ok haproxy -c deploy/haproxy/haproxy.cfg"
else
  echo "skip haproxy -c (no haproxy)"
fi

for d in deploy/grafana/dashboards/*.json; do
  jq -e '[.panels[].targets[] | select(.datasource.uid != "prometheus" or (.expr | length) == 0)] | length == 0' "$d" >/dev/null ||
    fail "$d: a query without an expression or on another datasource than uid prometheus"
done
echo "ok Grafana dashboards: every query has an expression on the provisioned datasource"

mapfile -t scripts < <(ls scripts/*.sh tests/*.sh tests/integration/*.sh tests/console/*.sh tests/stress/*.sh \
  tests/deploy/*.sh bench/*.sh .ci/run)
shellcheck -x "${scripts[@]}" || fail "shellcheck"
echo "ok shellcheck: ${#scripts[@]} scripts"

# The drain bound against every stop timeout. (seconds; first match)
value() { sed -n "s/$2/\\1/p" "$1" | head -1; }
drain_env=$(value deploy/systemd/comrope-serve.env '^COMROPE_DRAIN_TIMEOUT_S=\([0-9]*\)$')
stop_sec=$(value deploy/systemd/comrope-serve.service '^TimeoutStopSec=\([0-9]*\)s*$')
[ -n "$drain_env" ] || fail "systemd: no COMROPE_DRAIN_TIMEOUT_S in comrope-serve.env"
[ -n "$stop_sec" ] || fail "systemd: no TimeoutStopSec"
[ "$stop_sec" -gt "$drain_env" ] || fail "systemd: TimeoutStopSec $stop_sec <= drain $drain_env"
drain_k8s=$(value deploy/k8s/configmap.yaml '.*COMROPE_DRAIN_TIMEOUT_S: "\([0-9]*\)"')
grace=$(value deploy/k8s/deployment.yaml '.*terminationGracePeriodSeconds: \([0-9]*\)$')
prestop=$(grep -A3 'preStop:' deploy/k8s/deployment.yaml | value /dev/stdin '.*"sleep", "\([0-9]*\)".*')
for v in drain_k8s grace prestop; do [ -n "${!v}" ] || fail "k8s: no $v in deployment.yaml"; done
[ "$grace" -gt $((drain_k8s + prestop)) ] || fail "k8s: grace $grace <= preStop $prestop + drain $drain_k8s"
for f in deploy/compose.yaml deploy/compose.replicas.yaml; do
  drain_compose=$(value "$f" '.*COMROPE_DRAIN_TIMEOUT_S: "\([0-9]*\)"')
  grace_compose=$(value "$f" '.*stop_grace_period: \([0-9]*\)s$')
  for v in drain_compose grace_compose; do [ -n "${!v}" ] || fail "compose: no $v in $f"; done
  [ "$grace_compose" -gt "$drain_compose" ] || fail "$f: stop_grace_period $grace_compose <= drain $drain_compose"
done
# Guaranteed QoS: every resource requested as much as its limit.
"$PY" - deploy/k8s/deployment.yaml deploy/k8s/service.yaml <<'PYEOF' || fail "k8s: see above"
import sys, yaml
dep = yaml.safe_load(open(sys.argv[1]))
pod = dep["spec"]["template"]
for c in pod["spec"]["containers"]:
    r = c["resources"]
    assert r["requests"] == r["limits"], "%s: requests %s != limits %s: not Guaranteed QoS" % (c["name"], r["requests"], r["limits"])
    for p in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert p in c, "%s: no %s" % (c["name"], p)
assert "prometheus.io/scrape" in pod["metadata"].get("annotations", {}), "pod template not annotated for scraping"
assert "prometheus.io/scrape" not in dep["metadata"].get("annotations", {}), "Deployment annotated too"
for d in yaml.safe_load_all(open(sys.argv[2])):
    assert "prometheus.io/scrape" not in (d["metadata"].get("annotations") or {}), "%s annotated too: scraped twice" % d["kind"]
PYEOF
echo "ok k8s: Guaranteed QoS, three probes, scrape annotations on the pod template only"
echo "ok stop timeouts exceed the drain: systemd $stop_sec > $drain_env, k8s $grace > $prestop + $drain_k8s, compose $grace_compose > $drain_compose"

if [ -x "$SERVE" ]; then
  # a build with oneDNN also links the runtime-onednn group (not in the image)
  mapfile -t runtime < <(awk '$1 == "runtime" || $1 == "runtime-onednn" { print $2 }' scripts/packages.txt)
  missing=()
  while read -r lib; do
    path=$(ldd "$SERVE" | awk -v l="$lib" '$1 == l { print $3 }')
    [ -n "$path" ] || fail "ldd does not resolve $lib"
    # dpkg knows one spelling of the path: /lib vs /usr/lib (merged /usr),
    # or the link's target.
    pkg=
    for p in "$path" "$(readlink -f "$path")" "/usr$path" "${path#/usr}"; do
      pkg=$(dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    case " ${runtime[*]} libc6 libgcc-s1 " in
      *" $pkg "*) ;;
      *) missing+=("$lib (${pkg:-no package})") ;;
    esac
  done < <(readelf -d "$SERVE" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  [ "${#missing[@]}" -eq 0 ] || fail "linked but not in the runtime group of scripts/packages.txt: ${missing[*]}"
  echo "ok every library comrope-serve links comes from the runtime group (${runtime[*]})"
else
  echo "skip runtime libraries: no $SERVE"
fi

# The unit's start-up contract with main.c: Type=notify (READY=1 after the
# model), restarts on a failure except the bad model / config statuses 1
# and 2 -- so a taken port (3) is retried.
unit=deploy/systemd/comrope-serve.service
grep -qx 'Type=notify' "$unit" || fail "systemd: not Type=notify"
grep -qx 'Restart=on-failure' "$unit" || fail "systemd: not Restart=on-failure"
prevent=$(value "$unit" '^RestartPreventExitStatus=\(.*\)$')
[ "$prevent" = "1 2" ] || fail "systemd: RestartPreventExitStatus='$prevent', expected '1 2' (3, a taken port, restarts)"
echo "ok systemd: Type=notify, Restart=on-failure, no restart on 1 2"

if command -v systemd-analyze >/dev/null && [ -x "$SERVE" ]; then
  serve_abs=$(readlink -f "$SERVE")
  sed "s|^ExecStart=.*|ExecStart=$serve_abs|" deploy/systemd/comrope-serve.service >"$WORK/comrope-serve.service"
  out=$(systemd-analyze verify "$WORK/comrope-serve.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify printed: $out"
  echo "ok systemd-analyze verify deploy/systemd/comrope-serve.service"
else
  echo "skip systemd-analyze verify (no systemd-analyze)"
fi
echo "lint_deploy: all passed"
