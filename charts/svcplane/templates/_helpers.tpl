{{/* Names, labels and the Corefile shared by the templates. */}}

{{- define "svcplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "svcplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "svcplane.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "svcplane.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The DNS objects' name. */}}
{{- define "svcplane.dns.fullname" -}}
{{- printf "%s-dns" (include "svcplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The `k8s-app` label of the DNS pods: what the DNS Service selects. */}}
{{- define "svcplane.dns.k8sApp" -}}
{{- default "kube-dns" .Values.k8sAppLabelOverride }}
{{- end }}

{{- define "svcplane.dns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "svcplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dns
{{- end }}

{{- define "svcplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "svcplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- if .Values.isClusterService }}
kubernetes.io/cluster-service: "true"
{{- end }}
{{- with .Values.customLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "svcplane.dns.labels" -}}
{{ include "svcplane.labels" . }}
app.kubernetes.io/component: dns
k8s-app: {{ include "svcplane.dns.k8sApp" . }}
{{- end }}

{{- define "svcplane.annotations" -}}
{{- with .Values.customAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "svcplane.dns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "svcplane.dns.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "svcplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Corefile: `corefile` verbatim, or the server blocks of `servers` and `extraConfig`. */}}
{{- define "svcplane.corefile" -}}
{{- if .Values.corefile }}
{{- .Values.corefile }}
{{- else }}
{{- range .Values.servers }}
{{ range $i, $zone := (default (list (dict "zone" ".")) .zones) }}{{ if $i }} {{ end }}{{ default "" $zone.scheme }}{{ default "." $zone.zone }}{{ end }}{{ if .port }}:{{ .port }}{{ end }} {
{{- range .plugins }}
    {{ .name }}{{ if .parameters }} {{ .parameters }}{{ end }}{{ if .configBlock }} {
{{ .configBlock | indent 8 }}
    }{{ end }}
{{- end }}
}
{{- end }}
{{- range $name, $conf := .Values.extraConfig }}
{{ $name }}{{ if $conf.parameters }} {{ $conf.parameters }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The DNS ports of the servers, once each, as "port": "name" pairs in a dict. */}}
{{- define "svcplane.dns.ports" -}}
{{- $ports := dict }}
{{- range .Values.servers }}
{{- $port := toString (default 53 .port) }}
{{- $_ := set $ports $port (ternary "dns" (printf "dns-%s" $port) (eq $port "53")) }}
{{- end }}
{{- toYaml $ports }}
{{- end }}

{{/* Whether the pods mode needs pods watched (`pods verified`). */}}
{{- define "svcplane.dns.watchesPods" -}}
{{- if regexMatch "(?m)^\\s*pods\\s+verified\\b" (include "svcplane.corefile" .) }}true{{ end }}
{{- end }}

{{/* The controller objects' name. */}}
{{- define "svcplane.controller.fullname" -}}
{{- printf "%s-controller" (include "svcplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "svcplane.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "svcplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "svcplane.controller.labels" -}}
{{ include "svcplane.labels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "svcplane.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "svcplane.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether the chart runs the allocation webhook. */}}
{{- define "svcplane.webhook.enabled" -}}
{{- if and .Values.controller.enabled .Values.controller.webhook.enabled }}true{{ end }}
{{- end }}

{{/* The etcd objects' name, and whether the chart runs etcd. */}}
{{- define "svcplane.etcd.fullname" -}}
{{- printf "%s-etcd" (include "svcplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "svcplane.etcd.bundled" -}}
{{- if and (include "svcplane.webhook.enabled" .) .Values.etcd.enabled }}true{{ end }}
{{- end }}

{{- define "svcplane.etcd.labels" -}}
{{ include "svcplane.labels" . }}
app.kubernetes.io/component: etcd
{{- end }}

{{- define "svcplane.etcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "svcplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end }}

{{/* The scheme of the bundled etcd's URLs. */}}
{{- define "svcplane.etcd.scheme" -}}
{{- ternary "https" "http" (and .Values.etcd.enabled .Values.etcd.tls.enabled) }}
{{- end }}

{{/* Whether the controller talks to etcd with a client certificate, from a Secret mounted at
/etc/svcplane/etcd. */}}
{{- define "svcplane.etcd.clientTLS" -}}
{{- if .Values.etcd.enabled }}{{ if .Values.etcd.tls.enabled }}true{{ end }}
{{- else if .Values.etcd.external.existingSecret }}true{{ end }}
{{- end }}

{{/* The etcd client URLs the controller uses, comma-separated. */}}
{{- define "svcplane.etcd.endpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $name := include "svcplane.etcd.fullname" . }}
{{- $scheme := include "svcplane.etcd.scheme" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $urls = append $urls (printf "%s://%s-%d.%s-peers.%s.svc:2379" $scheme $name $i $name $.Release.Namespace) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- if not .Values.etcd.external.endpoints }}
{{- fail "etcd.external.endpoints: give the client URLs of the pools' etcd when etcd.enabled is false" }}
{{- end }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* The webhook's serving certificate and CA (base64): the existing Secret's when there is
one, else a CA and certificate generated here, for the controller Service's names. */}}
{{- define "svcplane.webhook.certs" -}}
{{- $secret := printf "%s-webhook-tls" (include "svcplane.controller.fullname" .) }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secret }}
{{- if and $existing (index ($existing.data | default dict) "ca.crt") }}
ca: {{ index $existing.data "ca.crt" }}
crt: {{ index $existing.data "tls.crt" }}
key: {{ index $existing.data "tls.key" }}
{{- else }}
{{- $service := include "svcplane.controller.fullname" . }}
{{- $names := list (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) }}
{{- $ca := genCA "svcplane-webhook-ca" 3650 }}
{{- $cert := genSignedCert (first $names) nil $names 3650 $ca }}
ca: {{ $ca.Cert | b64enc }}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- end }}
{{- end }}

{{/* The bundled etcd's CA, member and client certificates (base64): the existing Secret's,
else generated here for the members' names. */}}
{{- define "svcplane.etcd.certs" -}}
{{- $name := include "svcplane.etcd.fullname" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-tls" $name) }}
{{- if and $existing (index ($existing.data | default dict) "ca.crt") }}
{{- toYaml $existing.data }}
{{- else }}
{{- $peers := printf "%s-peers.%s.svc" $name .Release.Namespace }}
{{- $names := list (printf "*.%s" $peers) (printf "*.%s.cluster.local" $peers) $peers "localhost" }}
{{- $ca := genCA "svcplane-etcd-ca" 3650 }}
{{- $member := genSignedCert (printf "%s-member" $name) (list "127.0.0.1") $names 3650 $ca }}
{{- $client := genSignedCert "svcplane-controller" nil nil 3650 $ca }}
ca.crt: {{ $ca.Cert | b64enc }}
member.crt: {{ $member.Cert | b64enc }}
member.key: {{ $member.Key | b64enc }}
client.crt: {{ $client.Cert | b64enc }}
client.key: {{ $client.Key | b64enc }}
{{- end }}
{{- end }}
