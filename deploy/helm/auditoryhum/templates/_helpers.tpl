{{/* Names, labels, images and the checks every render runs. */}}

{{- define "auditoryhum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auditoryhum.fullname" -}}
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

{{/* A component's object name: <fullname>-<component>, within 63 characters. */}}
{{- define "auditoryhum.componentName" -}}
{{- $full := include "auditoryhum.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $full .component }}
{{- end }}

{{- define "auditoryhum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auditoryhum.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "auditoryhum.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "auditoryhum.selectorLabels" . }}
app.kubernetes.io/part-of: auditoryhum
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Labels of objects that belong to the whole release (ConfigMap, Secret, ServiceMonitor, topics). */}}
{{- define "auditoryhum.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "auditoryhum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: auditoryhum
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "auditoryhum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auditoryhum.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag of a component's image ({root, image}). */}}
{{- define "auditoryhum.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- if .root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The topics of src/auditoryhum/topics.py (tests/test_deploy.py keeps the two in step). */}}
{{- define "auditoryhum.topics" -}}
- auditoryhum.datasets.v1
- auditoryhum.clips.v1
- auditoryhum.labels.v1
- auditoryhum.alignments.v1
- auditoryhum.review.tasks.v1
- auditoryhum.review.decisions.v1
- auditoryhum.labels.final.v1
- auditoryhum.taxonomy.v1
- auditoryhum.taxonomy.assignments.v1
- auditoryhum.dlq.v1
{{- end }}

{{/* The topics each stage consumes (its `consumes` in src/auditoryhum/stages/); its group is auditoryhum-<name>. */}}
{{- define "auditoryhum.consumes" -}}
labeler: [auditoryhum.clips.v1]
aligner: [auditoryhum.labels.v1]
review: [auditoryhum.datasets.v1, auditoryhum.alignments.v1, auditoryhum.dlq.v1, auditoryhum.review.decisions.v1]
clusterer: [auditoryhum.labels.final.v1]
{{- end }}

{{/* secretKeyRef of the auth token and of the state database URL: the chart's Secret or an existing one. */}}
{{- define "auditoryhum.tokenRef" -}}
name: {{ .Values.auth.existingSecret | default (include "auditoryhum.fullname" .) }}
key: {{ ternary .Values.auth.existingSecretKey "auth-token" (ne .Values.auth.existingSecret "") }}
{{- end }}

{{- define "auditoryhum.stateUrlRef" -}}
name: {{ .Values.state.existingSecret | default (include "auditoryhum.fullname" .) }}
key: {{ ternary .Values.state.existingSecretKey "state-url" (ne .Values.state.existingSecret "") }}
{{- end }}

{{/* True when the review/clusterer state lives in a database rather than on volumes. */}}
{{- define "auditoryhum.stateInDatabase" -}}
{{- if or .Values.state.url .Values.state.existingSecret }}true{{ end }}
{{- end }}

{{/* Triton's gRPC address as the services see it; empty: models in each pod. */}}
{{- define "auditoryhum.tritonUrl" -}}
{{- if .Values.triton.enabled }}
{{- printf "%s:%d" (include "auditoryhum.componentName" (dict "root" . "component" "triton")) (int .Values.triton.ports.grpc) }}
{{- else }}
{{- .Values.triton.externalUrl }}
{{- end }}
{{- end }}

{{/* The most replicas a consumer can have: its autoscaler's maximum, or its fixed count. */}}
{{- define "auditoryhum.maxReplicas" -}}
{{- $autoscaling := .values.autoscaling | default dict }}
{{- if and $autoscaling $autoscaling.keda.enabled }}{{ $autoscaling.keda.maxReplicas }}
{{- else if and $autoscaling $autoscaling.hpa.enabled }}{{ $autoscaling.hpa.maxReplicas }}
{{- else }}{{ .values.replicas }}
{{- end }}
{{- end }}

{{/* Refuse values that would render a broken release. Included once, by the ConfigMap. */}}
{{- define "auditoryhum.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- range $name, $topics := include "auditoryhum.consumes" . | fromYaml }}
{{- $values := index $.Values $name }}
{{- if $values.enabled }}
{{- $autoscaling := $values.autoscaling | default dict }}
{{- if and $autoscaling $autoscaling.keda.enabled $autoscaling.hpa.enabled }}
{{- fail (printf "%s: autoscaling.keda and autoscaling.hpa are both enabled; enable one (an HPA and a ScaledObject on one Deployment fight over its replicas)" $name) }}
{{- end }}
{{- $max := include "auditoryhum.maxReplicas" (dict "values" $values) | int }}
{{- if and (hasKey $values "persistence") (gt $max 1) (not (include "auditoryhum.stateInDatabase" $)) }}
{{- fail (printf "%s: %d replicas (max) need a shared state database (state.url or state.existingSecret): on SQLite volumes a replica taking over a dataset would not find its state" $name $max) }}
{{- end }}
{{- if gt $max $partitions }}
{{- fail (printf "%s: %d replicas (max) exceed the %d partitions of %s (kafka.partitions); the extra consumers would sit idle: lower the replicas or raise kafka.partitions" $name $max $partitions (first $topics)) }}
{{- end }}
{{- range $key := list "keda" "hpa" }}
{{- $scaler := index $autoscaling $key | default dict }}
{{- if and $scaler $scaler.enabled (gt (int $scaler.minReplicas) (int $scaler.maxReplicas)) }}
{{- fail (printf "%s: autoscaling.%s.minReplicas %d is above maxReplicas %d" $name $key (int $scaler.minReplicas) (int $scaler.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $r := .Values.recogniser }}
{{- if $r.enabled }}
{{- if and $r.modelDir.existingClaim $r.modelDir.path }}
{{- fail "recogniser.modelDir: set existingClaim (a PVC holding the MODEL_DIR) or path (a folder in the image), not both" }}
{{- end }}
{{- if not (or $r.modelDir.existingClaim $r.modelDir.path) }}
{{- fail "recogniser.enabled needs its MODEL_DIR: recogniser.modelDir.existingClaim (a PVC holding what `auditoryhum train` wrote) or recogniser.modelDir.path (a folder in its image)" }}
{{- end }}
{{- if and (eq $r.backend "triton") (not (and .Values.triton.enabled $r.modelDir.existingClaim)) }}
{{- fail "recogniser.backend triton needs triton.enabled and recogniser.modelDir.existingClaim: Triton's pod mounts the same MODEL_DIR" }}
{{- end }}
{{- if and (eq $r.backend "triton") (or (ne $r.model "cnn") (ne $r.precision "int8")) }}
{{- fail "recogniser.backend triton runs the Triton image's scene_recogniser, cnn at int8 (its config.pbtxt): set recogniser.model cnn and precision int8, or backend inprocess" }}
{{- end }}
{{- end }}
{{- if and .Values.triton.gpu.enabled (not .Values.triton.enabled) }}
{{- fail "triton.gpu.enabled needs triton.enabled" }}
{{- end }}
{{- end }}

{{/* The Secret whose keys are the object-store settings of the pods that read clips (objectStore): the user's,
  or the chart's when objectStore.env is given; empty when neither. */}}
{{- define "auditoryhum.objectStoreSecret" -}}
{{- if .Values.objectStore.existingSecret -}}
{{ .Values.objectStore.existingSecret }}
{{- else if .Values.objectStore.env -}}
{{ include "auditoryhum.fullname" . }}-object-store
{{- end -}}
{{- end }}

{{/* The recogniser's MODEL_DIR in its pod (and Triton's): the claim's mount, or the image's folder. */}}
{{- define "auditoryhum.recogniserDir" -}}
{{- .Values.recogniser.modelDir.path | default "/models/recogniser" }}
{{- end }}

{{/* The recogniser runs its model on this release's Triton. */}}
{{- define "auditoryhum.recogniserOnTriton" -}}
{{- if and .Values.recogniser.enabled (eq .Values.recogniser.backend "triton") }}true{{ end }}
{{- end }}
