"""What the injector must not touch: pods it would break, or that another mesh already owns. Pure.

Each guard looks at a pod (or template) and answers with a one-line reason, or None. The
injector turns a reason into a skip: a pod the API server would reject, or that could not run
(a second proxy, a port the proxy needs, a Linux proxy on Windows), is admitted untouched, with
the reason in the webhook's `warnings` and the CLI's report (like Linkerd's `InjectionSkipped`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kubectl_mesh import contract as c

# Containers another mesh adds (Istio, Linkerd, Kuma, Consul): a pod with one is already meshed.
OTHER_MESH_CONTAINERS = frozenset(
    {
        "istio-proxy", "istio-init", "istio-validation",
        "linkerd-proxy", "linkerd-init", "linkerd-network-validator",
        "kuma-sidecar", "kuma-init",
        "consul-dataplane", "consul-connect-envoy-sidecar", "consul-connect-inject-init", "consul-sidecar",
    }
)  # fmt: skip

_YES = frozenset({"true", "yes", "y", "on", "enabled"})
_ANY = frozenset({"*"})
# (key, values that mean "this other mesh injects or injected the pod"; "*" any value), read from
# the pod's labels and annotations alike (Istio and Kuma accept both places).
OTHER_MESH_POD_MARKS: tuple[tuple[str, frozenset[str]], ...] = (
    ("linkerd.io/inject", frozenset({"enabled", "ingress"})),
    ("sidecar.istio.io/inject", _YES),
    ("sidecar.istio.io/status", _ANY),  # written by Istio's injector
    ("istio.io/rev", _ANY),  # a revision label opts the pod into that Istio revision
    ("kuma.io/sidecar-injection", _YES),
    ("kuma.io/sidecar-injected", _YES),
    ("consul.hashicorp.com/connect-inject", _YES),
    ("consul.hashicorp.com/connect-inject-status", frozenset({"injected"})),
)
# Namespace labels by which another mesh's webhook injects every pod of the namespace.
OTHER_MESH_NAMESPACE_MARKS: tuple[tuple[str, frozenset[str]], ...] = (
    ("istio-injection", frozenset({"enabled"})),
    ("istio.io/rev", _ANY),
    ("kuma.io/sidecar-injection", _YES),
    ("linkerd.io/inject", frozenset({"enabled", "ingress"})),
)

PROXY_PORTS = {
    c.PROXY_OUTBOUND_PORT: "outbound",
    c.PROXY_INBOUND_PORT: "inbound",
    c.PROXY_ADMIN_PORT: "admin",
}
OS_LABELS = ("kubernetes.io/os", "beta.kubernetes.io/os")

# Pod Security Admission (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# mesh-init runs as root with NET_ADMIN and NET_RAW, which `baseline` and `restricted` refuse.
PSA_PREFIX = "pod-security.kubernetes.io/"
PSA_ENFORCE = PSA_PREFIX + "enforce"
PSA_REFUSING_LEVELS = ("baseline", "restricted")


def other_mesh(pod: Mapping[str, Any], namespace_labels: Mapping[str, str] | None) -> str | None:
    """Another mesh's sidecar, opt-in or injection mark on the pod or its namespace."""
    other = sorted(container_names(pod) & OTHER_MESH_CONTAINERS)
    if other:
        return f"pod already has another mesh's sidecar ({other[0]})"
    meta = _mapping(pod.get("metadata"))
    for where in ("labels", "annotations"):
        found = _marked(_mapping(meta.get(where)), OTHER_MESH_POD_MARKS)
        if found:
            return f"pod {where[:-1]} {found} belongs to another mesh"
    found = _marked(namespace_labels or {}, OTHER_MESH_NAMESPACE_MARKS)
    if found:
        return f"namespace label {found} belongs to another mesh"
    return None


