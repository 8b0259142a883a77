{{/*
Strategic-merge patch for an application's Deployment (sidecar mode): the infergate container
(a native sidecar in initContainers, or a second container), its volumes, and the
ServiceAccount when a pool needs the Kubernetes API. Merged by name into existing lists.
*/}}
{{- define "infergate.sidecarPatch" -}}
{{- $rules := include "infergate.rbacRules" . | fromYaml -}}
spec:
  template:
    metadata:
      annotations:
        checksum/infergate-config: {{ include "infergate.config" . | sha256sum }}
    spec:
      {{- if and $rules .Values.serviceAccount.create }}
      serviceAccountName: {{ include "infergate.serviceAccountName" . }}
      {{- end }}
      {{ ternary "initContainers" "containers" .Values.sidecar.native }}:
        - {{ include "infergate.container" (dict "root" . "sidecar" true) | nindent 10 | trim }}
      volumes:
        {{- include "infergate.volumes" (dict "root" . "sidecar" true) | nindent 8 }}
{{- end }}
