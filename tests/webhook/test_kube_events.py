"""The pure parts of webhook/kube.py: which admissions call for an Event, about what, under which
name; and the recorder's bound. The Events themselves are checked against the lab's API server
in test_events_lab.py."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from kubectl_mesh import contract as c
from kubectl_mesh.inject import MeshConfig
from kubectl_mesh.log import Logger
from tests.webhook.test_admission import POD
from webhook import kube
from webhook.admission import Outcome, parse_review, review

RS_OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7f9", "uid": "u1", "controller": True}


def request(pod: dict[str, Any]) -> Any:
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "uid-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "object": pod,
        },
    }
    return parse_review(orjson.dumps(body))


def test_an_injector_error_calls_for_one_event_that_does_not_name_the_admission() -> None:
    pod = copy.deepcopy(POD)
    pod["metadata"]["ownerReferences"] = [RS_OWNER]
    pod["spec"]["initContainers"] = {"not": "a list"}
    req = request(pod)
    outcome = review(req, MeshConfig(), "test")
    (notice,) = kube.notices_for(req, outcome)
    assert notice.reason == c.EVENT_INJECTION_SKIPPED and notice.namespace == "shop"
    assert "admitted without the mesh proxy: injector error (TypeError)" in notice.message
    assert "uid-1" not in notice.message  # the same failure again is the same Event, counted
    assert kube.controller_of(notice.owners) == kube.Target("apps/v1", "ReplicaSet", "web-7f9", "u1")


def test_skips_and_injections_call_for_no_event_but_pod_security_warnings_do() -> None:
    req = request(copy.deepcopy(POD))
    assert kube.notices_for(req, review(req, MeshConfig(), "test")) == []
    warned = Outcome(
        {"response": {"warnings": ['kubectl-mesh: mesh-init violates Pod Security "restricted"', "other"]}},
        "injected",
    )
    (notice,) = kube.notices_for(req, warned)
    assert notice.reason == c.EVENT_POD_SECURITY and "Pod Security" in notice.message


def test_event_names_are_stable_per_owner_reason_and_message_and_valid() -> None:
    target = kube.Target("apps/v1", "Deployment", "w" * 253, "u")
    one = kube.event_name("shop", target, "InjectionSkipped", "m")
    assert one == kube.event_name("shop", target, "InjectionSkipped", "m")
    assert one != kube.event_name("shop", target, "InjectionSkipped", "m2")
    assert len(one) <= 253
    notice = kube.Notice("shop", "web-", (), "InjectionSkipped", "x" * 5000)
    body = kube.event_body("shop", target, notice, 3, 0.0, "pod-a")
    assert body["type"] == "Warning" and body["count"] == 3 and len(body["message"]) == kube.MAX_MESSAGE
    assert body["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "w" * 253,
        "namespace": "shop",
        "uid": "u",
    }


def test_a_pod_without_owner_is_its_own_target_and_the_queue_is_bounded() -> None:
    results: list[tuple[str, str]] = []
    recorder = kube.EventRecorder(
        None, Logger("error"), queue_size=2, on_result=lambda r, s: results.append((r, s))
    )
    notice = kube.Notice("shop", "lonely", (), c.EVENT_INJECTION_SKIPPED, "m")
    assert recorder.record(notice) and recorder.record(notice)
    assert not recorder.record(notice)  # full: dropped, never waited for
    assert results == [(c.EVENT_INJECTION_SKIPPED, "dropped")]
    assert recorder._target(None, notice) == kube.Target("v1", "Pod", "lonely")


def test_without_api_access_the_webhook_still_answers(monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    access = kube.start(Logger("error"))
    assert access.namespaces is None and access.events is None
    assert access.namespace_labels("shop") is None
    req = request(copy.deepcopy(POD))
    access.after_review(req, review(req, MeshConfig(), "test"))  # nothing to do, nothing raised


def test_a_hung_api_server_never_delays_an_admission(tmp_path: Any) -> None:
    """The API server accepts connections and never answers: every admission of a failing pod is
    still answered at once (allowed, with its warning), and the notices beyond the bounded queue
    are dropped and counted, not waited for."""
    import socket
    import time

    import yaml

    from tests.support.webhook_server import WebhookServer
    from tests.webhook.test_admission import admission_review
    from tests.webhook.test_webhook_server import metric_samples

    hung = socket.create_server(("127.0.0.1", 0), backlog=512)
    held: list[socket.socket] = []
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "hung",
                "cluster": {
                    "server": f"https://127.0.0.1:{hung.getsockname()[1]}",
                    "insecure-skip-tls-verify": True,
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "hung", "user": "u"}}],
        "current-context": "c",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    server = WebhookServer(tmp_path / "webhook", workers=1)
    server.env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    pod = copy.deepcopy(POD)
    pod["spec"]["initContainers"] = {"not": "a list"}
    count, slowest = 300, 0.0
    with server:
        conn = server.connect()
        try:
            for i in range(count):  # bounded: 300 requests, each within 1 s or the test fails
                started = time.monotonic()
                status, _, body = server.request(
                    "POST",
                    c.WEBHOOK_PATH,
                    orjson.dumps(admission_review(pod, uid=f"uid-{i}")),
                    {"Content-Type": "application/json"},
                    conn=conn,
                )
                slowest = max(slowest, time.monotonic() - started)
                answer = orjson.loads(body)
                assert status == 200 and answer["response"]["allowed"] is True
                assert "admitted without the mesh proxy" in answer["response"]["warnings"][0]
                hung.setblocking(False)
                try:
                    while True:
                        held.append(hung.accept()[0])
                except BlockingIOError:
                    pass
        finally:
            conn.close()
        samples = metric_samples(server)
    for s in held:
        s.close()
    hung.close()
    print(
        f"hung API server: {count} admissions, slowest {slowest * 1000:.1f} ms, {len(held)} connections tried"
    )
    assert slowest < 1.0, f"an admission waited {slowest:.3f}s on the hung API server"
    assert held, "the webhook never tried the API server: the test proves nothing"
    dropped = samples.get(
        ("mesh_webhook_events_total", (("reason", c.EVENT_INJECTION_SKIPPED), ("result", "dropped"))), 0.0
    )
    assert dropped >= count - 256 - 2, samples  # the queue holds 256; one notice is being written
