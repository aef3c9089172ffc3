"""MESHED from Kubernetes objects: pods with the mesh-proxy container (sidecar or native
sidecar), running ones only, matched to workloads by their selector (pure)."""

from __future__ import annotations

from typing import Any

from kubectl_mesh.stat.model import StatRequest
from kubectl_mesh.stat.sources import kube_workloads, list_path, selector_matches, workloads_from_objects


def pod(
    name: str, ns: str, labels: dict[str, str], *, meshed: str = "", phase: str = "Running"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app"}]}
    if meshed == "sidecar":
        spec["containers"].append({"name": "mesh-proxy"})
    elif meshed == "native":
        spec["initContainers"] = [{"name": "mesh-init"}, {"name": "mesh-proxy", "restartPolicy": "Always"}]
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
        "status": {"phase": phase},
    }


def deploy(name: str, ns: str, selector: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"selector": selector}}


PODS = [
    pod("web-1", "shop", {"app": "web"}, meshed="sidecar"),
    pod("web-2", "shop", {"app": "web"}, meshed="native"),
    pod("web-3", "shop", {"app": "web"}),
    pod("web-4", "shop", {"app": "web"}, meshed="sidecar", phase="Failed"),
    pod("db-1", "shop", {"app": "db"}),
    pod("web-x", "other", {"app": "web"}, meshed="sidecar"),
]


def test_meshed_over_running_pods_of_each_deployment() -> None:
    objects = [
        deploy("web", "shop", {"matchLabels": {"app": "web"}}),
        deploy("db", "shop", {"matchLabels": {"app": "db"}}),
    ]
    got = {(w.name, w.meshed, w.running) for w in workloads_from_objects("deployment", objects, PODS)}
    assert got == {("web", 2, 3), ("db", 0, 1)}


def test_pods_and_namespaces() -> None:
    pods = {(w.name, w.meshed, w.running) for w in workloads_from_objects("pod", PODS, PODS)}
    assert ("web-2", 1, 1) in pods and ("web-4", 0, 0) in pods and ("db-1", 0, 1) in pods
    namespaces = [{"metadata": {"name": "shop"}}, {"metadata": {"name": "empty"}}]
    got = {
        (w.namespace, w.name, w.meshed, w.running)
        for w in workloads_from_objects("namespace", namespaces, PODS)
    }
    assert got == {("shop", "shop", 2, 4), ("empty", "empty", 0, 0)}


def test_selector_expressions() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selector_matches(
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]}, labels
    )
    assert not selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels
    )
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, labels)
    assert not selector_matches({}, labels)


def test_the_lister_asks_the_api_for_the_right_paths() -> None:
    calls: list[tuple[str, dict[str, str] | None]] = []

    def get_json(path: str, params: dict[str, str] | None) -> dict[str, Any]:
        calls.append((path, params))
        return {"items": []}

    lister = kube_workloads(get_json)
    lister(StatRequest(kind="deployment", namespace="shop", selector="app=web"))
    lister(StatRequest(kind="pod", namespace="shop"))
    assert calls == [
        ("/apis/apps/v1/namespaces/shop/deployments", {"labelSelector": "app=web"}),
        ("/api/v1/namespaces/shop/pods", {"fieldSelector": "status.phase=Running"}),
        ("/api/v1/namespaces/shop/pods", None),
    ]
    assert list_path("job", None) == "/apis/batch/v1/jobs"
    assert list_path("namespace", "x") == "/api/v1/namespaces"
