"""The contracts between the mesh's parts: ports, names, labels, headers, metrics.

Every part (proxy, injector/webhook, CLI, chart, demo) reads these from here, so a change
is made once. docs/architecture.md explains each one; keep both in step.
Pure constants: importing this module costs nothing.
"""

from __future__ import annotations

# A namespace's name (an RFC 1123 label), for `re.fullmatch`: what the config and the webhook accept.
NAMESPACE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"

# --- Proxy ports and identity -------------------------------------------------------------
PROXY_INBOUND_PORT = 4143  # inbound TCP is redirected here
PROXY_OUTBOUND_PORT = 4140  # outbound TCP is redirected here (listens on 127.0.0.1)
PROXY_ADMIN_PORT = 4191  # /metrics, /live, /ready
# The tap (live request events, proxy/tap.py): on the pod's loopback only, never redirected;
# reached through the API server's pods/portforward, so RBAC decides who may tap.
PROXY_TAP_PORT = 4190
PROXY_UID = 2102  # the proxy's UID; its own traffic is never redirected
# Ports the init step never redirects inbound (the admin port and the tap port).
DEFAULT_INBOUND_PORTS_TO_IGNORE = (PROXY_TAP_PORT, PROXY_ADMIN_PORT)

PROXY_CONTAINER_NAME = "mesh-proxy"
INIT_CONTAINER_NAME = "mesh-init"
PROXY_PORT_NAME = "mesh-proxy"  # containerPort 4143
ADMIN_PORT_NAME = "mesh-admin"  # containerPort 4191; Prometheus scrapes by this name

# --- Environment of the proxy container (set by the injector from the downward API) -----
ENV_POD_NAME = "MESH_POD_NAME"
ENV_POD_NAMESPACE = "MESH_POD_NAMESPACE"
ENV_POD_IP = "MESH_POD_IP"
ENV_SERVICE_ACCOUNT = "MESH_SERVICE_ACCOUNT"
ENV_WORKLOAD_KIND = "MESH_WORKLOAD_KIND"  # one of WORKLOAD_KINDS
ENV_WORKLOAD_NAME = "MESH_WORKLOAD_NAME"
ENV_LOG_LEVEL = "MESH_LOG_LEVEL"
LOG_LEVELS = ("debug", "info", "warning", "error")  # the values of ENV_LOG_LEVEL
# The proxy's and the webhook's log lines (kubectl_mesh/log.py): logfmt (default) or JSON lines.
ENV_LOG_FORMAT = "MESH_LOG_FORMAT"
LOG_FORMATS = ("logfmt", "json")
ENV_OPAQUE_PORTS = "MESH_OPAQUE_PORTS"  # comma-separated ports relayed as TCP without detection

# --- Kubernetes labels and annotations ----------------------------------------------------
DOMAIN = "kubectl-mesh.io"
INJECT_LABEL = f"{DOMAIN}/inject"  # on a namespace or a pod: enabled | disabled
INJECT_ENABLED = "enabled"
INJECT_DISABLED = "disabled"
CONTROL_PLANE_NS_LABEL = f"{DOMAIN}/control-plane-ns"
WORKLOAD_NS_LABEL = f"{DOMAIN}/workload-ns"
PROXY_WORKLOAD_LABEL_PREFIX = f"{DOMAIN}/proxy-"  # + kind, e.g. kubectl-mesh.io/proxy-deployment=web
PROXY_VERSION_ANNOTATION = f"{DOMAIN}/proxy-version"
INJECTED_BY_ANNOTATION = f"{DOMAIN}/injected-by"
# JSON, on an injected pod only when needed: what `uninject` must put back that removal cannot tell
# (maps and lists that were empty or null, a missing metadata, the pod-level resources).
RESTORE_ANNOTATION = f"{DOMAIN}/restore"
SKIP_INBOUND_PORTS_ANNOTATION = f"{DOMAIN}/skip-inbound-ports"
SKIP_OUTBOUND_PORTS_ANNOTATION = f"{DOMAIN}/skip-outbound-ports"
OPAQUE_PORTS_ANNOTATION = f"{DOMAIN}/opaque-ports"

# Kubernetes Events the webhook records on a pod's owner (type Warning), as Linkerd's
# InjectionSkipped: an injector error admitted the pod without the proxy, or the proxy's init
# step would break the namespace's Pod Security level.
EVENT_INJECTION_SKIPPED = "InjectionSkipped"
EVENT_POD_SECURITY = "InjectionPodSecurityWarning"

CONTROL_PLANE_NAMESPACE = "mesh-system"
NEVER_INJECT_NAMESPACES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", CONTROL_PLANE_NAMESPACE}
)

# Workload kinds, as they appear in labels (proxy-<kind>), metric labels (src_<kind>, dst_<kind>)
# and Prometheus target labels (<kind>).
WORKLOAD_KINDS = (
    "deployment", "statefulset", "daemonset", "job", "cronjob", "replicaset", "replicationcontroller", "pod",
)  # fmt: skip

# --- Headers between proxies ---------------------------------------------------------------
# Value: "<namespace>/<kind>/<name>/<pod>" (no field may contain '/'; Kubernetes names cannot).
# The client-side proxy sets SRC_HEADER on requests (replacing any the app sent); the server-side
# proxy strips it before the app sees it. The server-side proxy sets DST_HEADER on responses; the
# client-side proxy strips it before the app sees it.
SRC_HEADER = "x-mesh-src"
DST_HEADER = "x-mesh-dst"
# The hop marker: each proxy that forwards a request outbound appends its own random id; a proxy
# that finds its id there refuses the request (a forwarding loop). Stripped before any app.
VIA_HEADER = "x-mesh-via"

# --- Metrics (Linkerd-compatible names) ----------------------------------------------------
METRIC_REQUESTS = "request_total"
METRIC_RESPONSES = "response_total"
METRIC_LATENCY = "response_latency_ms"
METRIC_TCP_OPEN = "tcp_open_total"
METRIC_TCP_CLOSE = "tcp_close_total"
METRIC_TCP_OPEN_CONNECTIONS = "tcp_open_connections"
METRIC_TCP_READ_BYTES = "tcp_read_bytes_total"
METRIC_TCP_WRITE_BYTES = "tcp_write_bytes_total"
# HTTP/2 streams open now (a gauge, not Linkerd's): labels direction and peer (src: streams of
# clients' connections; dst: streams the proxy opened upstream), four series whatever the traffic.
METRIC_H2_OPEN_STREAMS = "h2_open_streams"
# Linkerd's response_latency_ms bucket bounds, in milliseconds.
LATENCY_BUCKETS_MS = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip

# --- Control plane services ----------------------------------------------------------------
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_PORT = 9090
WEBHOOK_SERVICE = "mesh-webhook"
WEBHOOK_PORT = 443
WEBHOOK_CONTAINER_PORT = 8443
WEBHOOK_METRICS_PORT = 9995  # the webhook's /metrics, plain HTTP, apart from /mutate (as Linkerd's injector)
WEBHOOK_PATH = "/mutate"
WEBHOOK_TLS_SECRET = "mesh-webhook-tls"  # the serving certificate and key the chart makes
SCRAPE_JOB = "mesh-proxy"
WEBHOOK_SCRAPE_JOB = "mesh-webhook"  # the chart's Prometheus scrapes the webhook's /metrics
METRIC_WEBHOOK_ADMISSIONS = "mesh_webhook_admissions_total"  # labels result, reason
SCRAPE_INTERVAL = "10s"
ENV_PROMETHEUS_URL = "MESH_PROMETHEUS_URL"
