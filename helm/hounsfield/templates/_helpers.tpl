{{/* Names -------------------------------------------------------------------------------------------- */}}
{{- define "hounsfield.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hounsfield.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's name: "<fullname>-<component>", within the 63 characters of a DNS label. */}}
{{- define "hounsfield.component" -}}
{{- printf "%s-%s" (include "hounsfield.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "hounsfield.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "hounsfield.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hounsfield
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: {{ include "hounsfield.selectorLabels" (dict "root" $ "component" "listener") }} */}}
{{- define "hounsfield.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hounsfield.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hounsfield.componentLabels" -}}
{{ include "hounsfield.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hounsfield.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hounsfield.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hounsfield.storeClaim" -}}
{{- default (include "hounsfield.component" (dict "root" . "component" "store")) .Values.store.existingClaim -}}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------------------- */}}
{{- define "hounsfield.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "hounsfield.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) -}}
{{- end -}}

{{- define "hounsfield.gpuWorkerImage" -}}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.workerImage.tag)) .Values.gpuWorker.image.tag -}}
{{- printf "%s:%s" .Values.workerImage.repository $tag -}}
{{- end -}}

{{/* Values the schema cannot check: combinations. Every template that needs them includes this. ---------- */}}
{{- define "hounsfield.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalDatabase.existingSecret) -}}
{{- fail "postgresql.enabled is false: set externalDatabase.existingSecret to a Secret holding the database URL (key externalDatabase.urlKey, default database-url)" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.existingSecret) -}}
{{- fail "redis.enabled is false: set externalRedis.existingSecret to a Secret holding the Redis URL (key externalRedis.urlKey, default redis-url)" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.redis.enabled) (not .Values.externalRedis.address) -}}
{{- fail "keda.enabled with an external Redis: set externalRedis.address (host:port) for KEDA's Redis scaler" -}}
{{- end -}}
{{- if and .Values.listener.tls.enabled (not .Values.listener.tls.existingSecret) -}}
{{- fail "listener.tls.enabled: set listener.tls.existingSecret to a kubernetes.io/tls Secret (tls.crt, tls.key)" -}}
{{- end -}}
{{- if and .Values.listener.tls.requireClientCertificate (not .Values.listener.tls.clientCaKey) -}}
{{- fail "listener.tls.requireClientCertificate needs listener.tls.clientCaKey (the key of the client CA in listener.tls.existingSecret)" -}}
{{- end -}}
{{- range $name, $source := .Values.listener.sources -}}
{{- if and $source.tls_client_names (not (and $.Values.listener.tls.enabled $.Values.listener.tls.clientCaKey)) -}}
{{- fail (printf "listener.sources.%s.tls_client_names needs listener.tls.enabled and listener.tls.clientCaKey (the client CA that signed those certificates); the listener would refuse to start" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.listener.tls.enabled (eq (int .Values.listener.tls.port) (int .Values.listener.port)) -}}
{{- fail "listener.tls.port must differ from listener.port" -}}
{{- end -}}
{{- if and (gt (int .Values.listener.replicas) 1) (not (has "ReadWriteMany" .Values.store.accessModes)) (not .Values.store.existingClaim) -}}
{{- fail "listener.replicas > 1 shares the study store between pods: store.accessModes must include ReadWriteMany" -}}
{{- end -}}
{{- if and .Values.registry.ingress.enabled .Values.registry.ingress.tls.enabled (not .Values.registry.ingress.tls.secretName) -}}
{{- fail "registry.ingress.tls.enabled: set registry.ingress.tls.secretName (a kubernetes.io/tls Secret, or the one cert-manager should make)" -}}
{{- end -}}
{{- if and .Values.trustedCA.configMap .Values.trustedCA.existingSecret -}}
{{- fail "trustedCA: set existingSecret or configMap, not both (the one holding the hospital's CA certificates)" -}}
{{- end -}}
{{- if not .Values.generateSecrets -}}
{{- $unnamed := list -}}
{{- if not .Values.registry.adminToken.existingSecret }}{{ $unnamed = append $unnamed "registry.adminToken.existingSecret" }}{{ end -}}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.existingSecret) }}{{ $unnamed = append $unnamed "postgresql.existingSecret" }}{{ end -}}
{{- if and .Values.redis.enabled (not .Values.redis.existingSecret) }}{{ $unnamed = append $unnamed "redis.existingSecret" }}{{ end -}}
{{- if $unnamed -}}
{{- fail (printf "generateSecrets is false: the chart makes no Secret; name your own: %s" (join ", " $unnamed)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tests.echo.networks .Values.listener.tls.enabled .Values.listener.tls.only -}}
{{- fail "tests.echo.networks: the C-ECHO test needs the plain DICOM port, which listener.tls.only keeps off the Service; leave tests.echo.networks empty" -}}
{{- end -}}
{{- if and .Values.gpuWorker.enabled .Values.gpuWorker.mapPackage -}}
{{- $pkg := fromJson .Values.gpuWorker.mapPackage -}}
{{- if hasKey $pkg "Error" -}}
{{- fail (printf "gpuWorker.mapPackage is not a MAP package manifest (pkg.json): %s" $pkg.Error) -}}
{{- end -}}
{{- if not (hasKey $pkg "resources") -}}
{{- fail "gpuWorker.mapPackage: the package manifest declares no resources" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The GPU worker's resources: exactly what the MAP's pkg.json declares (requests = limits, as the
     Kubernetes Jobs of services/worker/runtimes/kubernetes.py), else the values' resources with `gpus` GPUs. */}}
{{- define "hounsfield.gpuResources" -}}
{{- $gpu := .Values.gpuWorker -}}
{{- if $gpu.mapPackage -}}
{{- $declared := (fromJson $gpu.mapPackage).resources -}}
{{- $amounts := dict -}}
{{- if $declared.cpu }}{{ $_ := set $amounts "cpu" (toString $declared.cpu) }}{{ end -}}
{{- if $declared.memory }}{{ $_ := set $amounts "memory" (toString $declared.memory) }}{{ end -}}
{{- if $declared.gpu }}{{ $_ := set $amounts "nvidia.com/gpu" (toString (int $declared.gpu)) }}{{ end -}}
{{- toYaml (dict "requests" $amounts "limits" $amounts) -}}
{{- else -}}
{{- $resources := deepCopy $gpu.resources -}}
{{- $limits := default (dict) $resources.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" (toString (int $gpu.gpus)) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- toYaml $resources -}}
{{- end -}}
{{- end -}}

{{/* The worker Deployments: one per enabled queue, and the GPU one. A JSON list (read it with
     fromJsonArray) of {name, queues, replicas, image, resources (YAML), scheduling, gpu, gpus (its GPU limit)}. */}}
{{- define "hounsfield.workerList" -}}
{{- $workers := list -}}
{{- range $queue := list "stat" "routine" "batch" -}}
{{- $w := index $.Values.workers $queue -}}
{{- if $w.enabled -}}
{{- $workers = append $workers (dict "name" (printf "worker-%s" $queue) "queues" (list $queue) "replicas" $w.replicas "image" (include "hounsfield.workerImage" $) "resources" (toYaml $w.resources) "scheduling" $w "gpu" false "gpus" 0) -}}
{{- end -}}
{{- end -}}
{{- if .Values.gpuWorker.enabled -}}
{{- $g := .Values.gpuWorker -}}
{{- $resources := include "hounsfield.gpuResources" $ -}}
{{- $gpus := int (index (default (dict) (fromYaml $resources).limits) "nvidia.com/gpu" | default 0) -}}
{{- $workers = append $workers (dict "name" "worker-gpu" "queues" $g.queues "replicas" $g.replicas "image" (include "hounsfield.gpuWorkerImage" $) "resources" $resources "scheduling" $g "gpu" true "gpus" $gpus) -}}
{{- end -}}
{{- toJson $workers -}}
{{- end -}}

{{/* Pod parts shared by every Hounsfield pod -------------------------------------------------------------- */}}
{{/* The database and broker URLs, from Secrets. The passwords of the bundled ones are in variables
     outside the HOUNSFIELD_ prefix (Hounsfield refuses unknown HOUNSFIELD_* keys) that the URLs expand. */}}
{{- define "hounsfield.env" -}}
{{- if .Values.postgresql.enabled }}
- name: HF_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "hounsfield.component" (dict "root" . "component" "postgresql")) .Values.postgresql.existingSecret }}
      key: {{ .Values.postgresql.passwordKey }}
- name: HOUNSFIELD_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(HF_DB_PASSWORD)@%s:%d/%s" .Values.postgresql.username (include "hounsfield.component" (dict "root" . "component" "postgresql")) (int .Values.postgresql.port) .Values.postgresql.database | quote }}
{{- else }}
- name: HOUNSFIELD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.urlKey }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: HF_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "hounsfield.component" (dict "root" . "component" "redis")) .Values.redis.existingSecret }}
      key: {{ .Values.redis.passwordKey }}
