{{/*
Combinations of values that the schema cannot express. Each fails rendering with one line
that says what to change. Included by templates/namespace.yaml, rendered first.
*/}}
{{- define "mesh.validate" -}}
{{- $c := .Values.webhook.certs -}}
{{- if eq $c.mode "secret" -}}
  {{- if not $c.existingSecret -}}
    {{- fail "webhook.certs.mode=secret needs webhook.certs.existingSecret: the name of a kubernetes.io/tls Secret in mesh-system" -}}
  {{- end -}}
  {{- if not $c.caBundle -}}
    {{- fail "webhook.certs.mode=secret needs webhook.certs.caBundle: the base64-encoded PEM of the CA that signed the Secret's certificate" -}}
  {{- end -}}
  {{- if not (contains "-----BEGIN CERTIFICATE-----" (b64dec $c.caBundle)) -}}
    {{- fail "webhook.certs.caBundle must be a base64-encoded PEM certificate (base64 -w0 ca.crt)" -}}
  {{- end -}}
{{- else -}}
  {{- if or $c.existingSecret $c.caBundle -}}
    {{- fail (printf "webhook.certs.existingSecret and webhook.certs.caBundle are only used with webhook.certs.mode=secret (mode is %s)" $c.mode) -}}
  {{- end -}}
{{- end -}}
{{- if and (ne $c.mode "certManager") $c.certManager.issuerRef.name -}}
  {{- fail (printf "webhook.certs.certManager.issuerRef is only used with webhook.certs.mode=certManager (mode is %s)" $c.mode) -}}
{{- end -}}
{{- $ownPrometheus := printf "http://prometheus.%s.svc:9090" (include "mesh.namespace" .) -}}
{{- if and .Values.grafana.enabled (not .Values.prometheus.enabled) (eq .Values.grafana.prometheusUrl $ownPrometheus) -}}
  {{- fail "grafana.enabled with prometheus.enabled=false needs grafana.prometheusUrl: the URL of your Prometheus (or set grafana.enabled=false)" -}}
{{- end -}}
{{- end -}}
