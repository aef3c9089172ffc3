"""The CLI's workload source for compute_stat: objects and their pods from the Kubernetes API.

`workloads_from_objects` is pure (objects + running pods -> Workloads) and is what tests call;
`kube_workloads(client)` does the listing. A pod is meshed when it carries the proxy container
(`mesh-proxy`, in `containers` or, as a native sidecar, in `initContainers`); only running pods
count, as `kubectl get` shows READY. A workload's pods are those its `spec.selector` matches
(what its controller uses), a namespace's pods are all pods in it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from kubectl_mesh.contract import PROXY_CONTAINER_NAME
from kubectl_mesh.stat.model import StatRequest, Workload

# kind -> (API group path, resource)
API_PATHS = {
    "deployment": ("/apis/apps/v1", "deployments"),
    "statefulset": ("/apis/apps/v1", "statefulsets"),
    "daemonset": ("/apis/apps/v1", "daemonsets"),
    "replicaset": ("/apis/apps/v1", "replicasets"),
    "job": ("/apis/batch/v1", "jobs"),
    "pod": ("/api/v1", "pods"),
    "namespace": ("/api/v1", "namespaces"),
}


def list_path(kind: str, namespace: str | None) -> str:
    group, resource = API_PATHS[kind]
    if namespace is None or kind == "namespace":
        return f"{group}/{resource}"
    return f"{group}/namespaces/{namespace}/{resource}"


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector against labels; an empty or missing selector matches nothing
    (as for workloads, whose selector is required)."""
    if not selector:
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in expressions:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def is_meshed(pod: dict[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    return any(c.get("name") == PROXY_CONTAINER_NAME for c in containers)


def is_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def workloads_from_objects(
    kind: str, objects: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]
) -> list[Workload]:
    """Pure: listed objects of `kind` and the pods around them -> Workloads with pod counts."""
    running = [p for p in pods if is_running(p)]
    by_namespace: dict[str, list[dict[str, Any]]] = {}
    for pod in running:
        by_namespace.setdefault(_meta(pod).get("namespace", ""), []).append(pod)
    result: list[Workload] = []
    for obj in objects:
        meta = _meta(obj)
        name = meta.get("name", "")
        if kind == "namespace":
            members = by_namespace.get(name, [])
            namespace = name
        elif kind == "pod":
            namespace = meta.get("namespace", "")
            members = [obj] if is_running(obj) else []
        else:
            namespace = meta.get("namespace", "")
            selector = (obj.get("spec") or {}).get("selector")
            members = [
                p
                for p in by_namespace.get(namespace, [])
                if selector_matches(selector, _meta(p).get("labels") or {})
            ]
        meshed = sum(1 for p in members if is_meshed(p))
        result.append(
            Workload(namespace=namespace, kind=kind, name=name, meshed=meshed, running=len(members))
        )
    return result


GetJson = Callable[[str, dict[str, str] | None], dict[str, Any]]


def kube_workloads(get_json: GetJson) -> Callable[[StatRequest], list[Workload]]:
    """A thread-safe lister over `get_json(path, params)` (KubeClient.get_json); running pods are
    listed once per scope and shared by the kinds of one `stat all`."""
    lock = threading.Lock()
    pods_cache: dict[str | None, list[dict[str, Any]]] = {}

    def running_pods(scope: str | None) -> list[dict[str, Any]]:
        with lock:
            if scope not in pods_cache:
                doc = get_json(list_path("pod", scope), {"fieldSelector": "status.phase=Running"})
                pods_cache[scope] = doc.get("items") or []
            return pods_cache[scope]

    def workloads(request: StatRequest) -> list[Workload]:
        kind = request.kind
        scope = None if request.all_namespaces or kind == "namespace" else request.namespace
        params = {"labelSelector": request.selector} if request.selector else None
        objects = get_json(list_path(kind, scope), params).get("items") or []
        pods = [] if kind == "pod" else running_pods(scope)
        return workloads_from_objects(kind, objects, pods)

    return workloads
