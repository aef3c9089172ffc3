"""Fail-open that people can see (issue #12), against the lab's real API server.

The real webhook (gunicorn, TLS) runs on the host with the credentials of a ServiceAccount bound
to nothing but the chart's own ClusterRole `kubectl-mesh-webhook`; a MutatingWebhookConfiguration
sends it the pods of one test namespace. A Deployment whose pods make the injector fail
(`faulty_wsgi`) is admitted without the proxy, and the oracle is the API server: the Warning
Event `InjectionSkipped` on the Deployment (not the ReplicaSet), one Event whose count grows
as more pods fail, and what the ServiceAccount may and may not do.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh.log import Logger
from lab import cluster
from tests.chart.helpers import chart_objects
from tests.support.webhook_server import WebhookServer
from tests.webhook.faulty_wsgi import FAULT_LABEL
from webhook import kube as webhook_kube

pytestmark = [pytest.mark.lab, pytest.mark.slow]

WEBHOOK_ROLE = "kubectl-mesh-webhook"


def chart_webhook_rules() -> list[dict[str, Any]]:
    """The rules of the chart's webhook ClusterRole, as real helm renders them."""
    (role,) = [
        d for d in chart_objects() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == WEBHOOK_ROLE
    ]
    return list(role["rules"])


def sa_kubeconfig(lab: Any, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as `account` with a fresh token (TokenRequest)."""
    token = lab.kubectl("-n", namespace, "create", "token", account, "--duration=1h").strip()
    ca = base64.b64encode((cluster.PKI_DIR / "ca.crt").read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": lab.api_url, "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "lab", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def webhook_account(lab: Any, lab_namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A ServiceAccount with exactly the chart's webhook ClusterRole; its kubeconfig."""
    name = f"test-{lab_namespace}"[:63]
    lab.kubectl("-n", lab_namespace, "create", "serviceaccount", "webhook")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}}
    role["rules"] = chart_webhook_rules()
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "webhook", "namespace": lab_namespace}],
    }
    lab.apply(json.dumps(role))
    lab.apply(json.dumps(binding))
    try:
        yield sa_kubeconfig(lab, lab_namespace, "webhook", tmp_path / "webhook.kubeconfig")
    finally:
        lab.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False)


@contextlib.contextmanager
def webhook_for(lab: Any, namespace: str, account: Path, tmp_path: Path, app: str) -> Iterator[WebhookServer]:
    """The webhook (`app`) as `account`, called by the API server for `namespace`'s pods."""
    server = WebhookServer(tmp_path / "webhook", workers=2, app=app)
    server.env["KUBECONFIG"] = str(account)
    server.env["HOSTNAME"] = "mesh-webhook-test"
    name = f"test-events-{namespace}"[:63]
    hook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "events.test.kubectl-mesh.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 10,
                "clientConfig": {
                    "url": f"https://127.0.0.1:{server.port}{c.WEBHOOK_PATH}",
                    "caBundle": base64.b64encode(server.ca_file.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            }
        ],
    }
    with server:
        lab.apply(json.dumps(hook))
        try:
            yield server
        finally:
            lab.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False)


@pytest.fixture
def faulty_webhook(
    lab: Any, lab_namespace: str, webhook_account: Path, tmp_path: Path
) -> Iterator[WebhookServer]:
    """The webhook (with the injected fault) called by the API server for `lab_namespace`'s pods."""
    with webhook_for(
        lab, lab_namespace, webhook_account, tmp_path, "tests.webhook.faulty_wsgi:app"
    ) as server:
        yield server


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name, FAULT_LABEL: "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "600"]}],
                },
            },
        },
    }


def skipped_events(lab: Any, namespace: str) -> list[dict[str, Any]]:
    out = lab.kubectl(
        "-n", namespace, "get", "events", "-o", "json", f"--field-selector=reason={c.EVENT_INJECTION_SKIPPED}"
    )
    return list(json.loads(out)["items"])


