#!/usr/bin/env python3
"""Checks one rendering of the infergate chart beyond the Kubernetes schemas (deploy/helm/test.sh).

usage: check_rendered.py RENDERED.yaml OUT_DIR

Writes OUT_DIR/config.yaml (the ConfigMap's infergate config, for `infergate check-config`) and,
in sidecar mode, OUT_DIR/sidecar-pod.yaml (the sidecar patch applied to a stand-in application
pod, for kubernetes-validate). Prints `kinds: Kind=N ...` and one line per problem; exits 1 on
any problem.
"""

import collections
import hashlib
import os
import re
import sys

import yaml

# The only permissions infergate may get: (apiGroup, resource) -> allowed verbs.
ALLOWED = {
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("", "pods"): {"list", "watch", "patch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}
SCALE_VERBS = {"get", "patch", "update"}

problems = []


def problem(msg):
    problems.append(msg)


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    if not m:
        problem(f"cannot read duration {text!r}")
        return 0
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def check_container(c, config, where, sidecar):
    sc = c.get("securityContext", {})
    for key, want in (("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True), ("runAsNonRoot", True)):
        if sc.get(key) is not want:
            problem(f"{where}: securityContext.{key} is {sc.get(key)!r}, want {want!r}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem(f"{where}: capabilities.drop is not [ALL]")
    env = {e["name"]: e for e in c.get("env", [])}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != path:
            problem(f"{where}: env {name} is not the downward API's {path}")
    args = c.get("args", [])
    if "--config" not in args or args[args.index("--config") + 1] != "/etc/infergate/config.yaml":
        problem(f"{where}: args do not pass --config /etc/infergate/config.yaml")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if "/etc/infergate" not in mounts:
        problem(f"{where}: the config is not mounted at /etc/infergate")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listeners = config["listeners"]
    admin_port = int(listeners["admin"].rsplit(":", 1)[1])
    if ports.get("admin") != admin_port:
        problem(f"{where}: container port admin {ports.get('admin')} != listeners.admin {listeners['admin']}")
    if not sidecar:
        gw_port = int(listeners["gateway"].rsplit(":", 1)[1])
        if ports.get("http") != gw_port:
            problem(f"{where}: container port http {ports.get('http')} != listeners.gateway {listeners['gateway']}")
        if not listeners["gateway"].startswith("0.0.0.0:") or not listeners["admin"].startswith("0.0.0.0:"):
            problem(f"{where}: a gateway pod must listen on 0.0.0.0, not {listeners}")
    elif not listeners["gateway"].startswith("127.0.0.1:"):
        problem(f"{where}: a sidecar's gateway listener must stay on 127.0.0.1, not {listeners['gateway']}")
    probes_expected = not sidecar or listeners["admin"].startswith("0.0.0.0:")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = c.get(probe, {}).get("httpGet", {})
        if probes_expected and (got.get("path") != path or got.get("port") not in ("admin", admin_port)):
            problem(f"{where}: {probe} is not GET {path} on the admin port")
        if not probes_expected and probe in c:
            problem(f"{where}: {probe} on an admin port bound to 127.0.0.1 cannot succeed")


def main():
    rendered, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = collections.Counter(d["kind"] for d in docs)
    print("kinds: " + " ".join(f"{k}={n}" for k, n in sorted(kinds.items())) + f" (total {len(docs)})")
    by_kind = collections.defaultdict(list)
    for d in docs:
        by_kind[d["kind"]].append(d)

    cms = by_kind["ConfigMap"]
    if len(cms) != 1:
        problem(f"{len(cms)} ConfigMaps, want 1")
        return
    cm = cms[0]
    config_text = cm["data"]["config.yaml"]
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(config_text)
    config = yaml.safe_load(config_text)
    checksum = hashlib.sha256(config_text.rstrip("\n").encode()).hexdigest()
    sidecar = "sidecar-patch.yaml" in cm["data"]
    drain = duration_seconds(config["listeners"]["drain_timeout"])

    if sidecar:
        if by_kind["Deployment"] or by_kind["Service"]:
            problem("sidecar mode renders a Deployment or Service")
        patch = yaml.safe_load(cm["data"]["sidecar-patch.yaml"])
        spec = patch["spec"]["template"]["spec"]
        if patch["spec"]["template"]["metadata"]["annotations"].get("checksum/infergate-config") != checksum:
            problem("sidecar patch: checksum/infergate-config is not the sha256 of config.yaml")
        if by_kind["Role"] and spec.get("serviceAccountName") not in [s["metadata"]["name"] for s in by_kind["ServiceAccount"]]:
            problem("sidecar patch: a pool needs the Kubernetes API but the patch does not set the rendered ServiceAccount")
        containers = spec.get("initContainers", []) + spec.get("containers", [])
        if len(containers) != 1:
            problem(f"sidecar patch: {len(containers)} containers, want 1")
        for c in containers:
            check_container(c, config, "sidecar patch", sidecar=True)
            if c in spec.get("initContainers", []) and c.get("restartPolicy") != "Always":
                problem("sidecar patch: an init container without restartPolicy: Always is not a sidecar")
        # The patch applied to a stand-in application pod, for kubernetes-validate.
        pod_spec = dict(spec)
        pod_spec["containers"] = [{"name": "app", "image": "example/app:1"}] + spec.get("containers", [])
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": cm["metadata"]["namespace"]}, "spec": pod_spec}
        with open(os.path.join(out, "sidecar-pod.yaml"), "w") as f:
            yaml.safe_dump(pod, f)
    else:
        deps = by_kind["Deployment"]
        if len(deps) != 1:
            problem(f"{len(deps)} Deployments, want 1")
            return
        dep = deps[0]
        tmpl = dep["spec"]["template"]
        pod = tmpl["spec"]
        if tmpl["metadata"].get("annotations", {}).get("checksum/config") != checksum:
            problem("Deployment: checksum/config is not the sha256 of the ConfigMap's config.yaml")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem("Deployment: pod securityContext lacks runAsNonRoot or seccomp RuntimeDefault")
        c = pod["containers"][0]
        check_container(c, config, "Deployment", sidecar=False)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain + pre_stop:
            problem(f"Deployment: terminationGracePeriodSeconds {grace} <= drain_timeout {drain} + preStop {pre_stop}")
        vol = {v["name"]: v for v in pod["volumes"]}
        if vol.get("config", {}).get("configMap", {}).get("name") != cm["metadata"]["name"]:
            problem("Deployment: the config volume does not mount the chart's ConfigMap")
        sa = pod.get("serviceAccountName")
        if sa not in [s["metadata"]["name"] for s in by_kind["ServiceAccount"]]:
            problem(f"Deployment: serviceAccountName {sa} is not rendered")
        selector = dep["spec"]["selector"]["matchLabels"]
        container_ports = {p["name"] for p in c["ports"]}
        for svc in by_kind["Service"]:
            if svc["spec"]["selector"] != selector:
                problem(f"Service {svc['metadata']['name']}: selector differs from the Deployment's")
            for p in svc["spec"]["ports"]:
                if p["targetPort"] not in container_ports:
                    problem(f"Service {svc['metadata']['name']}: targetPort {p['targetPort']} is no container port")
        for pdb in by_kind["PodDisruptionBudget"]:
            if pdb["spec"]["selector"]["matchLabels"] != selector:
                problem("PodDisruptionBudget: selector differs from the Deployment's")
        for sm in by_kind["ServiceMonitor"]:
            want = sm["spec"]["selector"]["matchLabels"]
            hits = [s for s in by_kind["Service"] if all(s["metadata"]["labels"].get(k) == v for k, v in want.items())]
            ports = {p["name"] for s in hits for p in s["spec"]["ports"]}
            if len(hits) != 1 or sm["spec"]["endpoints"][0]["port"] not in ports:
                problem("ServiceMonitor: does not select exactly the metrics Service and its admin port")

    # RBAC: only the allowed verbs, and exactly what the config needs.
    roles = {r["metadata"]["namespace"]: r for r in by_kind["Role"]}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind["RoleBinding"]}
    if by_kind["ClusterRole"] or by_kind["ClusterRoleBinding"]:
        problem("cluster-wide RBAC rendered")
    if set(roles) != set(bindings):
        problem(f"Roles in {sorted(roles)} but RoleBindings in {sorted(bindings)}")
    granted = set()  # (namespace, group, resource, verb, name or None)
    for ns, role in roles.items():
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    verbs = set(rule["verbs"])
                    allowed = SCALE_VERBS if res.endswith("/scale") else ALLOWED.get((group, res), set())
                    if "*" in verbs or "*" in res or not verbs <= allowed:
                        problem(f"Role in {ns}: {sorted(verbs - allowed)} on {group or 'core'}/{res} is more than infergate needs")
                    if res.endswith("/scale") and not rule.get("resourceNames"):
                        problem(f"Role in {ns}: {res} without resourceNames")
                    for v in verbs:
                        for name in rule.get("resourceNames") or [None]:
                            granted.add((ns, group, res, v, name))
        b = bindings.get(ns)
        if b and (b["roleRef"]["name"] != role["metadata"]["name"] or b["subjects"][0]["name"] not in
                  [s["metadata"]["name"] for s in by_kind["ServiceAccount"]] + [None]):
            problem(f"RoleBinding in {ns}: does not bind the Role to the rendered ServiceAccount")
    release_ns = cm["metadata"]["namespace"]
    needed = set()
    for pool in config["pools"]:
        k = (pool.get("discovery") or {}).get("kubernetes")
        if k is not None:
            ns = k.get("namespace") or release_ns
            needed |= {(ns, "discovery.k8s.io", "endpointslices", v, None) for v in ("list", "watch")}
            needed |= {(ns, "", "pods", v, None) for v in ("list", "watch")}
        prov = (pool.get("scaler") or {}).get("provider")
        if isinstance(prov, dict) and "kubernetes" in prov:
            t = prov["kubernetes"]
            group = t.get("api_version", "apps/v1").rpartition("/")[0]
            plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "LeaderWorkerSet": "leaderworkersets"}.get(t.get("kind", "Deployment"))
            tns = t.get("namespace") or release_ns
            if plural:
                needed |= {(tns, group, f"{plural}/scale", v, t["name"]) for v in SCALE_VERBS}
            needed.add((ns, "", "pods", "patch", None))
    cluster = (config.get("cluster") or {}).get("kubernetes")
    if cluster:
        ns = cluster.get("namespace") or release_ns
        needed |= {(ns, "discovery.k8s.io", "endpointslices", v, None) for v in ("list", "watch")}
        # The peers are the metrics Service's endpoints, on its admin port.
        metrics_svc = [s for s in by_kind["Service"] if s["metadata"]["name"] == cluster["service"]]
        if not metrics_svc or cluster.get("port") not in [p["name"] for p in metrics_svc[0]["spec"]["ports"]]:
            problem(f"cluster.kubernetes names {cluster.get('service')}:{cluster.get('port')}, which is no rendered Service port")
    le = config.get("leader_election") or {}
    if le.get("enabled"):
        ns = le.get("namespace") or release_ns
        needed.add((ns, "coordination.k8s.io", "leases", "create", None))
        needed |= {(ns, "coordination.k8s.io", "leases", v, le["lease_name"]) for v in ("get", "update")}
    for n in sorted(needed - granted, key=str):
        problem(f"RBAC: missing {n[3]} on {n[1] or 'core'}/{n[2]}{' ' + n[4] if n[4] else ''} in namespace {n[0]}")
    for n in sorted(granted - needed, key=str):
        problem(f"RBAC: {n[3]} on {n[1] or 'core'}/{n[2]} in namespace {n[0]} is granted but not needed by the config")


if __name__ == "__main__":
    main()
    for p in problems:
        print(f"PROBLEM: {p}")
    sys.exit(1 if problems else 0)