- name: HOUNSFIELD_REDIS_URL
  value: {{ printf "redis://:$(HF_REDIS_PASSWORD)@%s:%d/0" (include "hounsfield.component" (dict "root" . "component" "redis")) (int .Values.redis.port) | quote }}
{{- else }}
- name: HOUNSFIELD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.urlKey }}
{{- end }}
{{- if or .Values.trustedCA.configMap .Values.trustedCA.existingSecret }}
# The image's public CAs and the hospital's, joined by the trust-bundle init container: Python's ssl,
# urllib and httpx read SSL_CERT_FILE, requests REQUESTS_CA_BUNDLE.
- name: SSL_CERT_FILE
  value: /etc/hounsfield/trust/ca-bundle.crt
- name: REQUESTS_CA_BUNDLE
  value: /etc/hounsfield/trust/ca-bundle.crt
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "hounsfield.envFrom" -}}
{{- with .Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "hounsfield.volumes" -}}
- name: config
  configMap:
    name: {{ include "hounsfield.fullname" . }}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "hounsfield.storeClaim" . }}
- name: tmp
  emptyDir: {}
{{- include "hounsfield.trustVolumes" . }}
{{- end -}}

{{- define "hounsfield.volumeMounts" -}}
- name: config
  mountPath: /etc/hounsfield/hounsfield.yaml
  subPath: hounsfield.yaml
  readOnly: true
