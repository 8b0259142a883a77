{{/* Chart name, truncated to the 63 characters Kubernetes allows in a name. */}}
{{- define "infergate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name: <release>-<chart>, or just <release> if it already contains the chart name. */}}
{{- define "infergate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "infergate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infergate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "infergate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "infergate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "infergate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "infergate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "infergate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end }}

{{/* Fails on a mode the chart does not know. */}}
{{- define "infergate.mode" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) }}
{{- fail (printf "mode must be gateway or sidecar, not %q" (toString .Values.mode)) }}
{{- end }}
{{- .Values.mode }}
{{- end }}

{{/*
The infergate config as YAML: `.Values.config` with the listeners filled from the chart's ports
and, with leader election on, a default Lease name. Every template that needs the config (the
ConfigMap, its checksum, the RBAC rules) renders it through this one definition.
*/}}
{{- define "infergate.config" -}}
{{- $mode := include "infergate.mode" . -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $listeners := get $cfg "listeners" | default dict -}}
{{- range $key := list "gateway" "admin" "keda" -}}
{{- if hasKey $listeners $key -}}
{{- fail (printf "config.listeners.%s is set by the chart: use ports.%s (gateway mode) or sidecar.%sPort (sidecar mode)" $key $key $key) -}}
{{- end -}}
{{- end -}}
{{- if eq $mode "sidecar" -}}
{{- $_ := set $listeners "gateway" (printf "127.0.0.1:%d" (int .Values.sidecar.gatewayPort)) -}}
{{- $_ := set $listeners "admin" (printf "%s:%d" (ternary "0.0.0.0" "127.0.0.1" .Values.sidecar.adminOnAllInterfaces) (int .Values.sidecar.adminPort)) -}}
{{- else -}}
{{- $_ := set $listeners "gateway" (printf "0.0.0.0:%d" (int .Values.ports.gateway)) -}}
{{- $_ := set $listeners "admin" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- if .Values.keda.enabled -}}
{{- $_ := set $listeners "keda" (printf "0.0.0.0:%d" (int .Values.keda.port)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $listeners "drain_timeout" -}}
{{- fail "config.listeners.drain_timeout is set by the chart: use drainTimeoutSeconds" -}}
{{- end -}}
{{- $_ := set $listeners "drain_timeout" (printf "%ds" (int .Values.drainTimeoutSeconds)) -}}
{{- $_ := set $cfg "listeners" $listeners -}}
{{- $le := get $cfg "leader_election" | default dict -}}
{{- if and (get $le "enabled") (not (get $le "lease_name")) -}}
{{- $_ := set $le "lease_name" (printf "%s-leader" (include "infergate.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}
{{- if $le -}}
{{- $_ := set $cfg "leader_election" $le -}}
{{- end -}}
{{- /* Several gateway replicas: each reads the others' own load through the metrics Service's
endpoints (their admin port), so that every scaler sees the cluster's signal. */ -}}
{{- if and (eq $mode "gateway") (gt (int .Values.replicaCount) 1) .Values.metricsService.enabled (not (hasKey $cfg "cluster")) -}}
{{- $_ := set $cfg "cluster" (dict "kubernetes" (dict "service" (printf "%s-metrics" (include "infergate.fullname" .)) "port" "admin")) -}}
{{- end -}}
{{- if not (get $cfg "pools") -}}
{{- fail "config.pools: at least one model pool is needed" -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/*
Namespace → RBAC rules that the config needs, as YAML (see rbac in values.yaml). Also checks
that a Kubernetes scale provider with several gateway replicas has leader election on.
*/}}
{{- define "infergate.rbacRules" -}}
{{- $cfg := include "infergate.config" . | fromYaml -}}
{{- $relNs := .Release.Namespace -}}
{{- $rules := dict -}}
{{- $scaling := false -}}
{{- range $i, $pool := get $cfg "pools" -}}
{{- $disc := get $pool "discovery" | default dict -}}
{{- $discNs := $relNs -}}
{{- if hasKey $disc "kubernetes" -}}
{{- $k := get $disc "kubernetes" | default dict -}}
{{- $discNs = get $k "namespace" | default $relNs -}}
{{- $r := get $rules $discNs | default list -}}
{{- $r = append $r (dict "apiGroups" (list "discovery.k8s.io") "resources" (list "endpointslices") "verbs" (list "list" "watch")) -}}
{{- $r = append $r (dict "apiGroups" (list "") "resources" (list "pods") "verbs" (list "list" "watch")) -}}
{{- $_ := set $rules $discNs $r -}}
{{- end -}}
{{- $scaler := get $pool "scaler" | default dict -}}
{{- $provider := get $scaler "provider" -}}
{{- if and (kindIs "map" $provider) (hasKey $provider "kubernetes") -}}
{{- $scaling = true -}}
{{- $t := get $provider "kubernetes" | default dict -}}
{{- $kind := get $t "kind" | default "Deployment" -}}
{{- $apiVersion := get $t "api_version" | default "apps/v1" -}}
{{- $group := ternary (first (splitList "/" $apiVersion)) "" (contains "/" $apiVersion) -}}
{{- $resource := get $.Values.rbac.scaleResources $kind -}}
{{- if not $resource -}}
{{- fail (printf "pool %v: scale target kind %q is not in rbac.scaleResources: add `%s: <plural resource>`" (get $pool "name") $kind $kind) -}}
{{- end -}}
{{- $name := get $t "name" | default "" -}}
{{- if not $name -}}
{{- fail (printf "pool %v: scaler.provider.kubernetes.name is required" (get $pool "name")) -}}
{{- end -}}
{{- $targetNs := get $t "namespace" | default $relNs -}}
{{- $r := get $rules $targetNs | default list -}}
{{- $r = append $r (dict "apiGroups" (list $group) "resources" (list (printf "%s/scale" $resource)) "resourceNames" (list $name) "verbs" (list "get" "patch" "update")) -}}
{{- $_ := set $rules $targetNs $r -}}
{{- $r = get $rules $discNs | default list -}}
{{- $r = append $r (dict "apiGroups" (list "") "resources" (list "pods") "verbs" (list "patch")) -}}
{{- $_ := set $rules $discNs $r -}}
{{- end -}}
{{- end -}}
{{- $cluster := get (get $cfg "cluster" | default dict) "kubernetes" | default dict -}}
{{- if $cluster -}}
{{- $clusterNs := get $cluster "namespace" | default $relNs -}}
{{- $r := get $rules $clusterNs | default list -}}
{{- $r = append $r (dict "apiGroups" (list "discovery.k8s.io") "resources" (list "endpointslices") "verbs" (list "list" "watch")) -}}
{{- $_ := set $rules $clusterNs $r -}}
{{- end -}}
{{- $le := get $cfg "leader_election" | default dict -}}
{{- if get $le "enabled" -}}
{{- $leNs := get $le "namespace" | default $relNs -}}
{{- $r := get $rules $leNs | default list -}}
{{- if has "create" $.Values.rbac.leaseVerbs -}}
{{- $r = append $r (dict "apiGroups" (list "coordination.k8s.io") "resources" (list "leases") "verbs" (list "create")) -}}
{{- end -}}
{{- $named := without $.Values.rbac.leaseVerbs "create" -}}
{{- if $named -}}
{{- $r = append $r (dict "apiGroups" (list "coordination.k8s.io") "resources" (list "leases") "resourceNames" (list (get $le "lease_name")) "verbs" $named) -}}
{{- end -}}
{{- $_ := set $rules $leNs $r -}}
{{- else if and $scaling (eq .Values.mode "gateway") (gt (int .Values.replicaCount) 1) -}}
{{- fail "a pool uses the Kubernetes scale provider and replicaCount > 1: set config.leader_election.enabled=true so that only one gateway replica resizes pools" -}}
{{- end -}}
{{- with .Values.rbac.extraRules -}}
{{- $_ := set $rules $relNs (concat (get $rules $relNs | default list) .) -}}
{{- end -}}
{{- range $ns, $r := $rules -}}
{{- $_ := set $rules $ns (uniq $r) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}

{{/* The infergate container, shared by the Deployment and the sidecar patch. Call with (dict "root" $ "sidecar" bool). */}}
{{- define "infergate.container" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $adminPort := ternary (int $v.sidecar.adminPort) (int $v.ports.admin) .sidecar -}}
{{- $probes := or (not .sidecar) $v.sidecar.adminOnAllInterfaces -}}
{{- $vol := ternary "infergate-" "" .sidecar -}}
name: {{ ternary $v.sidecar.containerName "infergate" .sidecar }}
image: {{ include "infergate.image" $root | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if and .sidecar $v.sidecar.native }}
restartPolicy: Always
{{- end }}
args:
  - --config
  - /etc/infergate/config.yaml
  - --log-format
  - {{ $v.logFormat | quote }}
  {{- range $v.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: RUST_LOG
    value: {{ $v.logLevel | quote }}
  # Leader election and discovery: the pod's own identity and namespace.
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  {{- if $v.adminToken.enabled }}
  # /metrics and /admin/* answer other machines only with this bearer token; peer gateways
  # read each other with it.
  - name: INFERGATE_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ include "infergate.adminTokenSecret" $root }}
        key: {{ $v.adminToken.key }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if not .sidecar }}
  - name: http
    containerPort: {{ int $v.ports.gateway }}
    protocol: TCP
  {{- end }}
  - name: admin
    containerPort: {{ $adminPort }}
    protocol: TCP
  {{- if and (not .sidecar) $v.keda.enabled }}
  - name: keda
    containerPort: {{ int $v.keda.port }}
    protocol: TCP
  {{- end }}
{{- if $probes }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  {{- toYaml $v.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  {{- toYaml $v.probes.readiness | nindent 2 }}
{{- end }}
{{- if and (not .sidecar) (gt (int $v.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int $v.preStopSleepSeconds }}
{{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- $sc := deepCopy $v.securityContext }}
  {{- if .sidecar }}
  {{- /* The application's pod security context is not the chart's: carry the user and profile on the container. */}}
  {{- range $key := list "runAsUser" "runAsGroup" "seccompProfile" }}
  {{- if and (hasKey $v.podSecurityContext $key) (not (hasKey $sc $key)) }}
  {{- $_ := set $sc $key (get $v.podSecurityContext $key) }}
  {{- end }}
  {{- end }}
  {{- end }}
  {{- toYaml $sc | nindent 2 }}
volumeMounts:
  - name: {{ $vol }}config
    mountPath: /etc/infergate
    readOnly: true
  - name: {{ $vol }}tmp
    mountPath: /tmp
{{- end }}

{{/* The pod volumes that go with infergate.container. Call with (dict "root" $ "sidecar" bool). */}}
{{- define "infergate.volumes" -}}
{{- $vol := ternary "infergate-" "" .sidecar -}}
- name: {{ $vol }}config
  configMap:
    name: {{ include "infergate.fullname" .root }}
    items:
      - key: config.yaml
        path: config.yaml
- name: {{ $vol }}tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* The Secret holding the admin listener's bearer token. */}}
{{- define "infergate.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "infergate.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end }}
