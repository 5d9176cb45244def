{{/*
Names. Every object name is the release's full name plus a suffix of at most 11 characters, so
the full name is cut to 52 characters to keep names within Kubernetes' 63.
*/}}
{{- define "geode.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "geode.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains (include "geode.name" .) .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "geode.name" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "geode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "geode.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every object; in simulation each carries geode.dev/simulation: "true". */}}
{{- define "geode.labels" -}}
{{ include "geode.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- if .root.Values.simulation.enabled }}
geode.dev/simulation: "true"
{{- end }}
{{- end -}}

{{- define "geode.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The mesh API as pods reach it: what the webhook injects and the certificate names. */}}
{{- define "geode.meshHost" -}}
{{- printf "%s-mesh.%s.svc" (include "geode.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "geode.meshAddress" -}}
{{- printf "%s:%d" (include "geode.meshHost" .) (int .Values.coordinator.ports.mesh) -}}
{{- end -}}

{{/* DNS names of the Coordinator's TLS certificate: both Services in every short form. */}}
{{- define "geode.coordinatorNames" -}}
{{- $names := list -}}
{{- range $service := list "client" "mesh" -}}
{{- $base := printf "%s-%s" (include "geode.fullname" $) $service -}}
{{- $names = concat $names (list $base (printf "%s.%s" $base $.Release.Namespace) (printf "%s.%s.svc" $base $.Release.Namespace) (printf "%s.%s.svc.%s" $base $.Release.Namespace $.Values.clusterDomain)) -}}
{{- end -}}
{{- concat $names .Values.coordinator.extraSANs | uniq | toJson -}}
{{- end -}}

{{/* Namespaces where labelled pods run: they get the root ConfigMap (and the simulated platform key). */}}
{{- define "geode.workloadNamespaces" -}}
{{- default (list .Release.Namespace) .Values.workloadNamespaces | uniq | toJson -}}
{{- end -}}

{{- define "geode.platformKeySecret" -}}
{{- default (printf "%s-platform-key" (include "geode.fullname" .)) .Values.simulation.platformKey.existingSecret -}}
{{- end -}}

{{- define "geode.webhookTLSSecret" -}}
{{- if eq .Values.webhook.tls.mode "generate" -}}
{{- printf "%s-webhook-tls" (include "geode.fullname" .) -}}
{{- else -}}
{{- required (printf "webhook.tls.secretName is required with webhook.tls.mode=%s" .Values.webhook.tls.mode) .Values.webhook.tls.secretName -}}
{{- end -}}
{{- end -}}

{{/* The arguments of the etcd store: `geode coordinator --store etcd://... --etcd-prefix ...`
with the client certificate when TLS is on (docs/coordinator.md, Stores). */}}
{{- define "geode.etcdArgs" -}}
{{- $etcd := .Values.coordinator.store.etcd -}}
{{- if not $etcd.endpoints -}}
{{- fail "coordinator.store.etcd.endpoints: list the etcd members (host:port) with coordinator.store.type=etcd" -}}
{{- end -}}
{{- $args := list "--store" (printf "etcd://%s" (join "," $etcd.endpoints)) "--etcd-prefix" $etcd.prefix -}}
{{- /* Peers reach each replica's mesh API at its stable name (the headless Service); the
       kubelet expands $(GEODE_POD_NAME) from the container's environment. */ -}}
{{- $peer := printf "$(GEODE_POD_NAME).%s-headless.%s.svc.%s:%d" (include "geode.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.coordinator.ports.mesh) -}}
{{- $args = concat $args (list "--advertise-addr" $peer) -}}
{{- if $etcd.tls.enabled -}}
{{- $args = concat $args (list "--etcd-ca" "/etc/geode/etcd/ca.crt" "--etcd-cert" "/etc/geode/etcd/tls.crt" "--etcd-key" "/etc/geode/etcd/tls.key") -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{/* The Coordinator's TEE (`--tee`), checked: simulation.enabled=true is the acknowledgement
that simulated needs, and it contradicts a hardware kind. */}}
{{- define "geode.tee" -}}
{{- $tee := .Values.coordinator.tee -}}
{{- if .Values.simulation.enabled -}}
{{- if not (has $tee (list "auto" "simulated")) -}}
{{- fail (printf "simulation.enabled=true contradicts coordinator.tee=%s: a Coordinator runs either in a TEE or in simulation; unset one of them" $tee) -}}
{{- end -}}
simulated
{{- else if eq $tee "simulated" -}}
{{- fail "coordinator.tee=simulated runs without hardware isolation: set simulation.enabled=true as well to acknowledge it (every object is then labelled geode.dev/simulation)" -}}
{{- else -}}
{{- if eq $tee "sgx-gramine" -}}
{{- if not (index .Values.tee.profiles "sgx-gramine").gramine.image.repository -}}
{{- fail "coordinator.tee=sgx-gramine needs the Gramine image of geode: set tee.profiles.sgx-gramine.gramine.image.repository (the plain image cannot run in an enclave; see deploy/hardware/gramine)" -}}
{{- end -}}
{{- end -}}
{{- $tee -}}
{{- end -}}
{{- end -}}

{{/* The profile of the Coordinator's TEE (tee.profiles), as JSON. */}}
{{- define "geode.teeProfile" -}}
{{- toJson (default dict (index .Values.tee.profiles (include "geode.tee" .))) -}}
{{- end -}}

{{/* What the webhook gives injected pods per package TEE (docs/kubernetes.md): the profiles'
fields that apply to a workload pod, keyed by the manifest's kind. */}}
{{- define "geode.workloadProfiles" -}}
{{- $out := dict -}}
{{- range $kind, $name := dict "sev-snp" "sev-snp" "tdx" "tdx" "sgx" "sgx-gramine" -}}
{{- $p := default dict (index $.Values.tee.profiles $name) -}}
{{- $_ := set $out $kind (dict "runtimeClassName" (default "" $p.runtimeClassName) "resources" (default dict $p.resources) "nodeSelector" (default dict $p.nodeSelector) "tolerations" (default list $p.tolerations) "hostPaths" (default list $p.hostPaths) "launcher" (default list $p.launcher)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
