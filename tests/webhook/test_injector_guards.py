"""The injector knows what not to touch (issue #12): each case skips with a stated reason or is fixed.

Pure tests of the pure injector. What the API server says of the results is asserted in
tests/webhook/test_corpus.py (server-side dry runs against the lab).
"""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh.inject import MeshConfig, inject_pod, uninject_pod, workload_of
from kubectl_mesh.inject.injector import (
    SKIP_INVALID_ANNOTATION,
    SKIP_OTHER_MESH,
    SKIP_POD_SECURITY,
    SKIP_PORT_CONFLICT,
    SKIP_PROXY_UID,
    SKIP_REASONS,
    SKIP_WINDOWS,
    XTABLES_LOCK_VOLUME,
    Workload,
    label_value,
)
from kubectl_mesh.inject.podresources import format_quantity, parse_quantity
from kubectl_mesh.manifests import dump_yaml
from tests.webhook.webhook_testlib import validate_pod

CONFIG = MeshConfig()
NS = "shop"
APP = {"name": "app", "image": "app:1"}


def pod(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", **meta}, "spec": {"containers": [dict(APP)], **(spec or {})}}


def test_skip_reasons_are_a_closed_set_of_stable_names() -> None:
    assert len(set(SKIP_REASONS)) == len(SKIP_REASONS)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", r) for r in SKIP_REASONS)
    assert {"windows", "other-mesh", "port-conflict", "proxy-uid", "pod-security"} <= set(SKIP_REASONS)


# --- the xtables lock volume ---------------------------------------------------------------------


def test_a_pod_with_the_lock_volume_name_gets_a_free_name_and_uninjects_exactly() -> None:
    taken = {"name": XTABLES_LOCK_VOLUME, "configMap": {"name": "mine"}}
    also = {"name": f"{XTABLES_LOCK_VOLUME}-1", "emptyDir": {}}
    original = pod({"volumes": [taken, also]})
    decision = inject_pod(original, NS, None, CONFIG)
    assert decision.injected
    volumes = decision.pod["spec"]["volumes"]
    names = [v["name"] for v in volumes]
    assert len(names) == len(set(names)) == 3  # no duplicate: the API server refuses one
    assert volumes[:2] == [taken, also]  # the pod's own volumes untouched
    init = decision.pod["spec"]["initContainers"][0]
    assert init["volumeMounts"] == [{"name": f"{XTABLES_LOCK_VOLUME}-2", "mountPath": "/run"}]
    validate_pod(decision.pod)
    assert uninject_pod(decision.pod)[0] == original


# --- Windows -------------------------------------------------------------------------------------

WINDOWS_TERM = {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}
LINUX_TERM = {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}


def _affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    required = {"nodeSelectorTerms": list(terms)}
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}}


@pytest.mark.parametrize(
    "spec",
    [
        {"os": {"name": "windows"}},
        {"nodeSelector": {"kubernetes.io/os": "windows"}},
        {"nodeSelector": {"beta.kubernetes.io/os": "windows"}},
        _affinity(WINDOWS_TERM),
    ],
    ids=["spec.os", "nodeSelector", "beta nodeSelector", "affinity"],
)
def test_windows_pods_are_skipped(spec: dict[str, Any]) -> None:
    decision = inject_pod(pod(spec), NS, None, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_WINDOWS)
    assert "Windows" in decision.message


@pytest.mark.parametrize(
    "spec",
    [
        {"os": {"name": "linux"}},
        {"nodeSelector": {"kubernetes.io/os": "linux"}},
        _affinity(WINDOWS_TERM, LINUX_TERM),  # terms are ORed: it may land on Linux
    ],
)
def test_pods_that_may_run_on_linux_are_injected(spec: dict[str, Any]) -> None:
    assert inject_pod(pod(spec), NS, None, CONFIG).injected


# --- ports and UID the proxy needs ---------------------------------------------------------------


@pytest.mark.parametrize("port", [c.PROXY_OUTBOUND_PORT, c.PROXY_INBOUND_PORT, c.PROXY_ADMIN_PORT])
@pytest.mark.parametrize("where", ["containers", "initContainers"])
def test_an_app_on_a_proxy_port_is_skipped(port: int, where: str) -> None:
    app = {"name": "clash", "image": "x", "ports": [{"containerPort": 8080}, {"containerPort": port}]}
    spec = {"containers": [app]} if where == "containers" else {"initContainers": [app]}
    decision = inject_pod(pod(spec), NS, None, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_PORT_CONFLICT)
    assert f"clash uses {port}" in decision.message


