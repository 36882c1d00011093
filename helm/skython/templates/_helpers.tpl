{{/* Names: <release>-skython, or the release name when it already says skython. */}}
{{- define "skython.fullname" -}}
{{- if contains "skython" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-skython" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "skython.gateway" -}}{{ include "skython.fullname" . }}-gateway{{- end -}}
{{- define "skython.operator" -}}{{ include "skython.fullname" . }}-operator{{- end -}}

{{/* Where SkyFunctions live. */}}
{{- define "skython.functionsNamespace" -}}
{{- .Values.functions.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "skython.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: skython
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of a component; the gateway's also tell the operator which pods may call
runner pods (their NetworkPolicy admits only these). */}}
{{- define "skython.selector" -}}
app.kubernetes.io/name: skython-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "skython.image" -}}
{{- $i := .root.Values.image -}}
{{- printf "%s/%s/%s:%s" $i.registry $i.repository .name ($i.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "skython.mongodbSecret" -}}
{{- required "mongodb.existingSecret: name the Secret that holds the MongoDB URI (see the chart's README)" .Values.mongodb.existingSecret -}}
{{- end -}}

{{- define "skython.adminSecret" -}}
{{- .Values.gateway.adminToken.existingSecret | default (printf "%s-admin" (include "skython.fullname" .)) -}}
{{- end -}}

{{- define "skython.metricsSecret" -}}
{{- .Values.metrics.token.existingSecret | default (printf "%s-metrics" (include "skython.fullname" .)) -}}
{{- end -}}

{{/* The warm pool: its anchor ConfigMap (owner of the pool's pods and NetworkPolicy, in the
functions' namespace) and the Secret both the operator and the gateways derive the pool's key
from, mounted in both at skython.poolKeyFile. */}}
{{- define "skython.pool" -}}{{ include "skython.fullname" . }}-pool{{- end -}}
{{- define "skython.poolKeySecret" -}}{{ include "skython.fullname" . }}-pool-key{{- end -}}
{{- define "skython.poolKeyFile" -}}/etc/skython/pool/secret{{- end -}}

{{/* The Service's port as an environment variable the kubelet sets (Service links): the
operator's pods learn the gateway's ClusterIP this way, with no DNS. */}}
{{- define "skython.gatewayServiceEnv" -}}
{{- include "skython.gateway" . | upper | replace "-" "_" -}}_SERVICE_HOST
{{- end -}}

{{- define "skython.gatewayUrl" -}}
{{- if .Values.operator.gatewayUrl -}}
{{- .Values.operator.gatewayUrl -}}
{{- else -}}
http://$({{ include "skython.gatewayServiceEnv" . }}):{{ .Values.gateway.service.port }}
{{- end -}}
{{- end -}}

{{- define "skython.publicUrl" -}}
{{- if .Values.gateway.publicUrl -}}
{{- .Values.gateway.publicUrl -}}
{{- else if .Values.gateway.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.gateway.ingress.tlsSecret "")) .Values.gateway.ingress.host -}}
{{- else -}}
{{- $port := int .Values.gateway.service.port -}}
{{- printf "http://%s.%s.svc%s" (include "skython.gateway" .) .Release.Namespace (ternary "" (printf ":%d" $port) (eq $port 80)) -}}
{{- end -}}
{{- end -}}

{{/* A generated secret value, the same across upgrades: read back from the cluster when the
Secret exists. Under the key "token" unless .key says otherwise. */}}
{{- define "skython.keptSecret" -}}
{{- $key := .key | default "token" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing (index $existing.data $key) -}}
{{- index $existing.data $key -}}
{{- else -}}
{{- printf "%s%s" .prefix (randAlphaNum 48) | b64enc -}}
{{- end -}}
{{- end -}}

{{- define "skython.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
{{- end -}}

{{/* policy/v1 from Kubernetes 1.21; 1.20 serves only policy/v1beta1. */}}
{{- define "skython.pdbApiVersion" -}}
{{- ternary "policy/v1" "policy/v1beta1" (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