def test_an_injector_error_is_an_event_on_the_deployment_counted_not_repeated(
    lab: Any, lab_namespace: str, faulty_webhook: WebhookServer
) -> None:
    lab.apply(json.dumps(deployment("web", 1)), namespace=lab_namespace)
    uid = json.loads(lab.kubectl("-n", lab_namespace, "get", "deployment", "web", "-o", "json"))["metadata"][
        "uid"
    ]

    (event,) = lab.wait(lambda: skipped_events(lab, lab_namespace) or None, 60, "an InjectionSkipped event")
    involved = event["involvedObject"]
    assert (involved["kind"], involved["name"], involved["uid"]) == ("Deployment", "web", uid)
    assert involved["apiVersion"] == "apps/v1" and involved["namespace"] == lab_namespace
    assert event["type"] == "Warning" and event["count"] == 1
    assert "admitted without the mesh proxy: injector error (RuntimeError)" in event["message"]
    assert event["source"]["component"] == webhook_kube.COMPONENT
    # Admitted (fail-open), without the proxy.
    (pod,) = lab.wait(lambda: lab.pods(lab_namespace, "app=web") or None, 30, "the pod of web")
    names = {x["name"] for x in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]}
    assert c.PROXY_CONTAINER_NAME not in names

    # Three more pods fail the same way: the same Event counts them, no new Event appears.
    lab.kubectl("-n", lab_namespace, "scale", "deployment/web", "--replicas=4")

    def counted() -> list[dict[str, Any]] | None:
        events = skipped_events(lab, lab_namespace)
        return events if sum(e.get("count", 1) for e in events) >= 4 else None

    events = lab.wait(counted, 60, "the Event's count to reach 4", interval=1)
    assert len(events) == 1 and events[0]["count"] == 4, events
    assert events[0]["involvedObject"]["uid"] == uid

    # `kubectl describe deployment` shows it: the user sees the warning where they look.
    described = lab.kubectl("-n", lab_namespace, "describe", "deployment", "web")
    assert c.EVENT_INJECTION_SKIPPED in described and "admitted without the mesh proxy" in described

    status, _, body = faulty_webhook.metrics_request()
    assert status == 200
    text = body.decode()
    assert 'mesh_webhook_admissions_total{reason="",result="error"} 4.0' in text
    recorded = [
        line
        for line in text.splitlines()
        if line.startswith("mesh_webhook_events_total{") and 'result="recorded"' in line
    ]
    assert recorded and all(c.EVENT_INJECTION_SKIPPED in line for line in recorded)


def test_the_charts_webhook_role_allows_what_it_needs_and_nothing_more(
    lab: Any, lab_namespace: str, webhook_account: Path
) -> None:
    who = f"--as=system:serviceaccount:{lab_namespace}:webhook"

    def can(*args: str) -> bool:
        out = lab.kubectl("auth", "can-i", *args, who, check=False)
        return out.strip() == "yes"

    other = "default"
    for allowed in (
        ("watch", "namespaces"),
        ("list", "namespaces"),
        ("get", "replicasets.apps", "-n", other),
        ("create", "events", "-n", other),
        ("patch", "events", "-n", other),
    ):
        assert can(*allowed), allowed
    for denied in (
        ("patch", "namespaces"),
        ("list", "replicasets.apps", "-n", other),
        ("get", "secrets", "-n", other),
        ("create", "pods", "-n", other),
        ("delete", "events", "-n", other),
        ("get", "deployments.apps", "-n", other),
    ):
        assert not can(*denied), denied


