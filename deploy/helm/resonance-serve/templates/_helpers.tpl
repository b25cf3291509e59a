{{- define "resonance.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "resonance.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "resonance.labels" -}}
app.kubernetes.io/name: {{ include "resonance.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "resonance.selectorLabels" -}}
app.kubernetes.io/name: {{ include "resonance.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "resonance.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "resonance.fullname" .) -}}
{{- end -}}

{{/* The served context: maxModelLen, or factor x original; refuse a longer one. */}}
{{- define "resonance.checkContext" -}}
{{- $r := .Values.rope -}}
{{- if and $r.type (ne $r.type "none") $r.maxModelLen $r.originalMaxPositionEmbeddings -}}
{{- $served := mulf (float64 $r.factor) (float64 $r.originalMaxPositionEmbeddings) -}}
{{- if gt (float64 $r.maxModelLen) $served -}}
{{- fail (printf "rope.maxModelLen (%v) is longer than rope.factor x rope.originalMaxPositionEmbeddings (%v)" $r.maxModelLen $served) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "resonance.routerName" -}}
{{- printf "%s-router" (include "resonance.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Router pods carry their own name label, so the servers' Service never selects them. */}}
{{- define "resonance.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-router" (include "resonance.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