def test_other_ports_are_fine() -> None:
    app = {"name": "web", "image": "x", "ports": [{"containerPort": 4190}, {"containerPort": 8080}]}
    assert inject_pod(pod({"containers": [app]}), NS, None, CONFIG).injected


@pytest.mark.parametrize(
    ("spec", "skipped"),
    [
        ({"securityContext": {"runAsUser": 2102}}, True),
        ({"containers": [{**APP, "securityContext": {"runAsUser": 2102}}]}, True),
        (
            {
                "securityContext": {"runAsUser": 2102},
                "containers": [{**APP, "securityContext": {"runAsUser": 1000}}],
            },
            False,
        ),
        ({"securityContext": {"runAsUser": 1000}}, False),
    ],
    ids=["pod", "container", "container overrides pod", "other uid"],
)
def test_an_app_running_as_the_proxy_uid_is_skipped(spec: dict[str, Any], skipped: bool) -> None:
    decision = inject_pod(pod(spec), NS, None, CONFIG)
    assert decision.injected is not skipped
    if skipped:
        assert decision.reason == SKIP_PROXY_UID and "2102" in decision.message


# --- other meshes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("annotations", "linkerd.io/inject", "enabled"),
        ("labels", "sidecar.istio.io/inject", "true"),
        ("annotations", "sidecar.istio.io/inject", "true"),
        ("annotations", "sidecar.istio.io/status", '{"containers":["istio-proxy"]}'),
        ("labels", "istio.io/rev", "canary"),
        ("annotations", "kuma.io/sidecar-injected", "true"),
        ("annotations", "consul.hashicorp.com/connect-inject", "true"),
        ("annotations", "consul.hashicorp.com/connect-inject-status", "injected"),
    ],
)
def test_pods_another_mesh_injects_are_skipped(where: str, key: str, value: str) -> None:
    decision = inject_pod(pod(**{where: {key: value}}), NS, None, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_OTHER_MESH)
    assert key in decision.message


@pytest.mark.parametrize(
    "sidecar",
    ["istio-proxy", "linkerd-proxy", "kuma-sidecar", "consul-dataplane", "consul-connect-envoy-sidecar"],
)
def test_pods_with_another_mesh_sidecar_are_skipped(sidecar: str) -> None:
    spec = {"containers": [APP, {"name": sidecar, "image": "x"}]}
    assert inject_pod(pod(spec), NS, None, CONFIG).reason == SKIP_OTHER_MESH


@pytest.mark.parametrize(
    "ns_labels",
    [{"istio-injection": "enabled"}, {"istio.io/rev": "1-22"}, {"kuma.io/sidecar-injection": "enabled"}],
)
def test_namespaces_another_mesh_injects_are_skipped(ns_labels: dict[str, str]) -> None:
    labels = {c.INJECT_LABEL: "enabled", **ns_labels}
    assert inject_pod(pod(), NS, labels, CONFIG).reason == SKIP_OTHER_MESH


def test_other_meshes_opted_out_do_not_count() -> None:
    annotations = {"linkerd.io/inject": "disabled", "sidecar.istio.io/inject": "false"}
    assert inject_pod(
        pod(annotations=annotations), NS, {"istio-injection": "disabled"}, CONFIG, explicit=True
    ).injected


# --- Pod Security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_namespace_enforcing_a_level_that_refuses_mesh_init_skips(level: str) -> None:
    labels = {c.INJECT_LABEL: "enabled", "pod-security.kubernetes.io/enforce": level}
    decision = inject_pod(pod(), NS, labels, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_POD_SECURITY)
    assert f"enforce={level}" in decision.message and "NET_ADMIN" in decision.message


def test_privileged_or_unknown_namespaces_inject_without_warnings() -> None:
    for labels in (None, {c.INJECT_LABEL: "enabled", "pod-security.kubernetes.io/enforce": "privileged"}):
        decision = inject_pod(pod(), NS, labels, CONFIG)
        assert decision.injected and decision.warnings == ()


def test_warn_and_audit_levels_inject_with_warnings() -> None:
    labels = {
        c.INJECT_LABEL: "enabled",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "baseline",
    }
    decision = inject_pod(pod(), NS, labels, CONFIG)
    assert decision.injected
    assert decision.warnings == (
        "mesh-init (root, NET_ADMIN, NET_RAW) violates Pod Security warn=restricted",
        "mesh-init (root, NET_ADMIN, NET_RAW) violates Pod Security audit=baseline",
    )


def test_explicit_requests_ignore_opt_in_but_not_pod_security() -> None:
    """`kubectl mesh inject` knows the namespace from its input: opt-in labels do not apply there."""
    assert inject_pod(pod(), NS, {}, CONFIG, explicit=True).injected
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    assert inject_pod(pod(), NS, restricted, CONFIG, explicit=True).reason == SKIP_POD_SECURITY


