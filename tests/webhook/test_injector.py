"""The pure injector over real-world pod shapes: decision, mutation, patch, schema, round trip."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_mesh import contract as c
from kubectl_mesh.inject.config import MeshConfig
from kubectl_mesh.inject.injector import (
    SKIP_ALREADY_INJECTED,
    SKIP_HOST_NETWORK,
    SKIP_INVALID_ANNOTATION,
    SKIP_INVALID_LABEL,
    SKIP_NOT_OPTED_IN,
    SKIP_OPTED_OUT,
    SKIP_OTHER_MESH,
    SKIP_SYSTEM_NAMESPACE,
    Workload,
    inject_pod,
    make_patch,
    uninject_pod,
    workload_of,
)
from tests.webhook import webhook_testlib
from tests.webhook.webhook_testlib import validate_pod

CONFIG = MeshConfig()
NS = "emojivoto"


def rs_owner(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "u-1", "controller": True}


def owner(kind: str, name: str, api: str = "apps/v1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "name": name, "uid": "u-2", "controller": True}


APP = {"name": "web", "image": "buoyantio/emojivoto-web:v11", "command": ["/usr/local/bin/emojivoto-web"]}

# name -> (pod, expected workload kind, expected workload name)
SHAPES: dict[str, tuple[dict[str, Any], str, str]] = {
    "bare pod, no labels, no annotations, no initContainers": (
        {"metadata": {"name": "solo"}, "spec": {"containers": [APP]}},
        "pod",
        "solo",
    ),
    "no metadata maps at all, generateName": (
        {"metadata": {"generateName": "batch-"}, "spec": {"containers": [APP]}},
        "pod",
        "batch",
    ),
    "deployment pod with labels but no annotations map": (
        {
            "metadata": {
                "generateName": "web-5d4f8c7b9-",
                "labels": {"app": "web", "pod-template-hash": "5d4f8c7b9"},
                "ownerReferences": [rs_owner("web-5d4f8c7b9")],
            },
            "spec": {"containers": [APP], "serviceAccountName": "web"},
        },
        "deployment",
        "web",
    ),
    "existing init containers": (
        {
            "metadata": {
                "name": "db-0",
                "labels": {"app": "db"},
                "ownerReferences": [owner("StatefulSet", "db")],
            },
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "flyway:10", "command": ["flyway", "migrate"]},
                    {"name": "warm", "image": "busybox", "command": ["true"]},
                ],
                "containers": [{"name": "db", "image": "postgres:16", "ports": [{"containerPort": 5432}]}],
            },
        },
        "statefulset",
        "db",
    ),
    "multiple containers with ports and volumes": (
        {
            "metadata": {
                "name": "agent-x",
                "annotations": {"team": "obs"},
                "ownerReferences": [owner("DaemonSet", "agent")],
            },
            "spec": {
                "containers": [
                    {
                        "name": "agent",
                        "image": "agent:1",
                        "ports": [
                            {"name": "http", "containerPort": 8080},
                            {"containerPort": 9000, "protocol": "UDP"},
                        ],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    },
                    {"name": "sidecar-logger", "image": "fluent-bit:3", "args": ["-c", "/cfg"]},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        },
        "daemonset",
        "agent",
    ),
    "existing securityContext (pod and container, runAsNonRoot)": (
        {
            "metadata": {"name": "locked", "ownerReferences": [owner("Job", "report-28912345", "batch/v1")]},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 2000},
                "containers": [
                    {
                        "name": "report",
                        "image": "report:2",
                        "securityContext": {
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        },
        "cronjob",  # a Job named <cronjob>-<scheduled minute>, as the CronJob controller names them
        "report",
    ),
    "replicaset without pod-template-hash": (
        {
            "metadata": {
                "name": "rs-abc",
                "labels": {"app": "rs"},
                "ownerReferences": [rs_owner("legacy-rs")],
            },
            "spec": {"containers": [APP]},
        },
        "replicaset",
        "legacy-rs",
    ),
    "unknown owner kind (operator CRD)": (
        {
            "metadata": {
                "name": "op-pod",
                "ownerReferences": [owner("Rollout", "r", "argoproj.io/v1alpha1")],
            },
            "spec": {"containers": [APP]},
        },
        "pod",
        "op-pod",
    ),
    "opt-in label on the pod and skip-port annotations": (
        {
            "metadata": {
                "name": "ports",
                "labels": {c.INJECT_LABEL: c.INJECT_ENABLED},
                "annotations": {
                    c.SKIP_INBOUND_PORTS_ANNOTATION: "9090, 8000-8010",
                    c.SKIP_OUTBOUND_PORTS_ANNOTATION: "3306",
                    c.OPAQUE_PORTS_ANNOTATION: "6379",
                },
            },
            "spec": {"containers": [APP]},
        },
        "pod",
        "ports",
    ),
}


def _containers_by_name(pod: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in pod["spec"].get(key, [])}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_injects_real_world_shapes(shape: str) -> None:
    pod, kind, name = SHAPES[shape]
    original = copy.deepcopy(pod)
    decision = inject_pod(pod, NS, None, CONFIG, injected_by="test/1")
    assert decision.injected, decision.message
    assert pod == original, "the input pod must not be modified"
    mutated = decision.pod

    # The patch is the diff: applying it to the original gives the mutated pod exactly.
    patch = make_patch(pod, mutated)
    assert jsonpatch.apply_patch(original, patch) == mutated
    validate_pod(mutated)

    inits = mutated["spec"]["initContainers"]
    user_inits = pod["spec"].get("initContainers", [])
    # mesh-init first, the native-sidecar proxy right after it, then the user's init containers.
    assert [x["name"] for x in inits] == [c.INIT_CONTAINER_NAME, c.PROXY_CONTAINER_NAME] + [
        x["name"] for x in user_inits
    ]
    assert inits[2:] == user_inits
    assert mutated["spec"]["containers"] == pod["spec"]["containers"]

    init, proxy = inits[0], inits[1]
    assert init["command"][:2] == ["mesh-proxy", "init"]
    assert proxy["command"] == ["mesh-proxy", "run"]
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"]["httpGet"] == {"path": "/ready", "port": c.PROXY_ADMIN_PORT}
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/live"
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {
        c.PROXY_PORT_NAME: c.PROXY_INBOUND_PORT,
        c.ADMIN_PORT_NAME: c.PROXY_ADMIN_PORT,
    }
    sc = proxy["securityContext"]
    assert sc["runAsUser"] == c.PROXY_UID and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and sc["capabilities"] == {"drop": ["ALL"]}
    isc = init["securityContext"]
    assert isc["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert isc["runAsUser"] == 0 and isc["runAsNonRoot"] is False  # overrides a pod-level runAsNonRoot

    env = _env(proxy)
    assert env[c.ENV_WORKLOAD_KIND] == kind and env[c.ENV_WORKLOAD_NAME] == name
    assert env[c.ENV_POD_NAME] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env[c.ENV_POD_NAMESPACE] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env[c.ENV_POD_IP] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[c.ENV_SERVICE_ACCOUNT] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert env[c.ENV_LOG_LEVEL] == "info" and env[c.ENV_LOG_FORMAT] == "logfmt"

    labels = mutated["metadata"]["labels"]
    assert labels[f"{c.PROXY_WORKLOAD_LABEL_PREFIX}{kind}"] == name
    assert labels[c.CONTROL_PLANE_NS_LABEL] == c.CONTROL_PLANE_NAMESPACE
    assert labels[c.WORKLOAD_NS_LABEL] == NS
    for key, value in (pod["metadata"].get("labels") or {}).items():
        assert labels[key] == value
    annotations = mutated["metadata"]["annotations"]
    assert annotations[c.PROXY_VERSION_ANNOTATION] == CONFIG.proxy_version
    assert annotations[c.INJECTED_BY_ANNOTATION] == "test/1"

    # Idempotent: a second pass changes nothing.
    again = inject_pod(mutated, NS, None, CONFIG)
    assert again.reason == SKIP_ALREADY_INJECTED and again.pod == mutated
    assert make_patch(mutated, again.pod) == []
    # uninject removes exactly what inject added.
    restored, changed = uninject_pod(mutated)
    assert changed and restored == original


def test_skip_port_annotations_reach_init_and_proxy() -> None:
    pod = SHAPES["opt-in label on the pod and skip-port annotations"][0]
    mutated = inject_pod(pod, NS, None, CONFIG).pod
    init = mutated["spec"]["initContainers"][0]
    cmd = init["command"]
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=True))
    assert flags == {
        "--proxy-uid": "2102",
        "--inbound-port": "4143",
        "--outbound-port": "4140",
        "--inbound-ports-to-ignore": "4190,4191,8000-8010,9090",
        "--outbound-ports-to-ignore": "3306",
    }
    proxy = mutated["spec"]["initContainers"][1]
    assert _env(proxy)[c.ENV_OPAQUE_PORTS] == "6379"  # the annotation replaces the default


def test_config_drives_images_resources_and_defaults() -> None:
    config = MeshConfig.from_mapping(
        {
            "proxyImage": "registry.local/mesh/proxy",
            "proxyVersion": "9.9.9",
            "initImage": "registry.local/mesh/init@sha256:" + "a" * 64,
            "imagePullPolicy": "Always",
            "proxyResources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "logLevel": "debug",
            "logFormat": "json",
            "skipOutboundPorts": "25,443",
            "skipSubnets": "10.96.0.0/12",
            "opaquePorts": "9042",
        }
    )
    mutated = inject_pod({"metadata": {"name": "p"}, "spec": {"containers": [APP]}}, NS, None, config).pod
    validate_pod(mutated)
    init, proxy = mutated["spec"]["initContainers"][:2]
    assert proxy["image"] == "registry.local/mesh/proxy:9.9.9" and proxy["imagePullPolicy"] == "Always"
    assert init["image"] == "registry.local/mesh/init@sha256:" + "a" * 64
    assert proxy["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert _env(proxy)[c.ENV_LOG_LEVEL] == "debug" and _env(proxy)[c.ENV_OPAQUE_PORTS] == "9042"
    assert _env(proxy)[c.ENV_LOG_FORMAT] == "json"  # the chart's one logFormat reaches the proxy
    assert init["command"][-4:] == [
        "--outbound-ports-to-ignore",
        "25,443",
        "--subnets-to-ignore",
        "10.96.0.0/12",
    ]
    assert mutated["metadata"]["annotations"][c.PROXY_VERSION_ANNOTATION] == "9.9.9"


def test_legacy_mode_puts_the_proxy_first_among_containers() -> None:
    config = MeshConfig(native_sidecar=False)
    pod = SHAPES["existing init containers"][0]
    mutated = inject_pod(pod, NS, None, config).pod
    validate_pod(mutated)
    assert [x["name"] for x in mutated["spec"]["initContainers"]] == ["mesh-init", "migrate", "warm"]
    proxy = mutated["spec"]["containers"][0]
    assert (
        proxy["name"] == c.PROXY_CONTAINER_NAME
        and "restartPolicy" not in proxy
        and "startupProbe" not in proxy
    )
    assert mutated["spec"]["containers"][1:] == pod["spec"]["containers"]
    assert inject_pod(mutated, NS, None, config).reason == SKIP_ALREADY_INJECTED
    assert uninject_pod(mutated)[0] == pod


def test_cronjob_template_gets_the_cronjob_as_workload() -> None:
    template = {
        "metadata": {"labels": {"app": "nightly"}},
        "spec": {"restartPolicy": "OnFailure", "containers": [APP]},
    }
    mutated = inject_pod(template, None, None, CONFIG, workload=Workload("cronjob", "nightly")).pod
    labels = mutated["metadata"]["labels"]
    assert labels[f"{c.PROXY_WORKLOAD_LABEL_PREFIX}cronjob"] == "nightly"
    assert c.WORKLOAD_NS_LABEL not in labels  # namespace unknown in a manifest without one
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": mutated}}},
    }
    kubernetes_validate.validate(cronjob, webhook_testlib.schema_version(), strict=True)


def test_long_workload_names_make_valid_label_values() -> None:
    name = "a" * 60 + "-b" * 20  # a valid Deployment name, too long for a label value
    pod = {
        "metadata": {
            "name": "x",
            "labels": {"pod-template-hash": "h1"},
            "ownerReferences": [rs_owner(f"{name}-h1")],
        },
        "spec": {"containers": [APP]},
    }
    mutated = inject_pod(pod, NS, None, CONFIG).pod
    validate_pod(mutated)
    value = mutated["metadata"]["labels"][f"{c.PROXY_WORKLOAD_LABEL_PREFIX}deployment"]
    assert len(value) <= 63 and value[-1].isalnum()
    assert _env(mutated["spec"]["initContainers"][1])[c.ENV_WORKLOAD_NAME] == name  # env keeps the full name


def app_pod(name: str = "p", labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    if "annotations" in extra:
        meta["annotations"] = extra.pop("annotations")
    containers = extra.pop("containers", [APP])
    return {"metadata": meta, "spec": {"containers": containers, **extra}}


ENABLED = {c.INJECT_LABEL: "enabled"}
SKIPS: dict[str, tuple[dict[str, Any], str | None, dict[str, str] | None, str]] = {
    "hostNetwork": (app_pod(hostNetwork=True), NS, None, SKIP_HOST_NETWORK),
    "opted out": (app_pod(labels={c.INJECT_LABEL: "disabled"}), NS, ENABLED, SKIP_OPTED_OUT),
    "invalid pod label": (app_pod(labels={c.INJECT_LABEL: "yes"}), NS, None, SKIP_INVALID_LABEL),
    "invalid namespace label": (app_pod(), NS, {c.INJECT_LABEL: "on"}, SKIP_INVALID_LABEL),
    "unlabelled namespace, unlabelled pod": (app_pod(), NS, {}, SKIP_NOT_OPTED_IN),
    "namespace disabled, pod enabled": (
        app_pod(labels=ENABLED),
        NS,
        {c.INJECT_LABEL: "disabled"},
        SKIP_NOT_OPTED_IN,
    ),
    "kube-system": (app_pod(), "kube-system", None, SKIP_SYSTEM_NAMESPACE),
    "mesh-system": (app_pod(), "mesh-system", ENABLED, SKIP_SYSTEM_NAMESPACE),
    "kube-node-lease": (app_pod(), "kube-node-lease", None, SKIP_SYSTEM_NAMESPACE),
    "istio sidecar present": (
        app_pod(containers=[APP, {"name": "istio-proxy", "image": "istio/proxyv2"}]),
        NS,
        None,
        SKIP_OTHER_MESH,
    ),
    "bad skip-inbound-ports annotation": (
        app_pod(annotations={c.SKIP_INBOUND_PORTS_ANNOTATION: "http"}),
        NS,
        None,
        SKIP_INVALID_ANNOTATION,
    ),
    "port out of range in opaque-ports": (
        app_pod(annotations={c.OPAQUE_PORTS_ANNOTATION: "70000"}),
        NS,
        None,
        SKIP_INVALID_ANNOTATION,
    ),
}


@pytest.mark.parametrize("case", list(SKIPS), ids=list(SKIPS))
def test_skips_with_a_reason(case: str) -> None:
    pod, namespace, ns_labels, reason = SKIPS[case]
    decision = inject_pod(pod, namespace, ns_labels, CONFIG)
    assert not decision.injected
    assert decision.reason == reason
    assert decision.pod is pod
    assert decision.message and "\n" not in decision.message


@pytest.mark.parametrize(
    ("ns_labels", "pod_labels", "injected"),
    [
        ({c.INJECT_LABEL: "enabled"}, {}, True),
        ({c.INJECT_LABEL: "enabled"}, {c.INJECT_LABEL: "enabled"}, True),
        ({c.INJECT_LABEL: "enabled"}, {c.INJECT_LABEL: "disabled"}, False),
        ({}, {c.INJECT_LABEL: "enabled"}, True),
        ({}, {}, False),
        (None, {}, True),  # the webhook configuration's selectors vouched for the opt-in
        (None, {c.INJECT_LABEL: "disabled"}, False),
    ],
)
def test_opt_in_rules(ns_labels: dict[str, str] | None, pod_labels: dict[str, str], injected: bool) -> None:
    pod = {"metadata": {"name": "p", "labels": pod_labels}, "spec": {"containers": [APP]}}
    assert inject_pod(pod, NS, ns_labels, CONFIG).injected is injected


def test_workload_of_prefers_the_controller_owner() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "1"},
                owner("StatefulSet", "cache"),
            ],
        }
    }
    assert workload_of(pod) == Workload("statefulset", "cache")


@pytest.mark.parametrize(
    ("job", "workload"),
    [
        ("nightly-backup-29402460", Workload("cronjob", "nightly-backup")),  # CronJob controller's name
        ("a-b-25000000", Workload("cronjob", "a-b")),  # the first minute the rule accepts
        ("migrate-db", Workload("job", "migrate-db")),  # a Job made by hand
        ("db-backup-20250101", Workload("job", "db-backup-20250101")),  # a date, not a minute
        ("build-1234567", Workload("job", "build-1234567")),  # 7 digits: not a scheduled time
        ("report-2940246012", Workload("job", "report-2940246012")),  # 10 digits: year 7560
        ("backup-12345678901", Workload("job", "backup-12345678901")),  # 11 digits: neither
    ],
)
def test_a_job_made_by_a_cronjob_reports_the_cronjob(job: str, workload: Workload) -> None:
    pod = {"metadata": {"generateName": f"{job}-", "ownerReferences": [owner("Job", job)]}}
    assert workload_of(pod) == workload


def test_schema_validation_catches_a_broken_pod() -> None:
    """The schema check used above is able to fail (otherwise it proves nothing)."""
    broken = {
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "ports": [{"containerPort": "http"}]}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod(broken)


# --- make_patch: the reduced diff is still exactly the diff ---------------------------------------------


_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
_json = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from("ab/~c"), kids, max_size=4),
    max_leaves=15,
)


@st.composite
def _derived(draw: st.DrawFn, value: Any) -> Any:
    """A variant of `value` that shares untouched sub-objects with it, like the injector's output."""
    choice = draw(st.sampled_from(["same", "same", "recurse", "new"]))
    if choice == "same":
        return value
    if choice == "new":
        return draw(_json)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if draw(st.integers(0, 4)) == 0:
                continue  # removed
            out[key] = draw(_derived(item))
        for key in draw(st.lists(st.sampled_from("xyz~/"), max_size=2)):
            out[key] = draw(_json)
        return out
    if isinstance(value, list):
        items = [draw(_derived(item)) for item in value if draw(st.integers(0, 4)) != 0]
        for _ in range(draw(st.integers(0, 2))):
            items.insert(draw(st.integers(0, len(items))), draw(_json))
        return items
    return draw(_json)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(), original=st.dictionaries(st.sampled_from(["metadata", "spec", "x/y"]), _json, max_size=3)
)
def test_make_patch_equals_a_full_diff(data: st.DataObject, original: dict[str, Any]) -> None:
    mutated = data.draw(_derived(original))
    if not isinstance(mutated, dict):
        mutated = {"replaced": mutated}
    before = copy.deepcopy(original)
    patch = make_patch(original, mutated)
    assert original == before
    assert jsonpatch.apply_patch(copy.deepcopy(original), patch) == mutated
