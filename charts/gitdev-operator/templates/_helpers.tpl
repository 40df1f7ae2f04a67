{{/* Chart name, at most 63 characters. */}}
{{- define "gitdev-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the release's resources: <release>-gitdev-operator, or the release name alone when it already contains the chart name. */}}
{{- define "gitdev-operator.fullname" -}}
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

{{- define "gitdev-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gitdev-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gitdev-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gitdev-operator.labels" -}}
helm.sh/chart: {{ include "gitdev-operator.chart" . }}
{{ include "gitdev-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "gitdev-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gitdev-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The watched namespaces, comma-separated (WATCH_NAMESPACE): watchNamespace and watchNamespaces together, each once. Empty: every namespace. */}}
{{- define "gitdev-operator.watchNamespaces" -}}
{{- concat .Values.watchNamespaces (list .Values.watchNamespace) | compact | uniq | join "," }}
{{- end }}

{{/* Whether the operator runs with leader election: asked for, or needed because several replicas run. */}}
{{- define "gitdev-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{- end }}
{{- end }}

{{/* leaderElection.renewDeadlineSeconds when set (empty for the operator's default), checked against the Lease duration: the schema cannot compare two values. */}}
{{- define "gitdev-operator.renewDeadline" -}}
{{- $deadline := int .Values.leaderElection.renewDeadlineSeconds }}
{{- $duration := int .Values.leaderElection.leaseDurationSeconds }}
{{- if eq $deadline 1 }}
{{- fail "leaderElection.renewDeadlineSeconds: 1 is too short; use 0 (two thirds of leaderElection.leaseDurationSeconds) or at least 2" }}
{{- else if and (gt $deadline 0) (ge $deadline $duration) }}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%d) must be less than leaderElection.leaseDurationSeconds (%d), so that a leader that cannot renew stops before another replica can take over; or 0 for two thirds of it" $deadline $duration) }}
{{- else if gt $deadline 0 }}{{ $deadline }}
{{- end }}
{{- end }}

{{- define "gitdev-operator.leaseName" -}}
{{- default (include "gitdev-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Secret the operator reads its key from, or creates (data key `key`). The default is
the Secret earlier chart versions made, so that an upgrade keeps the key. */}}
{{- define "gitdev-operator.keySecret" -}}
{{- default (printf "%s-fingerprint" (include "gitdev-operator.fullname" .)) .Values.key.secretName }}
{{- end }}

{{- define "gitdev-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The rules on gitdeployments, Secrets and Events: exactly the calls the operator makes.
- gitdeployments get/list/watch: the object watch and cache, the CRD check at start.
- gitdeployments patch: the finalizer git.dev/cleanup (JSON patch) and the git.dev/state annotation (merge patch).
- gitdeployments/status patch: status (server-side apply on the subresource).
- secrets get/list/watch: the operator watches Secret metadata (to wake objects when their Secrets change) and GETs the referenced ones. Read-only.
- events.k8s.io events create/patch: kube-runtime's Recorder creates an Event, then patches its series.
- configmaps get/create/patch/delete: spec.exportTo. The operator GETs the named ConfigMap (to leave one it does not own alone and to write only changes), writes it by server-side apply (patch, and create when it does not exist yet), and deletes the one it owns when exportTo changes or the object goes. No list/watch: nothing watches ConfigMaps.
No gitdeployments/finalizers: the exported ConfigMap's owner reference sets no blockOwnerDeletion, so the OwnerReferencesPermissionEnforcement admission plugin never asks for it.
*/}}
{{- define "gitdev-operator.rules" -}}
- apiGroups: ["git.dev"]
  resources: ["gitdeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["git.dev"]
  resources: ["gitdeployments/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