# --- pod-level resources ---------------------------------------------------------------------------


def _add(total: dict[str, Decimal], resources: dict[str, Any]) -> None:
    for name, amount in resources.items():
        total[name] = total.get(name, Decimal(0)) + parse_quantity(amount)


def pod_level_errors(spec: dict[str, Any]) -> list[str]:
    """Kubernetes' rule for pod-level resources (validatePodResourceConsistency, 1.32+): pod requests
    cover the aggregate container requests (sidecars run throughout, each init container beside the
    sidecars before it); pod limits cover every container's limit; pod requests <= pod limits."""
    budget = spec.get("resources") or {}
    regular: dict[str, Decimal] = {}
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for container in spec.get("containers", []):
        _add(regular, (container.get("resources") or {}).get("requests") or {})
    for container in spec.get("initContainers", []):
        requests = (container.get("resources") or {}).get("requests") or {}
        if container.get("restartPolicy") == "Always":
            _add(sidecars, requests)
        else:
            alone = dict(sidecars)
            _add(alone, requests)
            for name, amount in alone.items():
                init_peak[name] = max(init_peak.get(name, Decimal(0)), amount)
    _add(regular, {k: str(v) for k, v in sidecars.items()})
    errors = []
    for name, amount in budget.get("requests", {}).items():
        need = max(regular.get(name, Decimal(0)), init_peak.get(name, Decimal(0)))
        if need > parse_quantity(amount):
            errors.append(f"requests.{name} {amount} < {need}")
        limit = budget.get("limits", {}).get(name)
        if limit is not None and parse_quantity(amount) > parse_quantity(limit):
            errors.append(f"requests.{name} {amount} > limits {limit}")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for name, amount in ((container.get("resources") or {}).get("limits") or {}).items():
            limit = budget.get("limits", {}).get(name)
            if limit is not None and parse_quantity(amount) > parse_quantity(limit):
                errors.append(f"{container['name']} limits.{name} {amount} > pod {limit}")
    return errors


TIGHT = {
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "0.1", "memory": "128Mi"}},
    "containers": [
        {**APP, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}
    ],
}


@pytest.mark.parametrize("native", [True, False])
def test_pod_level_resources_get_the_proxy_share(native: bool) -> None:
    original = {"metadata": {"name": "tight"}, "spec": copy.deepcopy(TIGHT)}
    assert pod_level_errors(original["spec"]) == []
    config = MeshConfig(native_sidecar=native)
    injected = inject_pod(original, NS, None, config).pod
    assert pod_level_errors(injected["spec"]) == []
    # The rule bites: the same pod with the budget left as it was would be refused.
    unchanged = copy.deepcopy(injected)
    unchanged["spec"]["resources"] = TIGHT["resources"]
    assert pod_level_errors(unchanged["spec"]) != []
    assert injected["spec"]["resources"] == {
        "requests": {"cpu": "110m", "memory": "96Mi"},
        "limits": {"cpu": "110m", "memory": "384Mi"},  # the proxy's cpu request counts where it sets no limit
    }
    validate_pod(injected)
    assert uninject_pod(injected)[0] == original  # "0.1" comes back as written


