{{- define "focal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "focal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "focal.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "focal.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "focal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "focal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "focal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "focal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "focal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "focal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "focal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "focal.authSecretName" -}}
{{- default (printf "%s-auth" (include "focal.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The port the probes use: the plaintext health port when TLS is on (kubelet cannot probe over TLS). */}}
{{- define "focal.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.server.healthPort }}{{ else }}{{ .Values.server.port }}{{ end }}
{{- end }}

{{/* Refuse value combinations that cannot work, with the reason. */}}
{{- define "focal.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.token) }}
{{- fail "auth.enabled needs auth.existingSecret (preferred) or auth.token" }}
{{- end }}
{{- if not (has .Values.retrieval.backend (list "faiss" "milvus")) }}
{{- fail (printf "retrieval.backend %q is not one of faiss, milvus" .Values.retrieval.backend) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (include "focal.ownsIndex" .) }}
{{- fail "autoscaling with retrieval.enabled and the faiss backend: each replica owns its own index, so a replica added by the autoscaler would start empty; use retrieval.backend milvus, or scale retrieval replicas by hand and load each (see the chart README)" }}
{{- end }}
{{- if and .Values.retrieval.enabled (eq .Values.retrieval.backend "milvus") (not .Values.retrieval.milvus.uri) }}
{{- fail "retrieval.backend milvus needs retrieval.milvus.uri (http(s)://host:port of Milvus)" }}
{{- end }}
{{- if not (has .Values.model.source (list "image" "pvc" "hostPath" "initContainer")) }}
{{- fail (printf "model.source %q is not one of image, pvc, hostPath, initContainer" .Values.model.source) }}
{{- end }}
{{- if and (ne .Values.model.source "image") (not .Values.model.file) }}
{{- fail "model.file (the GGUF file or HF directory inside the mount) is required unless model.source is image" }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.model.source "hostPath") (not .Values.model.hostPath.path) }}
{{- fail "model.source hostPath needs model.hostPath.path" }}
{{- end }}
{{- if and (eq .Values.model.source "initContainer") (not .Values.model.initContainer.image) }}
{{- fail "model.source initContainer needs model.initContainer.image" }}
{{- end }}
{{- if not (has .Values.server.indexType (list "flat" "ivf" "hnsw")) }}
{{- fail (printf "server.indexType %q is not one of flat, ivf, hnsw" .Values.server.indexType) }}
{{- end }}
{{- end }}

{{/*
"true" when every replica owns an embedded index (retrieval on with the faiss backend): the
workload is then a StatefulSet with a volume per replica; "" otherwise.
*/}}
{{- define "focal.ownsIndex" -}}
{{- if and .Values.retrieval.enabled (eq .Values.retrieval.backend "faiss") }}true{{- end }}
{{- end }}

{{- define "focal.milvus" -}}
{{- if and .Values.retrieval.enabled (eq .Values.retrieval.backend "milvus") }}true{{- end }}
{{- end }}
