{{/* Labels every object of the release carries. */}}
{{- define "multisnap.labels" -}}
app.kubernetes.io/name: multisnap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The labels that select the node pods. */}}
{{- define "multisnap.selector" -}}
app.kubernetes.io/name: multisnap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{- define "multisnap.serviceAccount" -}}
{{ .Values.serviceAccount.name | default (printf "%s-node" .Release.Name) }}
{{- end }}

{{/* An image reference from {repository, tag}; an empty tag is the chart's appVersion. */}}
{{- define "multisnap.image" -}}
{{ .image.repository }}:{{ .image.tag | default .chart.AppVersion }}
{{- end }}

{{/* Where the kubelet finds the driver's socket, on the node. */}}
{{- define "multisnap.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.csi.driverName }}
{{- end }}

{{/* Sidecar hardening: they only talk to sockets and the API server. */}}
{{- define "multisnap.unprivileged" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