def test_the_namespace_cache_follows_labels_with_the_charts_role(
    lab: Any, lab_namespace: str, webhook_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(webhook_account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = webhook_kube.api_client()
    assert api is not None
    cache = webhook_kube.NamespaceCache(api, Logger("error")).start()
    try:
        assert cache.wait_synced(30)
        assert cache.labels(lab_namespace) == {"kubernetes.io/metadata.name": lab_namespace}
        lab.kubectl("label", "namespace", lab_namespace, "pod-security.kubernetes.io/enforce=baseline")
        labels = lab.wait(
            lambda: (
                cache.labels(lab_namespace)
                if "pod-security.kubernetes.io/enforce" in (cache.labels(lab_namespace) or {})
                else None
            ),
            30,
            "the watch to bring the new label",
        )
        assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
        assert cache.labels("no-such-namespace") is None  # unknown: admit with what is known
    finally:
        cache.stop()


def test_a_cache_that_has_not_synced_yet_reads_the_namespace_it_is_asked_about(
    lab: Any, lab_namespace: str, webhook_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's first admissions come before its list returns (CI saw a pod refused that way):
    the cache asks the API server for that namespace rather than inject mesh-init blind."""
    monkeypatch.setenv("KUBECONFIG", str(webhook_account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    lab.kubectl("label", "namespace", lab_namespace, "pod-security.kubernetes.io/enforce=restricted")
    cache = webhook_kube.NamespaceCache(webhook_kube.api_client(), Logger("error"))  # never started
    assert not cache.synced
    assert (cache.labels(lab_namespace) or {}).get("pod-security.kubernetes.io/enforce") == "restricted"
    assert cache.labels("no-such-namespace") is None


def test_a_namespace_whose_pod_security_refuses_mesh_init_gets_its_pods_unmeshed_not_refused(
    lab: Any, lab_namespace: str, webhook_account: Path, tmp_path: Path
) -> None:
    """The webhook reads the namespace's labels (its cache, with the chart's role): in a namespace
    that enforces `baseline`, injecting mesh-init would make the API server refuse every pod. The
    pods are created (unmeshed) and the Deployment gets the Pod Security Event instead."""
    lab.kubectl(
        "label", "namespace", lab_namespace, f"{c.INJECT_LABEL}={c.INJECT_ENABLED}",
        "pod-security.kubernetes.io/enforce=baseline",
    )  # fmt: skip
    with webhook_for(lab, lab_namespace, webhook_account, tmp_path, "webhook.wsgi:app") as server:
        app = deployment("web", 1)
        del app["spec"]["template"]["metadata"]["labels"][FAULT_LABEL]
        lab.apply(json.dumps(app), namespace=lab_namespace)
        try:
            (pod,) = lab.wait(lambda: lab.pods(lab_namespace, "app=web") or None, 60, "the pod of web")
        except AssertionError as exc:
            columns = "-o=custom-columns=R:.reason,M:.message"
            events = lab.kubectl("-n", lab_namespace, "get", "events", columns)
            logs = server.log_path.read_text()[-3000:]
            raise AssertionError(f"{exc}; events: {events}; webhook log: {logs}") from None
        names = {x["name"] for x in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]}
        assert c.PROXY_CONTAINER_NAME not in names and c.INIT_CONTAINER_NAME not in names

        def warned() -> list[dict[str, Any]] | None:
            out = lab.kubectl(
                "-n", lab_namespace, "get", "events", "-o", "json",
                f"--field-selector=reason={c.EVENT_POD_SECURITY}",
            )  # fmt: skip
            return list(json.loads(out)["items"]) or None

        (event,) = lab.wait(warned, 60, "the Pod Security Event")
        assert event["involvedObject"]["kind"] == "Deployment" and event["type"] == "Warning"
        failed = lab.kubectl(
            "-n", lab_namespace, "get", "events", "--field-selector=reason=FailedCreate", "-o", "name"
        )
        assert failed.strip() == ""  # the API server refused no pod


def test_a_namespace_no_pod_can_be_in_never_pauses_nor_fills_the_cache(
    lab: Any, lab_namespace: str, webhook_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/mutate is open to the cluster by default (no `apiServerCIDRs`), so `request.namespace` is
    the caller's word. A name the API server refuses (`%`: 400; `kube-system/secrets`: 403 with
    the chart's role) once paused every GET for 30 s, so a real namespace the cache did not know
    yet got mesh-init blind; a path (`..`, `default/pods`) read another object and was cached
    under that name forever. Names that cannot be a namespace cost no GET and are not cached."""
    monkeypatch.setenv("KUBECONFIG", str(webhook_account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    lab.kubectl("label", "namespace", lab_namespace, "pod-security.kubernetes.io/enforce=restricted")
    cache = webhook_kube.NamespaceCache(webhook_kube.api_client(), Logger("error"))  # never started
    for name in ("%", "kube-system/secrets", "..", "default/pods", "UPPER", "a" * 64, "x\ny"):
        assert cache.labels(name) is None, name
    # The API server's own labels of the real namespace: no pause stood in the way.
    assert (cache.labels(lab_namespace) or {}).get("pod-security.kubernetes.io/enforce") == "restricted"
    assert set(cache._labels) == {lab_namespace}


def namespace_gets(lab: Any, code: str) -> float:
    """The API server's own count of GETs of a namespace answered `code` (its /metrics)."""
    for line in lab.kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_request_total{") and all(
            f'{k}="{v}"' in line for k, v in (("code", code), ("resource", "namespaces"), ("verb", "GET"))
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_caller_naming_random_namespaces_gets_few_gets_from_the_webhook(
    lab: Any, lab_namespace: str, webhook_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every AdmissionReview for a namespace the cache does not know cost one GET: 300 random
    names in 1 s were 300 GETs (404) from the webhook's account. Now each worker makes at most
    20 a second (`FETCH_RATE_PER_S`); a real new namespace is still read once the flood has passed."""
    monkeypatch.setenv("KUBECONFIG", str(webhook_account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    lab.kubectl("label", "namespace", lab_namespace, "pod-security.kubernetes.io/enforce=restricted")
    cache = webhook_kube.NamespaceCache(webhook_kube.api_client(), Logger("error"))  # never started
    before = namespace_gets(lab, "404")
    started = time.monotonic()
    for i in range(300):
        assert cache.labels(f"no-such-{i}-{lab_namespace}"[:63]) is None
    elapsed = time.monotonic() - started
    sent = namespace_gets(lab, "404") - before  # other engineers' 404s only add: a bound from above
    assert elapsed < 2.0 and sent <= 50, (sent, elapsed)  # 20 at once, 20/s after: ~20-40
    time.sleep(1.0)  # the bucket refills
    assert (cache.labels(lab_namespace) or {}).get("pod-security.kubernetes.io/enforce") == "restricted"


def test_a_namespace_deleted_and_created_again_has_its_new_labels(
    lab: Any, lab_namespace: str, webhook_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same name, other labels: the cache must not keep the first namespace's Pod Security level."""
    monkeypatch.setenv("KUBECONFIG", str(webhook_account))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    enforce = "pod-security.kubernetes.io/enforce"
    name = f"again-{lab_namespace}"[:63].rstrip("-")
    lab.kubectl("create", "namespace", name)
    lab.kubectl("label", "namespace", name, f"{enforce}=restricted")
    cache = webhook_kube.NamespaceCache(webhook_kube.api_client(), Logger("error")).start()
    try:
        assert cache.wait_synced(30)
        first = lambda: (cache.labels(name) or {}).get(enforce) == "restricted" or None  # noqa: E731
        lab.wait(first, 30, "the first labels")
        lab.delete_namespace(name, wait=True, timeout=90)
        lab.wait(lambda: name not in cache._labels or None, 30, "the watch to drop the namespace")
        lab.kubectl("create", "namespace", name)
        lab.kubectl("label", "namespace", name, f"{enforce}=privileged")
        labels = lab.wait(
            lambda: cache.labels(name) if (cache.labels(name) or {}).get(enforce) == "privileged" else None,
            30,
            "the new namespace's labels",
        )
        assert labels[enforce] == "privileged"  # what the API server holds now
    finally:
        cache.stop()
        lab.delete_namespace(name)


def test_a_webhook_without_get_namespaces_pauses_and_logs_no_secret(
    lab: Any, lab_namespace: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """RBAC without `get namespaces` (a trimmed role): the API server's 403 pauses the GETs (one
    request, then none for 30 s) and the log line names the refusal, never the token."""
    lab.kubectl("-n", lab_namespace, "create", "serviceaccount", "no-rights")
    path = sa_kubeconfig(lab, lab_namespace, "no-rights", tmp_path / "no-rights.kubeconfig")
    token = yaml.safe_load(path.read_text())["users"][0]["user"]["token"]
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cache = webhook_kube.NamespaceCache(webhook_kube.api_client(), Logger("info"))  # never started
    started = time.monotonic()
    for _ in range(50):
        assert cache.labels(lab_namespace) is None
    assert time.monotonic() - started < 1.0
    # Every failed GET logs a line (the API server does not count RBAC refusals in its metrics):
    # one line, one GET.
    err = capfd.readouterr().err
    (line,) = [x for x in err.splitlines() if "namespace_fetch_failed" in x]
    assert "HTTP 403" in line and "forbidden" in line and "pause_s=30.0" in line, line
    assert token not in err and token[:20] not in err
