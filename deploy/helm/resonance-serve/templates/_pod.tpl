{{/* The server's arguments, environment and volumes: one pod spec's parts, shared by the
Deployment and the multi-node LeaderWorkerSet. */}}
{{- define "resonance.args" -}}
{{- with .Values.model.name }}
- --model={{ . }}
{{- end }}
{{- with .Values.model.servedName }}
- --served-model-name={{ . }}
{{- end }}
- --dtype={{ .Values.model.dtype }}
{{- with .Values.rope.type }}
- --rope-type={{ . }}
{{- if and (ne . "none") (ne . "resonance") }}
- --rope-factor={{ $.Values.rope.factor }}
{{- end }}
{{- end }}
{{- with .Values.rope.originalMaxPositionEmbeddings }}
- --original-max-position-embeddings={{ . }}
{{- end }}
{{- with .Values.rope.maxModelLen }}
- --max-model-len={{ . }}
{{- end }}
- --yarn-beta-fast={{ .Values.rope.yarnBetaFast }}
- --yarn-beta-slow={{ .Values.rope.yarnBetaSlow }}
{{- with .Values.rope.policy }}
- --rope-policy={{ . }}
{{- end }}
- --tensor-parallel-size={{ .Values.engine.tensorParallelSize }}
- --gpu-memory-utilization={{ .Values.engine.gpuMemoryUtilization }}
{{- with .Values.engine.maxNumSeqs }}
- --max-num-seqs={{ . }}
{{- end }}
{{- with .Values.engine.cpuKvCacheSpaceGiB }}
- --cpu-kv-cache-space-gib={{ . }}
{{- end }}
- --{{ if not .Values.engine.enablePrefixCaching }}no-{{ end }}enable-prefix-caching
- --{{ if not .Values.engine.enableChunkedPrefill }}no-{{ end }}enable-chunked-prefill
- --kv-cache-dtype={{ .Values.engine.kvCacheDtype }}
{{- range $key, $value := .Values.engine.args }}
- --engine-arg
- {{ printf "%s=%s" $key (toJson $value) | quote }}
{{- end }}
- --max-concurrent-requests={{ .Values.limits.maxConcurrentRequests }}
- --max-concurrent-sequences={{ .Values.limits.maxConcurrentSequences }}
{{- with .Values.limits.maxQueuedTokens }}
- --max-queued-tokens={{ . }}
{{- end }}
- --request-timeout={{ .Values.limits.requestTimeoutSeconds }}
- --drain-timeout={{ .Values.limits.drainTimeoutSeconds }}
{{- if .Values.secrets.apiKeyForProbes }}
- --api-key-for-probes
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "resonance.env" -}}
- name: RESONANCE_HOST
  value: "0.0.0.0"
- name: RESONANCE_PORT
  value: "8000"
- name: HF_HOME
  value: /models
- name: RESONANCE_CACHE_DIR
  value: /models/resonance-serve
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "resonance.secretName" . }}
      key: HF_TOKEN
      optional: true
- name: RESONANCE_API_KEY_FILE
  value: /etc/resonance/api_keys
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}

{{- define "resonance.volumeMounts" -}}
- name: model-cache
  mountPath: /models
- name: shm
  mountPath: /dev/shm
- name: api-keys
  mountPath: /etc/resonance
  readOnly: true
{{- end -}}

{{- define "resonance.volumes" -}}
- name: model-cache
  {{- if .Values.modelCache.persistence }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim | default (printf "%s-models" (include "resonance.fullname" .)) }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
- name: api-keys
  secret:
    secretName: {{ include "resonance.secretName" . }}
    optional: true
    items:
      - key: api_keys
        path: api_keys
{{- end -}}


{{/* A LeaderWorkerSet pod's place in its group: the same on the leader and the workers. */}}
{{- define "resonance.nodeArgs" -}}
- --pipeline-parallel-size={{ .Values.multinode.pipelineParallelSize | default .Values.multinode.nodes }}
- --nnodes={{ .Values.multinode.nodes }}
- --node-rank=$(LWS_WORKER_INDEX)
- --master-addr=$(LWS_LEADER_ADDRESS)
- --master-port={{ .Values.multinode.masterPort }}
{{- end -}}
