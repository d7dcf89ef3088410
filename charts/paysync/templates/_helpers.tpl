{{/* The chart's name. */}}
{{- define "paysync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource's name. */}}
{{- define "paysync.fullname" -}}
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

{{/* Labels every resource carries. */}}
{{- define "paysync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "paysync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paysync
{{- end }}

{{/* Labels that select paysync's pods. */}}
{{- define "paysync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paysync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "paysync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paysync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace whose SyncPolicies are watched. */}}
{{- define "paysync.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/* The image reference: by digest when one is given, else by tag. */}}
{{- define "paysync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* A name with a suffix, the whole within Kubernetes' 63 characters. */}}
{{- define "paysync.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "paysync.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* Labels of the migration Job's pods: the release's, never the Deployment's selector
     (the Service, PodDisruptionBudget and NetworkPolicy select by it). */}}
{{- define "paysync.migrationPodLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: paysync
app.kubernetes.io/component: migrate
{{- end }}

{{/* The CA volume (ca.secretName or ca.configMapName), mounted at /etc/paysync/ca. */}}
{{- define "paysync.caVolume" -}}
{{- if .Values.ca.secretName }}
- name: ca
  secret:
    secretName: {{ .Values.ca.secretName }}
{{- else if .Values.ca.configMapName }}
- name: ca
  configMap:
    name: {{ .Values.ca.configMapName }}
{{- end }}
{{- end }}

{{- define "paysync.caVolumeMount" -}}
{{- if or .Values.ca.secretName .Values.ca.configMapName }}
- name: ca
  mountPath: /etc/paysync/ca
  readOnly: true
{{- end }}
{{- end }}

{{/* The database URL, from the existing Secret the values name. */}}
{{- define "paysync.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: a Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
{{- end }}
