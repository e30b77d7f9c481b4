{{/* Names and labels. */}}
{{- define "safehub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "safehub.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "component" "gateway") → "<fullname>-gateway" */}}
{{- define "safehub.componentName" -}}
{{- printf "%s-%s" (include "safehub.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "safehub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "safehub.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "safehub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "safehub.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: safehub
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "safehub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "safehub.directoryConfigMap" -}}
{{- default (printf "%s-directory" (include "safehub.fullname" .)) .Values.directory.existingConfigMap -}}
{{- end -}}

{{/* Where the directory ConfigMap is mounted, and the file every deployable loads. */}}
{{- define "safehub.directoryDir" -}}/etc/safehub/directory{{- end -}}
{{- define "safehub.directoryFile" -}}
{{- printf "%s/%s" (include "safehub.directoryDir" .) .Values.directory.key -}}
{{- end -}}

{{/* Pod-level settings shared by every deployable: (dict "root" $ "component" "…"). */}}
{{- define "safehub.podSpecCommon" -}}
{{- $root := .root -}}
automountServiceAccountToken: false
{{- if lt (int $root.Values.terminationGracePeriodSeconds) 30 }}
{{- fail "terminationGracePeriodSeconds must be at least 30 (drain on SIGTERM)" }}
{{- end }}
terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "safehub.selectorLabels" . | nindent 8 }}
{{- end -}}

{{/* Pod annotations: the directory's checksum rolls pods when the chart's copy changes. */}}
{{- define "safehub.podAnnotations" -}}
checksum/directory: {{ include (print .Template.BasePath "/configmap-directory.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "safehub.containerCommon" -}}
image: {{ include "safehub.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end -}}

{{/*
Environment every deployable gets: downward API, Kafka, logging, tracing.
(dict "root" $ "component" "…" "ready" true)
*/}}
{{- define "safehub.commonEnv" -}}
{{- $root := .root -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: SAFEHUB_DIRECTORY_FILE
  value: {{ include "safehub.directoryFile" $root | quote }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" $root.Values.kafka.bootstrapServers | quote }}
- name: SAFEHUB_KAFKA__TOPIC_PREFIX
  value: {{ $root.Values.kafka.topicPrefix | quote }}
- name: SAFEHUB_KAFKA__SECURITY_PROTOCOL
  value: {{ $root.Values.kafka.securityProtocol | quote }}
- name: SAFEHUB_KAFKA__REPLICATION_FACTOR
  value: {{ $root.Values.kafka.replicationFactor | quote }}
{{- if $root.Values.kafka.sasl.existingSecret }}
- name: SAFEHUB_KAFKA__SASL_MECHANISM
  value: {{ $root.Values.kafka.sasl.mechanism | quote }}
- name: SAFEHUB_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.kafka.sasl.existingSecret }}
      key: {{ $root.Values.kafka.sasl.usernameKey }}
- name: SAFEHUB_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.kafka.sasl.existingSecret }}
      key: {{ $root.Values.kafka.sasl.passwordKey }}
{{- end }}
- name: SAFEHUB_LOG__LEVEL
  value: {{ $root.Values.log.level | quote }}
- name: SAFEHUB_LOG__FORMAT
  value: {{ $root.Values.log.format | quote }}
{{- if $root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.otel.endpoint | quote }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),service.instance.id=$(POD_NAME)"
{{- if .ready }}
- name: SAFEHUB_READY_FILE
  value: /tmp/ready
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Readiness: the runtime writes SAFEHUB_READY_FILE once setup finished. /tmp is an emptyDir,
which outlives a container restart, so a file older than this container's PID 1 is stale.
*/}}
{{- define "safehub.readinessProbe" -}}
readinessProbe:
  exec:
    command:
      - sh
      - -c
      - >-
        f="$SAFEHUB_READY_FILE"; [ -f "$f" ] || exit 1;
        read up rest < /proc/uptime; set -- $(sed 's/.*) //' /proc/1/stat);
        start=$(( $(date +%s) - ${up%.*} + ${20} / $(getconf CLK_TCK) ));
        [ "$(stat -c %Y "$f")" -ge $(( start - 2 )) ]
  initialDelaySeconds: {{ .Values.readinessProbe.initialDelaySeconds }}
  periodSeconds: {{ .Values.readinessProbe.periodSeconds }}
  timeoutSeconds: 3
  failureThreshold: {{ .Values.readinessProbe.failureThreshold }}
{{- end -}}

{{/* Volumes every deployable mounts: a writable /tmp and the directory. */}}
{{- define "safehub.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: directory
  configMap:
    name: {{ include "safehub.directoryConfigMap" . }}
{{- end -}}

{{- define "safehub.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: directory
  mountPath: {{ include "safehub.directoryDir" . }}
  readOnly: true
{{- end -}}


{{/*
A deployable's SQLAlchemy URL: from the PostgreSQL Secret, else SQLite on the `store`
emptyDir (development only, lost with the pod).
(dict "root" $ "name" "SAFEHUB_<SECTION>__DATABASE_URL" "file" "<name>.sqlite3")
*/}}
{{- define "safehub.databaseUrlEnv" -}}
- name: {{ .name }}
{{- if .root.Values.stores.postgres.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.stores.postgres.existingSecret }}
      key: {{ .root.Values.stores.postgres.urlKey }}
{{- else }}
  value: {{ printf "sqlite:///%s/%s" (include "safehub.storeDir" .) .file | quote }}
{{- end }}
{{- end -}}

{{- define "safehub.storeDir" -}}/var/lib/safehub{{- end -}}

{{/* The SQLite volume and its mount, for when there is no PostgreSQL Secret. */}}
{{- define "safehub.storeVolumeMount" -}}
- name: store
  mountPath: {{ include "safehub.storeDir" . }}
{{- end -}}

{{- define "safehub.storeVolume" -}}
# Development only: the store is lost with the pod.
- name: store
  emptyDir: {}
{{- end -}}
