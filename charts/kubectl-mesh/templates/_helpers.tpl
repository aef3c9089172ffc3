{{/*
Shared names and labels. The namespace and the service names are contracts
(kubectl_mesh/contract.py): injected pods, the scrape job and the CLI name them.
*/}}

{{- define "mesh.namespace" -}}mesh-system{{- end -}}

{{- define "mesh.labels" -}}
app.kubernetes.io/name: kubectl-mesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubectl-mesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "webhook") */}}
{{- define "mesh.componentLabels" -}}
{{ include "mesh.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The selector of one component's pods: stable across upgrades, so no version in it. */}}
{{- define "mesh.selectorLabels" -}}
app.kubernetes.io/name: kubectl-mesh
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference: (dict "image" .Values.x.image "root" $) */}}
{{- define "mesh.image" -}}
{{- printf "%s:%s" .image.name (.image.version | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The restricted Pod Security Standard, met by every control-plane container. */}}
{{- define "mesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mesh.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The MeshConfig the webhook reads (env MESH_CONFIG; kubectl_mesh/inject/config.py): camelCase keys, as JSON.
Its sha256 is a pod annotation of the webhook, so a change rolls the webhook pods.
*/}}
{{- define "mesh.webhook.configData" -}}
{{- $p := .Values.proxy -}}
{{- $cfg := dict
  "controlPlaneNamespace" (include "mesh.namespace" .)
  "proxyImage" $p.image.name
  "proxyVersion" ($p.image.version | default .Chart.AppVersion)
  "imagePullPolicy" $p.image.pullPolicy
  "logLevel" $p.logLevel
  "logFormat" .Values.logFormat
  "proxyResources" $p.resources
  "initResources" $p.initResources
  "skipInboundPorts" (join "," $p.skipInboundPorts)
  "skipOutboundPorts" (join "," $p.skipOutboundPorts)
  "skipSubnets" (join "," $p.skipSubnets)
  "opaquePorts" (join "," $p.opaquePorts)
  "nativeSidecar" $p.nativeSidecar
-}}
{{- dict "mesh-config.json" ($cfg | toJson) | toJson -}}
{{- end -}}

{{/* Grafana's datasource: grafana.prometheusUrl (by default the chart's Prometheus). */}}
{{- define "mesh.grafana.datasourceData" -}}
{{- $url := .Values.grafana.prometheusUrl -}}
{{- $ds := dict "apiVersion" 1 "datasources" (list (dict
  "name" "Prometheus" "uid" "mesh-prometheus" "type" "prometheus" "access" "proxy"
  "url" $url "isDefault" true "editable" false
  "jsonData" (dict "timeInterval" "10s"))) -}}
{{- dict "prometheus.yaml" ($ds | toYaml) | toJson -}}
{{- end -}}

{{/*
Prometheus's configuration: the scrape job is files/scrape-config.yaml itself (one source of
truth), discovering pods through the in-cluster API with the prometheus ServiceAccount.
*/}}
{{- define "mesh.prometheus.configData" -}}
{{- $job := .Files.Get "files/scrape-config.yaml" | fromYaml -}}
{{- $_ := set $job "kubernetes_sd_configs" (list (dict "role" "pod")) -}}
{{- $webhook := include "mesh.prometheus.webhookJob" . | fromYaml -}}
{{- $config := dict
  "global" (dict "scrape_interval" "10s" "evaluation_interval" "10s")
  "scrape_configs" (list $job $webhook) -}}
{{- dict "prometheus.yml" ($config | toYaml) | toJson -}}
{{- end -}}

{{/* A ConfigMap's data from a JSON object of strings, as literal blocks kept byte for byte. */}}
{{- define "mesh.configMapData" -}}
{{- range $key, $value := fromJson . }}
{{ $key }}: |-
{{ $value | indent 2 }}
{{- end }}
{{- end -}}

{{/*
The webhook's own /metrics (admissions by result and reason: injector errors, skips), scraped
from each webhook pod's metrics port (plain HTTP, apart from the admission port; the webhook's
NetworkPolicy admits only Prometheus to it). `kubectl mesh check` reads it.
*/}}
{{- define "mesh.prometheus.webhookJob" -}}
job_name: mesh-webhook
scrape_interval: 10s
scheme: http
metrics_path: /metrics
kubernetes_sd_configs:
  - role: pod
    namespaces:
      names: [{{ include "mesh.namespace" . }}]
relabel_configs:
  - source_labels:
      - __meta_kubernetes_pod_label_app_kubernetes_io_name
      - __meta_kubernetes_pod_label_app_kubernetes_io_component
      - __meta_kubernetes_pod_container_port_name
    action: keep
    regex: kubectl-mesh;webhook;metrics
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
{{- end -}}
