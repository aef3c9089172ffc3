"""The chart in the lab: real `helm install` into the lab's API server, the webhook running as lab
pods behind its Service ClusterIP (the API server calls it exactly as in a cluster), the chart's
Prometheus running as a lab pod with in-cluster pod discovery.

Grafana is left out (lab/chart-values.yaml): the lab runs commands, and Grafana's image has
none the lab node can run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from lab.config import CHART, RELEASE
from lab.kube import data

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_VALUES = CHART.parent.parent / "lab" / "chart-values.yaml"
NS = c.CONTROL_PLANE_NAMESPACE
MWC = "kubectl-mesh-injector"
WEBHOOK_PODS = "app.kubernetes.io/name=kubectl-mesh,app.kubernetes.io/component=webhook"
PROMETHEUS_PODS = "app.kubernetes.io/name=kubectl-mesh,app.kubernetes.io/component=prometheus"


def helm(lab: Any, *args: str, timeout: float = 300) -> str:
    proc = lab.run_helm(*args, timeout=timeout)
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr.strip()}"
    return str(proc.stdout)


@pytest.fixture(scope="module")
def control_plane(lab: Any) -> Iterator[str]:
    """The chart installed (or upgraded) with real helm; uninstalled after if this module made it.

    Yields helm's output (NOTES included)."""
    existed = RELEASE in helm(lab, "list", "-q", "-n", "default")
    output = helm(
        lab, "upgrade", "--install", RELEASE, str(CHART), "-f", str(LAB_VALUES), "--wait", "--timeout", "240s"
    )
    lab.wait_pods_ready(NS, WEBHOOK_PODS, count=2, timeout=120)
    yield output
    if not existed:
        lab.run_helm("uninstall", RELEASE, "--wait", "--timeout", "120s")


def pod_manifest(name: str, namespace: str, labels: dict[str, str] | None = None, **spec: Any) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "600"]}],
            **spec,
        },
    }
    return json.dumps(pod)


