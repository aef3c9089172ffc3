"""What the lab's API server says of the injector's answers in the 'know what not to touch' cases.

Each case has two halves: what the injector would emit without the guard (the API server refuses
it: the guard is needed) and what it emits now (the API server accepts it). Server-side dry runs
(`dryRun=All`): nothing is stored, no pod runs. Pod-level resources need the lab's kube-apiserver
(1.33) to run with the PodLevelResources feature gate (lab/cluster.py `FEATURE_GATES`); a lab
started before that gate drops `spec.resources`, and that test skips, saying so
(tests/webhook/test_injector_guards.py checks the same against the API server's rule, offline).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh.health import CheckFailed, Context, check_meshed_namespaces_pod_security
from kubectl_mesh.inject import MeshConfig, inject_pod
from kubectl_mesh.inject.injector import SKIP_POD_SECURITY, SKIP_WINDOWS, XTABLES_LOCK_VOLUME
from kubectl_mesh.kube import KubeOptions
from lab.kube import ApiException, data, message

pytestmark = [pytest.mark.lab, pytest.mark.root]

CONFIG = MeshConfig()
RESTRICTED_APP = {
    "name": "app",
    "image": "app:1",
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [copy.deepcopy(RESTRICTED_APP)], **spec},
    }


def server_verdict(lab: Any, namespace: str, body: dict[str, Any]) -> str:
    """ "" when the API server would create the pod, else its message."""
    try:
        data(lab.kube.core.create_namespaced_pod, namespace, body, dry_run="All")
    except ApiException as err:
        return message(err)
    return ""


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_enforce_skips_what_the_api_server_would_refuse(lab: Any, level: str) -> None:
    # Not opted in: the lab may have the chart's webhook installed (by other tests), which would
    # inject into an opted-in namespace during the dry runs. `explicit` below, as `kubectl mesh inject`.
    namespace = lab.create_namespace(f"psa-{level}", labels={"pod-security.kubernetes.io/enforce": level})
    try:
        original = pod("web")
        assert server_verdict(lab, namespace, original) == ""
        # Not knowing the namespace (as the webhook did), the injector emits a pod the server refuses.
        blind = inject_pod(original, namespace, None, CONFIG, explicit=True)
        assert blind.injected
        refusal = server_verdict(lab, namespace, blind.pod)
        assert "violates PodSecurity" in refusal and "mesh-init" in refusal
        # Knowing the namespace's labels (as read from the API server), it skips with the reason.
        labels = data(lab.kube.core.read_namespace, namespace)["metadata"]["labels"]
        decision = inject_pod(original, namespace, labels, CONFIG, explicit=True)
        assert (decision.injected, decision.reason) == (False, SKIP_POD_SECURITY)
        assert server_verdict(lab, namespace, decision.pod) == ""
    finally:
        lab.delete_namespace(namespace)


def test_check_reports_meshed_namespaces_that_refuse_mesh_init(lab: Any) -> None:
    strict = lab.create_namespace(
        "psa-check", labels={c.INJECT_LABEL: "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
    )
    fine = lab.create_namespace(
        "psa-fine", labels={c.INJECT_LABEL: "enabled", "pod-security.kubernetes.io/enforce": "privileged"}
    )
    try:
        ctx = Context(kube=KubeOptions(kubeconfig=str(lab.kubeconfig)))
        with pytest.raises(CheckFailed) as failed:
            check_meshed_namespaces_pod_security(ctx)
        assert f"{strict} (enforce=restricted)" in failed.value.message
        assert fine not in failed.value.message
        assert "pod-security.kubernetes.io/enforce=privileged" in (failed.value.hint or "")
    finally:
        lab.delete_namespace(strict)
        lab.delete_namespace(fine)


def test_a_pod_with_the_lock_volume_name_is_admitted(lab: Any, lab_namespace: str) -> None:
    original = pod("locky", volumes=[{"name": XTABLES_LOCK_VOLUME, "configMap": {"name": "mine"}}])
    decision = inject_pod(original, lab_namespace, None, CONFIG)
    assert decision.injected
    assert server_verdict(lab, lab_namespace, decision.pod) == ""
    # What the injector used to emit: a second volume of that name, which the server refuses.
    duplicate = copy.deepcopy(decision.pod)
    duplicate["spec"]["volumes"][-1]["name"] = XTABLES_LOCK_VOLUME
    duplicate["spec"]["initContainers"][0]["volumeMounts"][0]["name"] = XTABLES_LOCK_VOLUME
    assert "Duplicate value" in server_verdict(lab, lab_namespace, duplicate)


def test_windows_pods_are_left_as_the_api_server_accepts_them(lab: Any, lab_namespace: str) -> None:
    original = pod("win", os={"name": "windows"})
    original["spec"]["containers"] = [{"name": "app", "image": "app:1"}]
    decision = inject_pod(original, lab_namespace, None, CONFIG)
    assert (decision.injected, decision.reason) == (False, SKIP_WINDOWS)
    assert server_verdict(lab, lab_namespace, decision.pod) == ""
    # The Linux proxy on a Windows pod, as it came out before: refused (Linux-only fields).
    linux = inject_pod(
        {**original, "spec": {**original["spec"], "os": {"name": "linux"}}}, lab_namespace, None, CONFIG
    )
    forced = copy.deepcopy(linux.pod)
    forced["spec"]["os"] = {"name": "windows"}
    assert "windows" in server_verdict(lab, lab_namespace, forced).lower()


@pytest.mark.parametrize("owner", ["Café_Rs", "-" + "x" * 80 + "-", "日本-web"])
def test_label_values_from_odd_owner_names_are_accepted(lab: Any, lab_namespace: str, owner: str) -> None:
    ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "u-1", "controller": True}
    original = pod("odd")
    original["metadata"]["ownerReferences"] = [ref]
    decision = inject_pod(original, lab_namespace, None, CONFIG)
    assert decision.injected
    assert server_verdict(lab, lab_namespace, decision.pod) == ""
    env = {e["name"]: e.get("value") for e in decision.pod["spec"]["initContainers"][1]["env"]}
    assert env[c.ENV_WORKLOAD_NAME] == owner  # the proxy still reports the full name


def _kubectl_dry_run(lab: Any, namespace: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server -o json` of one object, as a user checks a manifest."""
    return subprocess.run(
        ["kubectl", "create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=60,
        check=False,
    )


def test_pod_level_resources_that_just_cover_the_app_are_accepted_once_injected(
    lab: Any, lab_namespace: str
) -> None:
    budget = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}}
    original = pod("tight", resources=budget)
    original["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    plain = _kubectl_dry_run(lab, lab_namespace, original)
    assert plain.returncode == 0, plain.stderr
    if "resources" not in json.loads(plain.stdout)["spec"]:
        pytest.skip(
            "the lab's kube-apiserver drops spec.resources (feature gate PodLevelResources off): "
            "a lab started before lab/cluster.py set FEATURE_GATES; restart the lab to run this test"
        )
    # `kubectl mesh inject` as a user runs it: kubectl finds the plugin on PATH.
    venv_bin = str(Path(sys.executable).parent)
    env = lab.env(PATH=f"{venv_bin}:{lab.env()['PATH']}")
    run = subprocess.run(
        ["kubectl", "mesh", "inject", "-"],
        input=json.dumps(original),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    injected = yaml.safe_load(run.stdout)
    assert injected["spec"]["resources"] == {
        "requests": {"cpu": "110m", "memory": "96Mi"},  # + the proxy's requests (10m, 32Mi)
        "limits": {"cpu": "110m", "memory": "384Mi"},  # + its limit (256Mi), its cpu request (none)
    }
    accepted = _kubectl_dry_run(lab, lab_namespace, injected)
    assert accepted.returncode == 0, accepted.stderr
    answered = json.loads(accepted.stdout)["spec"]
    assert answered["resources"] == injected["spec"]["resources"]  # kept, not dropped
    assert [c["name"] for c in answered["initContainers"]] == ["mesh-init", "mesh-proxy"]
    # Without the proxy's share (what the injector emitted before): the server refuses the pod.
    unfixed = copy.deepcopy(injected)
    unfixed["spec"]["resources"] = budget
    refused = _kubectl_dry_run(lab, lab_namespace, unfixed)
    assert refused.returncode != 0
    assert "spec.resources.requests[cpu]" in refused.stderr
    assert "must be greater than or equal to aggregate container requests" in refused.stderr
