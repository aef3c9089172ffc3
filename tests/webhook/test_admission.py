"""The AdmissionReview protocol, without HTTP: parsing, answers, fail-open."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest

from kubectl_mesh.inject.config import MeshConfig
from tests.webhook.webhook_testlib import validate_pod
from webhook.admission import (
    RESULT_ERROR,
    RESULT_IGNORED,
    RESULT_INJECTED,
    RESULT_SKIPPED,
    BadRequest,
    check_content_type,
    parse_review,
    review,
)

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "web-7f9-", "namespace": "emojivoto", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "web", "image": "web:1"}]},
}


def admission_review(
    obj: Any = POD, uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002", **over: Any
) -> dict[str, Any]:
    request = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "emojivoto",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
    }
    request.update(over)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def answer(body: dict[str, Any], config: MeshConfig | None = None):  # type: ignore[no-untyped-def]
    req = parse_review(json.dumps(body).encode())
    return review(req, config or MeshConfig(), "test")


def test_injects_with_a_base64_json_patch() -> None:
    outcome = answer(admission_review())
    assert outcome.result == RESULT_INJECTED
    resp = outcome.review["response"]
    assert (
        outcome.review["apiVersion"] == "admission.k8s.io/v1" and outcome.review["kind"] == "AdmissionReview"
    )
    assert resp["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002" and resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch" and "warnings" not in resp
    patch = json.loads(base64.b64decode(resp["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(POD), patch)
    validate_pod(patched)
    assert [x["name"] for x in patched["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]
    assert patched["metadata"]["labels"]["kubectl-mesh.io/workload-ns"] == "emojivoto"


def test_skip_answers_allowed_with_a_warning_and_no_patch() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["hostNetwork"] = True
    outcome = answer(admission_review(pod))
    resp = outcome.review["response"]
    assert outcome.result == RESULT_SKIPPED and outcome.reason == "host-network"
    assert resp["allowed"] is True and "patch" not in resp
    assert resp["warnings"] == ["kubectl-mesh: pod not injected: pod uses hostNetwork"]


@pytest.mark.parametrize(
    "over",
    [
        {"operation": "UPDATE"},
        {
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
        },
        {"subResource": "status"},
    ],
)
def test_other_requests_are_allowed_unchanged(over: dict[str, Any]) -> None:
    outcome = answer(admission_review(**over))
    assert outcome.result == RESULT_IGNORED
    assert outcome.review["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_internal_error_fails_open_with_a_warning() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["initContainers"] = 5  # the API server would never send this; our code chokes on it
    outcome = answer(admission_review(pod))
    resp = outcome.review["response"]
    assert outcome.result == RESULT_ERROR and "Traceback" in outcome.error
    assert resp["allowed"] is True and "patch" not in resp
    assert resp["warnings"][0].startswith("kubectl-mesh: pod admitted without the mesh proxy")
    assert "Traceback" not in json.dumps(outcome.review)  # no internals to the client


def test_missing_object_fails_open() -> None:
    outcome = answer(admission_review(None))
    assert outcome.result == RESULT_ERROR and outcome.review["response"]["allowed"] is True


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "JSON object"),
        (
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"a"}}',
            "apiVersion",
        ),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}', "no request"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":""}}', "uid"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":7}}', "uid"),
        (b"[" * 100_000, "not JSON"),
        (b'{"kind":"AdmissionReview","request":{"uid":"a","x":NaN}}', "not JSON"),  # not JSON (RFC 8259)
        (b'{"kind":"AdmissionReview","request":{"uid":"\xed\xa0\x80"}}', "not JSON"),  # a lone surrogate
    ],
)
def test_bad_bodies_are_400_with_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_review(body)
    assert info.value.status == 400 and reason in info.value.reason and "\n" not in info.value.reason


@pytest.mark.parametrize(
    "ctype", [None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_415(ctype: str | None) -> None:
    with pytest.raises(BadRequest) as info:
        check_content_type(ctype)
    assert info.value.status == 415


def test_json_content_type_with_charset_is_accepted() -> None:
    check_content_type("application/json; charset=utf-8")


def test_pod_security_levels_of_the_namespace_become_warnings() -> None:
    """With the namespace's labels (read by the webhook), `enforce` at restricted skips the pod with
    the reason, and `warn` at baseline injects with a warning; each warning <= 120 ASCII chars."""
    body = json.dumps(admission_review()).encode()
    enforce = {"kubectl-mesh.io/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
    outcome = review(parse_review(body), MeshConfig(), "test", namespace_labels=enforce)
    assert outcome.result == RESULT_SKIPPED and outcome.reason == "pod-security"
    assert "patch" not in outcome.review["response"]
    assert outcome.review["response"]["warnings"] == [
        "kubectl-mesh: pod not injected: "
        "Pod Security enforce=restricted refuses mesh-init (root, NET_ADMIN, NET_RAW)"
    ]
    warn = {"kubectl-mesh.io/inject": "enabled", "pod-security.kubernetes.io/warn": "baseline"}
    outcome = review(parse_review(body), MeshConfig(), "test", namespace_labels=warn)
    resp = outcome.review["response"]
    assert outcome.result == RESULT_INJECTED and resp["patchType"] == "JSONPatch"
    assert resp["warnings"] == [
        "kubectl-mesh: mesh-init (root, NET_ADMIN, NET_RAW) violates Pod Security warn=baseline"
    ]
    for warning in resp["warnings"]:
        assert len(warning) <= 120 and warning.isascii() and warning.isprintable()


def test_warnings_are_at_most_120_printable_ascii_characters() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0] = {
        "name": "wéb-" + "x" * 200,
        "image": "w",
        "ports": [{"containerPort": 4191}],
    }
    outcome = answer(admission_review(pod))
    assert outcome.reason == "port-conflict"
    (warning,) = outcome.review["response"]["warnings"]
    assert len(warning) == 120 and warning.isascii() and warning.isprintable() and warning.endswith("...")
    assert warning.startswith("kubectl-mesh: pod not injected: container w?b-xxx")