def windows(spec: Mapping[str, Any]) -> str | None:
    """A pod that can only run on Windows nodes (the proxy and its iptables step are Linux)."""
    if str(_mapping(spec.get("os")).get("name", "")).lower() == "windows":
        return "pod runs on Windows (spec.os.name), the mesh proxy is Linux-only"
    selector = _mapping(spec.get("nodeSelector"))
    for key in OS_LABELS:
        if str(selector.get(key, "")).lower() == "windows":
            return f"pod runs on Windows (nodeSelector {key}), the mesh proxy is Linux-only"
    affinity = _mapping(_mapping(spec.get("affinity")).get("nodeAffinity"))
    required = _mapping(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = required.get("nodeSelectorTerms")
    if isinstance(terms, list) and terms and all(_windows_only(term) for term in terms):
        return "pod runs on Windows (node affinity), the mesh proxy is Linux-only"
    return None


def _windows_only(term: Any) -> bool:
    """A node selector term that matches Windows nodes alone (terms are ORed, expressions ANDed)."""
    for expr in _mapping(term).get("matchExpressions") or []:
        expr = _mapping(expr)
        values = expr.get("values")
        if (
            expr.get("key") in OS_LABELS
            and expr.get("operator") == "In"
            and isinstance(values, list)
            and values
            and all(str(v).lower() == "windows" for v in values)
        ):
            return True
    return False


def port_conflict(spec: Mapping[str, Any]) -> str | None:
    """An app container that declares a port the proxy listens on: one of the two cannot bind."""
    for container in app_containers(spec):
        for port in _mapping(container).get("ports") or []:
            number = _mapping(port).get("containerPort")
            if isinstance(number, int) and number in PROXY_PORTS:
                return f"container {_name(container)} uses {number}, the proxy's {PROXY_PORTS[number]} port"
    return None


def proxy_uid(spec: Mapping[str, Any]) -> str | None:
    """An app container running as the proxy's UID: iptables would let its traffic bypass the proxy."""
    pod_uid = _mapping(spec.get("securityContext")).get("runAsUser")
    for container in app_containers(spec):
        uid = _mapping(_mapping(container).get("securityContext")).get("runAsUser", pod_uid)
        if uid == c.PROXY_UID:
            name = _name(container)
            return f"container {name} runs as UID {c.PROXY_UID}, the proxy's: its traffic would bypass it"
    return None


def pod_security_refuses(namespace_labels: Mapping[str, str] | None) -> str | None:
    """The namespace's enforced Pod Security level refuses mesh-init: the API server would reject the pod."""
    level = (namespace_labels or {}).get(PSA_ENFORCE)
    if level in PSA_REFUSING_LEVELS:
        return f"Pod Security enforce={level} refuses mesh-init (root, NET_ADMIN, NET_RAW)"
    return None


def pod_security_warnings(namespace_labels: Mapping[str, str] | None) -> list[str]:
    """The namespace's `warn`/`audit` Pod Security levels that mesh-init violates (admitted, but reported)."""
    labels = namespace_labels or {}
    out = []
    for mode in ("warn", "audit"):
        level = labels.get(PSA_PREFIX + mode)
        if level in PSA_REFUSING_LEVELS:
            out.append(f"mesh-init (root, NET_ADMIN, NET_RAW) violates Pod Security {mode}={level}")
    return out


def app_containers(spec: Mapping[str, Any]) -> Iterator[Any]:
    """The pod's own containers, init containers included (they run beside the native proxy)."""
    for key in ("initContainers", "containers"):
        containers = spec.get(key)
        yield from containers if isinstance(containers, list) else []


def container_names(pod: Mapping[str, Any]) -> set[str]:
    names = {_name(x) for x in app_containers(_mapping(pod.get("spec")))}
    return {n for n in names if isinstance(n, str)}


def _marked(values: Mapping[str, Any], marks: tuple[tuple[str, frozenset[str]], ...]) -> str | None:
    for key, accepted in marks:
        value = values.get(key)
        if isinstance(value, str) and (accepted is _ANY or value.lower() in accepted):
            return f"{key}={value}"
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _name(obj: Any) -> Any:
    return obj.get("name") if isinstance(obj, Mapping) else None
