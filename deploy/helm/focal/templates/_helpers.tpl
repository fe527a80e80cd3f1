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
{{- if and .Values.autoscaling.enabled .Values.retrieval.enabled }}
{{- fail "autoscaling with retrieval.enabled: each replica owns its own index, so a replica added by the autoscaler would start empty; scale retrieval replicas by hand and load each (see the chart README)" }}
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

{{- define "focal.podTemplate" -}}
metadata:
  labels:
    {{- include "focal.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "focal.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.gpu.enabled }}
  runtimeClassName: {{ .Values.gpu.runtimeClassName }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- if eq .Values.model.source "initContainer" }}
  initContainers:
    - name: fetch-model
      image: {{ .Values.model.initContainer.image }}
      {{- with .Values.model.initContainer.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        - name: MODEL_DIR
          value: {{ .Values.model.mountPath }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: model
          mountPath: {{ .Values.model.mountPath }}
  {{- end }}
  containers:
    - name: focal
      image: {{ include "focal.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve", "--config", "/etc/focal/focal.toml"]
      env:
        - name: FOCAL_HOST
          value: "0.0.0.0"
        - name: FOCAL_METRICS_HOST
          value: "0.0.0.0"
        {{- if ne .Values.model.source "image" }}
        - name: FOCAL_MODEL
          value: {{ printf "%s/%s" .Values.model.mountPath .Values.model.file | quote }}
        {{- end }}
        {{- if .Values.retrieval.enabled }}
        - name: FOCAL_DATA_DIR
          value: {{ .Values.retrieval.mountPath | quote }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: FOCAL_TLS_CERT
          value: /etc/focal/tls/tls.crt
        - name: FOCAL_TLS_KEY
          value: /etc/focal/tls/tls.key
        - name: FOCAL_HEALTH_PORT
          value: {{ .Values.server.healthPort | quote }}
        {{- if .Values.tls.clientCASecretName }}
        - name: FOCAL_TLS_CLIENT_CA
          value: /etc/focal/client-ca/ca.crt
        {{- end }}
        {{- end }}
        {{- if .Values.auth.enabled }}
        - name: FOCAL_AUTH_TOKEN_FILE
          value: {{ printf "/etc/focal/auth/%s" .Values.auth.secretKey | quote }}
        {{- end }}
        # Read-only root filesystem: caches go to /tmp, and nothing is ever downloaded.
        - name: HOME
          value: /tmp
        - name: HF_HUB_OFFLINE
          value: "1"
        - name: TRANSFORMERS_OFFLINE
          value: "1"
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ .Values.server.port }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.server.metricsPort }}
          protocol: TCP
        {{- if .Values.tls.enabled }}
        - name: health
          containerPort: {{ .Values.server.healthPort }}
          protocol: TCP
        {{- end }}
      startupProbe:
        grpc:
          port: {{ include "focal.probePort" . }}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        grpc:
          port: {{ include "focal.probePort" . }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        grpc:
          port: {{ include "focal.probePort" . }}
          service: focal.compressor.v1.Compressor
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- $resources := deepCopy .Values.resources }}
        {{- if .Values.gpu.enabled }}
        {{- $limits := default dict $resources.limits }}
        {{- $_ := set $limits .Values.gpu.resourceName (.Values.gpu.count | toString) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/focal/focal.toml
          subPath: focal.toml
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if ne .Values.model.source "image" }}
        - name: model
          mountPath: {{ .Values.model.mountPath }}
          readOnly: true
        {{- end }}
        {{- if .Values.retrieval.enabled }}
        - name: data
          mountPath: {{ .Values.retrieval.mountPath }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/focal/tls
          readOnly: true
        {{- if .Values.tls.clientCASecretName }}
        - name: client-ca
          mountPath: /etc/focal/client-ca
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if .Values.auth.enabled }}
        - name: auth
          mountPath: /etc/focal/auth
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "focal.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 2Gi
    {{- if eq .Values.model.source "pvc" }}
    - name: model
      persistentVolumeClaim:
        claimName: {{ .Values.model.pvc.claimName }}
        readOnly: true
    {{- else if eq .Values.model.source "hostPath" }}
    - name: model
      hostPath:
        path: {{ .Values.model.hostPath.path }}
        type: Directory
    {{- else if eq .Values.model.source "initContainer" }}
    - name: model
      emptyDir:
        sizeLimit: {{ .Values.model.initContainer.sizeLimit }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
        defaultMode: 0440
    {{- if .Values.tls.clientCASecretName }}
    - name: client-ca
      secret:
        secretName: {{ .Values.tls.clientCASecretName }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- if .Values.auth.enabled }}
    - name: auth
      secret:
        secretName: {{ include "focal.authSecretName" . }}
        defaultMode: 0440
    {{- end }}
  {{- $nodeSelector := .Values.nodeSelector }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := .Values.tolerations }}
  {{- if and .Values.gpu.enabled (not $tolerations) }}
  {{- $tolerations = list (dict "key" .Values.gpu.resourceName "operator" "Exists" "effect" "NoSchedule") }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
