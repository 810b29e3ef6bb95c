{{/* Names, labels and the pieces more than one template uses. */}}

{{- define "redis-pair.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-CHART, or the release name alone when it already contains the chart name. */}}
{{- define "redis-pair.fullname" -}}
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

{{- define "redis-pair.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "redis-pair.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redis-pair.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "redis-pair.labels" -}}
helm.sh/chart: {{ include "redis-pair.chart" . }}
{{ include "redis-pair.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "redis-pair.controller.name" -}}
{{- printf "%s-controller" (include "redis-pair.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "redis-pair.controller.selectorLabels" -}}
{{ include "redis-pair.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "redis-pair.controller.labels" -}}
{{ include "redis-pair.labels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "redis-pair.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "redis-pair.controller.name" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "redis-pair.leaseName" -}}
{{- default (include "redis-pair.controller.name" .) .Values.controller.leaseName }}
{{- end }}

{{/* The image reference: by digest when one is given, else by tag (default appVersion). */}}
{{- define "redis-pair.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The controller's rules on the namespaced resources it manages: one ClusterRole by default, one
Role per namespace of watchNamespaces. Every rule names the calls that need it;
docs/DECISIONS.md ("RBAC: every rule and the call that needs it") is the long form.
*/}}
{{- define "redis-pair.controller.rules" -}}
# The RedisPairs: watched (list + watch per namespace, or cluster-wide) to run one engine per
# pair; get to re-read one before a conditional publication.
- apiGroups: ["redispair.io"]
  resources: ["redispairs"]
  verbs: ["get", "list", "watch"]
# The master is published as the annotations redispair.io/active and redispair.io/epoch with a
# conditional JSON patch (a `test` of the old epoch, so a stale leader cannot overwrite a newer
# one), and the redispair.io/switchover annotation is removed after a switchover: metadata
# only, hence patch on the main resource. No update, no delete.
- apiGroups: ["redispair.io"]
  resources: ["redispairs"]
  verbs: ["patch"]
# Status (master, replicas, phase, conditions, lastFailover) is written only through the
# status subresource.
- apiGroups: ["redispair.io"]
  resources: ["redispairs/status"]
  verbs: ["patch"]
# The Redis pods of every pair (spec.selector): watched (list + watch) for IPs, readiness
# and deletion (a deleted master gets a switchover first). Read from that cache only: no get.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The label redispair.io/role=master|replica on the Redis pods, so a Service can select the
# master: a merge patch of metadata.labels. No update, no delete, no create.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["patch"]
# The password of spec.authSecretRef: get to read it, and a metadata-only list + watch to see
# it change (the watch carries no Secret data).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Events on the RedisPairs (Promoted, Demoted, SwitchoverStarted, Invalid, ...) through
# kube-runtime's Recorder. A fresh Recorder per Event only ever creates (a Recorder patches
# an Event it recorded before, to count a repeat): no patch.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The sidecar's only rule: read RedisPairs. `pairs` (a list, may be empty) limits it to those
names; the sidecar watches its pair with a field selector on metadata.name, which the API
server authorizes against resourceNames.
*/}}
{{- define "redis-pair.sidecar.rules" -}}
# The sidecar follows one RedisPair's redispair.io/active and redispair.io/epoch annotations:
# list + watch with a field selector on its name (get, for reading it by name, is what issue
# 11 grants). Nothing else: it writes nothing and reads no Secret (its password is a file).
- apiGroups: ["redispair.io"]
  resources: ["redispairs"]
  verbs: ["get", "list", "watch"]
  {{- with .pairs }}
  resourceNames: {{ toJson . }}
  {{- end }}
{{- end }}

{{/*
The native-sidecar form of the redis-pair proxy (Kubernetes 1.29+): an init container with
restartPolicy Always starts before the app's containers, must pass its startup probe (a
verified master is known and the listener is bound) before they start, and is stopped after
they exit. Arguments: a dict with root (the chart context), pair (RedisPair name),
passwordSecret (Secret name, may be empty), passwordKey, resources.
*/}}
{{- define "redis-pair.sidecar.container" -}}
- name: redis-pair
  image: {{ include "redis-pair.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  # Native sidecar: up before the app starts, stopped after it exits.
  restartPolicy: Always
  args:
    - proxy
    - --pair={{ .pair }}
    # The app connects to 127.0.0.1:6379 as to a local Redis.
    - --listen=127.0.0.1:6379
    # The kubelet probes the pod IP, not loopback: the admin port (/healthz, /readyz,
    # /metrics; no writes) listens on every address.
    - --admin-listen=0.0.0.0:9401
    {{- if .passwordSecret }}
    # For the sidecar's own ROLE checks of the published master; clients AUTH themselves.
    - --password-file=/var/run/secrets/redis-pair/{{ .passwordKey }}
    {{- end }}
    # A client that leaves more than 32 MiB of replies unread is closed before the container
    # reaches its memory limit.
    - --max-client-backlog-mib=32
    - --log-format=json
  env:
    # The RedisPair's namespace: the pod's own.
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
  ports:
    - name: sidecar-admin
      containerPort: 9401
      protocol: TCP
  # The app starts only once a verified master is known: up to 60 s for the first one.
  startupProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: 1
    failureThreshold: 60
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: 2
    failureThreshold: 3
  livenessProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    privileged: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    capabilities:
      drop:
        - ALL
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    # The API token, in this container only (see redis-pair.sidecar.volumes).
    - name: redis-pair-api
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
    {{- if .passwordSecret }}
    - name: redis-pair-password
      mountPath: /var/run/secrets/redis-pair
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The sidecar's volumes: the pod's ServiceAccount token, CA and namespace, as automount would
give them, but mounted in the sidecar only (the pod sets automountServiceAccountToken: false,
so the app's containers hold no API credentials); and the Redis password when there is one.
Arguments: a dict with passwordSecret (may be empty) and passwordKey.
*/}}
{{- define "redis-pair.sidecar.volumes" -}}
- name: redis-pair-api
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- if .passwordSecret }}
- name: redis-pair-password
  secret:
    secretName: {{ .passwordSecret }}
    items:
      - key: {{ .passwordKey }}
        path: {{ .passwordKey }}
{{- end }}
{{- end }}

{{/* The examples (examples.enabled): every object is named FULLNAME-example[-...]. */}}
{{- define "redis-pair.example.name" -}}
{{- printf "%s-example" (include "redis-pair.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "redis-pair.example.redisSelectorLabels" -}}
{{ include "redis-pair.selectorLabels" . }}
app.kubernetes.io/component: example-redis
{{- end }}

{{- define "redis-pair.example.demoSelectorLabels" -}}
{{ include "redis-pair.selectorLabels" . }}
app.kubernetes.io/component: example-demo
{{- end }}