def test_a_budget_below_mesh_init_is_raised_to_it() -> None:
    spec = {"resources": {"requests": {"memory": "1Mi"}}, "containers": [APP]}
    injected = inject_pod({"metadata": {"name": "x"}, "spec": spec}, NS, None, CONFIG).pod
    assert pod_level_errors(injected["spec"]) == []
    assert injected["spec"]["resources"] == {"requests": {"memory": "33Mi"}}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", "0.1"),
        ("1.5Gi", "1610612736"),
        ("2e3", "2000"),
        ("128974848", "128974848"),
        ("1k", "1000"),
        (".5", "0.5"),
    ],
)
def test_quantities(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "1 Gi", "Mi", "1.2.3", "٨٠"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_quantities_are_formatted_exactly() -> None:
    for value in ("0.11", "100663296", "1", "1.0005", "1536"):
        assert parse_quantity(format_quantity(Decimal(value))) >= Decimal(value)
    assert format_quantity(Decimal("100663296")) == "96Mi"


# --- labels and port lists --------------------------------------------------------------------------

LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@pytest.mark.parametrize(
    "name", ["café-rs", "-x-", "a" * 62 + "é" + "b" * 10, "web_v1", "x" * 70, "日本", "ok.name", "a b/c"]
)
def test_label_values_are_valid_for_any_name(name: str) -> None:
    value = label_value(name)
    assert LABEL_VALUE.fullmatch(value) and len(value.encode()) <= 63 and value.isascii()
    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": "u", "controller": True}
    injected = inject_pod(
        {"metadata": {"name": "p", "ownerReferences": [owner]}, "spec": {"containers": [APP]}},
        name,
        None,
        CONFIG,
    ).pod
    labels = injected["metadata"]["labels"]
    assert all(LABEL_VALUE.fullmatch(v) and len(v) <= 63 for v in labels.values())
    validate_pod(injected)


def test_label_value_keeps_valid_names() -> None:
    assert label_value("web-5d4f8c7b9") == "web-5d4f8c7b9"
    assert label_value("café-rs") == "caf--rs"  # each run of invalid characters becomes one "-"


@pytest.mark.parametrize("ports", ["٨٠", "8080,٨٠", "²"])
def test_port_lists_take_ascii_digits_only(ports: str) -> None:
    decision = inject_pod(pod(annotations={c.SKIP_INBOUND_PORTS_ANNOTATION: ports}), NS, None, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_INVALID_ANNOTATION)


# --- uninject restores the input exactly ------------------------------------------------------------

SHAPES = {
    "template without metadata (the Kubernetes docs' job.yaml)": {
        "spec": {"containers": [APP], "restartPolicy": "Never"}
    },
    "metadata null": {"metadata": None, "spec": {"containers": [APP]}},
    "metadata empty": {"metadata": {}, "spec": {"containers": [APP]}},
    "empty labels and annotations": {
        "metadata": {"labels": {}, "annotations": {}},
        "spec": {"containers": [APP]},
    },
    "null labels and annotations": {
        "metadata": {"labels": None, "annotations": None},
        "spec": {"containers": [APP]},
    },
    "empty initContainers and volumes": {
        "metadata": {"name": "p"},
        "spec": {"initContainers": [], "containers": [APP], "volumes": []},
    },
    "null initContainers and volumes": {
        "metadata": {"name": "p"},
        "spec": {"initContainers": None, "containers": [APP], "volumes": None},
    },
    "everything present": {
        "metadata": {"name": "p", "labels": {"a": "b"}, "annotations": {"x": "y"}},
        "spec": {
            "initContainers": [{"name": "i", "image": "i"}],
            "containers": [APP],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    },
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("native", [True, False])
def test_uninject_restores_the_input_exactly(shape: str, native: bool) -> None:
    original = SHAPES[shape]
    before = copy.deepcopy(original)
    decision = inject_pod(original, NS, None, MeshConfig(native_sidecar=native))
    assert decision.injected and original == before
    restored, changed = uninject_pod(decision.pod)
    assert changed
    assert restored == original
    assert dump_yaml([restored]) == dump_yaml([original])  # key order and null/empty too
    again = inject_pod(restored, NS, None, MeshConfig(native_sidecar=native)).pod
    assert dump_yaml([again]) == dump_yaml([decision.pod])


def test_the_restore_annotation_appears_only_when_needed() -> None:
    plain = inject_pod(SHAPES["everything present"], NS, None, CONFIG).pod
    assert c.RESTORE_ANNOTATION not in plain["metadata"]["annotations"]
    nometa = inject_pod(
        SHAPES["template without metadata (the Kubernetes docs' job.yaml)"], NS, None, CONFIG
    ).pod
    assert json.loads(nometa["metadata"]["annotations"][c.RESTORE_ANNOTATION]) == {"absent": ["metadata"]}


def test_the_docs_job_yaml_round_trips_through_the_cli_format() -> None:
    text = """apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl
      restartPolicy: Never
  backoffLimit: 4
"""
    job = yaml.safe_load(text)
    template = job["spec"]["template"]
    injected = inject_pod(template, None, None, CONFIG, workload=Workload("job", "pi")).pod
    assert "metadata" not in uninject_pod(injected)[0]


# --- ReplicationControllers -------------------------------------------------------------------------


def test_a_replication_controller_owns_its_pods() -> None:
    owner = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "name": "nginx",
        "uid": "u",
        "controller": True,
    }
    p = {"metadata": {"generateName": "nginx-", "ownerReferences": [owner]}, "spec": {"containers": [APP]}}
    assert workload_of(p) == Workload("replicationcontroller", "nginx")
    injected = inject_pod(p, NS, None, CONFIG).pod
    assert injected["metadata"]["labels"][f"{c.PROXY_WORKLOAD_LABEL_PREFIX}replicationcontroller"] == "nginx"
    assert "replicationcontroller" in c.WORKLOAD_KINDS