def create_pod(lab: Any, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`kubectl create -f - -o json` of a pod: the pod as the API server stored it, and kubectl's stderr."""
    return subprocess.run(
        ["kubectl", "create", "-f", "-", "-o", "json", *args],
        input=pod_manifest(**kwargs),
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=60,
        check=False,
    )


def injected(pod: dict[str, Any]) -> bool:
    spec = pod["spec"]
    names = {x["name"] for x in [*spec.get("initContainers", []), *spec["containers"]]}
    return c.PROXY_CONTAINER_NAME in names


@pytest.fixture
def meshed_namespace(lab: Any, control_plane: str) -> Iterator[str]:
    name = lab.create_namespace("chart-meshed", labels={c.INJECT_LABEL: c.INJECT_ENABLED})
    yield name
    lab.delete_namespace(name)


def test_helm_install_prints_the_next_commands(control_plane: str) -> None:
    assert f"kubectl label namespace <namespace> {c.INJECT_LABEL}={c.INJECT_ENABLED}" in control_plane
    assert "kubectl mesh check" in control_plane


def test_kubectl_mesh_check_passes_on_the_charts_control_plane(lab: Any, control_plane: str) -> None:
    """The NOTES' next command: the CLI's checks of the webhook, its certificate and Prometheus."""
    proc = kubectl_mesh(lab, "check")
    for check in (
        "webhook configured",
        "webhook certificate valid",
        "webhook answering",
        "Prometheus answering",
    ):
        (line,) = [x for x in proc.stdout.splitlines() if check in x]
        assert line.startswith("✔"), proc.stdout


def test_pod_in_labelled_namespace_comes_back_injected(lab: Any, meshed_namespace: str) -> None:
    proc = create_pod(lab, name="web", namespace=meshed_namespace)
    assert proc.returncode == 0, proc.stderr
    pod = json.loads(proc.stdout)
    assert injected(pod)
    assert pod["metadata"]["labels"][c.CONTROL_PLANE_NS_LABEL] == NS


def test_pod_in_unlabelled_namespace_is_left_alone(lab: Any, control_plane: str, lab_namespace: str) -> None:
    proc = create_pod(lab, name="web", namespace=lab_namespace)
    assert proc.returncode == 0, proc.stderr
    assert not injected(json.loads(proc.stdout))


def test_opted_in_pod_in_unlabelled_namespace_is_injected(
    lab: Any, control_plane: str, lab_namespace: str
) -> None:
    proc = create_pod(lab, name="web", namespace=lab_namespace, labels={c.INJECT_LABEL: c.INJECT_ENABLED})
    assert proc.returncode == 0, proc.stderr
    assert injected(json.loads(proc.stdout))


def test_opted_out_pod_is_left_alone(lab: Any, meshed_namespace: str) -> None:
    proc = create_pod(lab, name="web", namespace=meshed_namespace, labels={c.INJECT_LABEL: c.INJECT_DISABLED})
    assert proc.returncode == 0, proc.stderr
    assert not injected(json.loads(proc.stdout))


def test_host_network_pod_is_admitted_with_a_warning_kubectl_prints(lab: Any, meshed_namespace: str) -> None:
    # Server-side dry run: admitted through the real webhook, but no process on the host's network.
    proc = create_pod(lab, "--dry-run=server", name="host", namespace=meshed_namespace, hostNetwork=True)
    assert proc.returncode == 0, proc.stderr
    assert not injected(json.loads(proc.stdout))
    assert "Warning:" in proc.stderr and "hostNetwork" in proc.stderr, proc.stderr


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def test_deployment_runs_with_its_proxy_and_the_charts_prometheus_labels_its_metrics(
    lab: Any, meshed_namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": meshed_namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": "python:3.11-slim",
                            "command": ["python3", "-m", "http.server", "8080"],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }
    lab.apply(json.dumps(deployment))
    (pod,) = lab.wait_pods_ready(meshed_namespace, "app=web", count=1, timeout=120)
    statuses = {
        s["name"]: s
        for s in pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    }
    assert statuses[c.PROXY_CONTAINER_NAME]["ready"] and statuses["app"]["ready"]
    assert pod["metadata"]["labels"][f"{c.PROXY_WORKLOAD_LABEL_PREFIX}deployment"] == "web"

    # Requests from the host to the pod go through the proxy's inbound side (iptables redirect).
    pod_ip, pod_name = pod["status"]["podIP"], pod["metadata"]["name"]
    for _ in range(5):
        assert b"Directory listing" in _get(f"http://{pod_ip}:8080/"), lab.container_log(
            meshed_namespace, pod_name, c.PROXY_CONTAINER_NAME
        )

    (prometheus,) = lab.wait_pods_ready(NS, PROMETHEUS_PODS, count=1, timeout=120)
    base = f"http://{prometheus['status']['podIP']}:{c.PROMETHEUS_PORT}"
    query = f'{c.METRIC_REQUESTS}{{namespace="{meshed_namespace}", direction="inbound"}}'

    def series() -> list[dict[str, Any]]:
        body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
        return list(body["data"]["result"])

    (found,) = lab.wait(series, 60, f"Prometheus to scrape {query}", interval=2)
    labels = found["metric"]
    assert labels["job"] == c.SCRAPE_JOB
    assert (labels["namespace"], labels["deployment"], labels["pod"]) == (meshed_namespace, "web", pod_name)
    assert float(found["value"][1]) >= 5


def test_the_charts_prometheus_scrapes_the_webhook_and_check_reads_it(lab: Any, control_plane: str) -> None:
    """Job mesh-webhook: HTTPS to each webhook pod, its certificate checked against the mounted CA
    under the Service's name; `kubectl mesh check` then finds no injector error in the last hour."""
    (prometheus,) = lab.wait_pods_ready(NS, PROMETHEUS_PODS, count=1, timeout=120)
    base = f"http://{prometheus['status']['podIP']}:{c.PROMETHEUS_PORT}"
    query = f'up{{job="{c.WEBHOOK_SCRAPE_JOB}"}} == 1'

    def up() -> list[dict[str, Any]] | None:
        body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
        found = list(body["data"]["result"])
        return found if len(found) == 2 else None

    targets = lab.wait(up, 60, "Prometheus to scrape both webhook pods", interval=2)
    webhook_pods = {p["metadata"]["name"] for p in lab.pods(NS, WEBHOOK_PODS)}
    assert {t["metric"]["pod"] for t in targets} <= webhook_pods
    proc = kubectl_mesh(lab, "check")
    (line,) = [x for x in proc.stdout.splitlines() if "no injector errors" in x]
    assert line.startswith("✔") and "webhook pods scraped" in line, proc.stdout  # a rolled pod may linger


def _set_webhook_replicas(lab: Any, replicas: int) -> None:
    lab.kubectl("-n", NS, "scale", "deployment/mesh-webhook", f"--replicas={replicas}")
    if replicas == 0:
        lab.wait(lambda: not lab.pods(NS, WEBHOOK_PODS), 60, "no webhook pod left")
        lab.wait(lambda: not _endpoints(lab), 30, "no webhook endpoint left")
    else:
        lab.wait_pods_ready(NS, WEBHOOK_PODS, count=replicas, timeout=120)


def _endpoints(lab: Any) -> list[Any]:
    selector = f"kubernetes.io/service-name={c.WEBHOOK_SERVICE}"
    slices = data(lab.kube.discovery.list_namespaced_endpoint_slice, NS, label_selector=selector)["items"]
    return [e for s in slices for e in s.get("endpoints") or []]


def _failure_policies(lab: Any) -> set[str]:
    mwc = data(lab.kube.admission.read_mutating_webhook_configuration, MWC)
    return {h["failurePolicy"] for h in mwc["webhooks"]}


def _tls_secret(lab: Any) -> dict[str, str]:
    return dict(data(lab.kube.core.read_namespaced_secret, "mesh-webhook-tls", NS)["data"])


@contextlib.contextmanager
def webhook_stopped(lab: Any) -> Iterator[None]:
    _set_webhook_replicas(lab, 0)
    try:
        yield
    finally:
        _set_webhook_replicas(lab, 2)


def test_with_the_webhook_stopped_ignore_admits_and_fail_refuses(lab: Any, meshed_namespace: str) -> None:
    assert _failure_policies(lab) == {"Ignore"}
    certificate = _tls_secret(lab)
    try:
        with webhook_stopped(lab):
            started = time.monotonic()
            proc = create_pod(lab, name="while-down", namespace=meshed_namespace)
            assert proc.returncode == 0, proc.stderr
            assert not injected(json.loads(proc.stdout))  # admitted, without a proxy
            assert time.monotonic() - started < 15

            helm(lab, "upgrade", RELEASE, str(CHART), "-f", str(LAB_VALUES), "--reuse-values",
                 "--set", "webhook.failurePolicy=Fail")  # fmt: skip
            assert _failure_policies(lab) == {"Fail"}
            _set_webhook_replicas(lab, 0)  # the upgrade asked for the chart's 2 replicas again
            proc = create_pod(lab, name="refused", namespace=meshed_namespace)
            assert proc.returncode != 0
            assert "failed calling webhook" in proc.stderr, proc.stderr
            assert "proxy-injector.kubectl-mesh.io" in proc.stderr, proc.stderr
            # Namespaces outside the mesh never wait for the webhook, even under Fail.
            outside = lab.create_namespace("chart-outside")
            try:
                assert create_pod(lab, name="elsewhere", namespace=outside).returncode == 0
            finally:
                lab.delete_namespace(outside)
    finally:
        helm(lab, "upgrade", RELEASE, str(CHART), "-f", str(LAB_VALUES), "--wait", "--timeout", "240s")
    assert _failure_policies(lab) == {"Ignore"}
    lab.wait_pods_ready(NS, WEBHOOK_PODS, count=2, timeout=120)
    # `helm upgrade` kept the generated certificate (lookup): the running webhook stays trusted.
    assert _tls_secret(lab) == certificate
    proc = create_pod(lab, name="after", namespace=meshed_namespace)
    assert proc.returncode == 0 and injected(json.loads(proc.stdout)), proc.stderr


def kubectl_mesh(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", *args],
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=60,
        check=False,
    )


def kubectl_piped(lab: Any, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl ARGS` reading manifests from stdin, as `kubectl mesh install | kubectl apply -f -`."""
    return subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=lab.env(),
        timeout=120,
        check=False,
    )


def test_kubectl_mesh_install_output_is_accepted_by_the_api_server(lab: Any, control_plane: str) -> None:
    install = kubectl_mesh(lab, "install")
    assert install.returncode == 0, install.stderr
    # It found the cluster's webhook certificate and keeps it, as the chart's lookup does.
    docs = [d for d in yaml.safe_load_all(install.stdout) if d]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["data"] == _tls_secret(lab)
    bundle = base64.b64decode(secret["data"]["ca.crt"])
    assert all(
        base64.b64decode(h["clientConfig"]["caBundle"]) == bundle for d in docs for h in d.get("webhooks", [])
    )

    applied = kubectl_piped(lab, install.stdout, "apply", "--dry-run=server", "-f", "-")
    assert applied.returncode == 0, applied.stderr
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/kubectl-mesh-injector" in applied.stdout
    assert "(server dry run)" in applied.stdout

    uninstall = kubectl_mesh(lab, "uninstall")
    deleted = kubectl_piped(
        lab, uninstall.stdout, "delete", "--dry-run=server", "--ignore-not-found", "-f", "-"
    )
    assert deleted.returncode == 0, deleted.stderr
    assert 'deployment.apps "mesh-webhook" deleted (server dry run)' in deleted.stdout