- name: store
  mountPath: /var/lib/hounsfield
- name: tmp
  mountPath: /tmp
{{- include "hounsfield.trustMount" . }}
{{- end -}}

{{/* The hospital's CA (trustedCA): the volume holding it, and the one the init container writes the joined
     bundle to. Nothing without trustedCA. */}}
{{- define "hounsfield.trustVolumes" -}}
{{- $ca := .Values.trustedCA -}}
{{- if or $ca.configMap $ca.existingSecret }}
- name: trust
  emptyDir:
    sizeLimit: 16Mi
- name: trusted-ca
  {{- if $ca.configMap }}
  configMap:
    name: {{ $ca.configMap }}
    items: [{key: {{ $ca.key | quote }}, path: {{ $ca.key | quote }}}]
  {{- else }}
  secret:
    secretName: {{ $ca.existingSecret }}
    items: [{key: {{ $ca.key | quote }}, path: {{ $ca.key | quote }}}]
  {{- end }}
{{- end }}
{{- end -}}

{{- define "hounsfield.trustMount" -}}
{{- if or .Values.trustedCA.configMap .Values.trustedCA.existingSecret }}
- name: trust
  mountPath: /etc/hounsfield/trust
  readOnly: true
{{- end }}
{{- end -}}

{{/* The init container that writes /etc/hounsfield/trust/ca-bundle.crt: the image's public CAs, then the
     hospital's. It runs the pod's own image, so the public CAs are those the image would trust anyway. A
     missing file fails it (set -e): the pod does not start rather than trust less than it should.
     {{ include "hounsfield.initContainers" (dict "root" $ "image" $image "pullPolicy" $policy) }} */}}
{{- define "hounsfield.initContainers" -}}
{{- $ca := .root.Values.trustedCA -}}
{{- if or $ca.configMap $ca.existingSecret }}
initContainers:
  - name: trust-bundle
    image: {{ .image }}
    imagePullPolicy: {{ .pullPolicy }}
    command: ["/bin/sh", "-c", "set -e; { cat \"$SYSTEM_CA_BUNDLE\"; echo; cat \"$TRUSTED_CA\"; } > \"$SSL_CERT_FILE\""]
    env:
      - name: SYSTEM_CA_BUNDLE
        value: {{ $ca.systemBundle | quote }}
      - name: TRUSTED_CA
        value: {{ printf "/etc/hounsfield/trusted-ca/%s" $ca.key | quote }}
      - name: SSL_CERT_FILE
        value: /etc/hounsfield/trust/ca-bundle.crt
    resources:
      {{- toYaml $ca.resources | nindent 6 }}
    securityContext:
      {{- toYaml .root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: trust
        mountPath: /etc/hounsfield/trust
      - name: trusted-ca
        mountPath: /etc/hounsfield/trusted-ca
        readOnly: true
{{- end }}
{{- end -}}

{{/* A worker's terminationGracePeriodSeconds: the longest a job may run (workers.maxJobSeconds, or a longer
     timeout_s among config.deployments) plus workers.shutdownMarginSeconds. */}}
{{- define "hounsfield.workerGracePeriod" -}}
{{- $longest := int .Values.workers.maxJobSeconds -}}
{{- range $d := (default list .Values.config.deployments) -}}
{{- $timeout := int (ceil (float64 (default 600 $d.timeout_s))) -}}
{{- if gt $timeout $longest }}{{ $longest = $timeout }}{{ end -}}
{{- end -}}
{{- add $longest (int .Values.workers.shutdownMarginSeconds) -}}
{{- end -}}

{{- define "hounsfield.podSpecCommon" -}}
serviceAccountName: {{ include "hounsfield.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling of one component: {{ include "hounsfield.scheduling" .Values.listener }} */}}
{{- define "hounsfield.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A generated secret value, kept across upgrades: the value the release's Secret already holds (the
     API is asked with `lookup`), else a new random one. {{ include "hounsfield.secretValue" (dict "root" $ "name" $name "key" "password" "prefix" "") }} */}}
{{- define "hounsfield.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- printf "%s%s" .prefix (randAlphaNum 43) -}}
{{- end -}}
{{- end -}}
