"""AdmissionReview in, AdmissionReview out: the webhook's protocol, free of HTTP and sockets.

`check_content_type` and `parse_review` raise `BadRequest` (the only 4xx answers besides 413,
which the HTTP layer enforces before the body is read). `review` never raises: an error while
building the patch is answered `allowed: true` with a warning (fail-open: the mesh must never
block pod creation because of its own bug) and reported in the `Outcome` for logging/counting.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubectl_mesh.inject import MeshConfig, inject_pod, make_patch

API_VERSION = "admission.k8s.io/v1"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a pod is at most ~1.5 MB in etcd; the review holds one object
WARNING_PREFIX = "kubectl-mesh"
# Kubernetes asks for warnings of at most 120 characters, printable ASCII, no line breaks
# (k8s.io/apiserver/pkg/warning): longer ones are cut by some clients, and kubectl prints them raw.
MAX_WARNING_CHARS = 120

# Outcome.result values (the `result` metric label).
RESULT_INJECTED = "injected"
RESULT_SKIPPED = "skipped"
RESULT_IGNORED = "ignored"  # not a pod CREATE: the configuration should not have sent it
RESULT_ERROR = "error"  # internal error: admitted without the proxy (fail-open)


class BadRequest(Exception):
    """A request the webhook cannot answer with an AdmissionReview: HTTP status + one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class AdmissionRequest:
    uid: str
    request: Mapping[str, Any]  # the whole `request` object

    @property
    def namespace(self) -> str | None:
        ns = self.request.get("namespace")
        if isinstance(ns, str) and ns:
            return ns
        obj = self.request.get("object")
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        ns = meta.get("namespace") if isinstance(meta, Mapping) else None
        return ns if isinstance(ns, str) and ns else None

    @property
    def pod_name(self) -> str:
        """The pod's name (or generateName: the API server names it later), "?" when neither."""
        obj = self.request.get("object")
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        if isinstance(meta, Mapping):
            return str(meta.get("name") or meta.get("generateName") or "?")
        return "?"

    @property
    def is_pod_create(self) -> bool:
        kind = self.request.get("kind")
        resource = self.request.get("resource")
        return (
            isinstance(kind, Mapping)
            and kind.get("kind") == "Pod"
            and kind.get("group", "") == ""
            and isinstance(resource, Mapping)
            and resource.get("resource") == "pods"
            and not self.request.get("subResource")
            and self.request.get("operation") == "CREATE"
        )


@dataclass(frozen=True)
class Outcome:
    review: dict[str, Any]  # the AdmissionReview to send back
    result: str  # RESULT_*
    reason: str = ""  # the skip reason code, when skipped
    error: str = ""  # the traceback, when result is RESULT_ERROR (for the log, never the client)


def check_content_type(content_type: str | None) -> None:
    """The API server sends `application/json`; anything else is 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BadRequest(415, f"content type must be application/json, got {media or 'none'!r}")


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode an admission.k8s.io/v1 AdmissionReview; BadRequest(400) with a reason otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not JSON: {_one_line(str(exc))}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object (an AdmissionReview)")
    if data.get("kind") != "AdmissionReview" or data.get("apiVersion") != API_VERSION:
        raise BadRequest(400, f"body must be an AdmissionReview of apiVersion {API_VERSION}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise BadRequest(400, "AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadRequest(400, "AdmissionReview request.uid is missing")
    return AdmissionRequest(uid, request)


def review(
    req: AdmissionRequest,
    config: MeshConfig,
    injected_by: str,
    namespace_labels: Mapping[str, str] | None = None,
) -> Outcome:
    """Decide and patch one admission request. Never raises (fail-open).

    `namespace_labels` are the labels of the pod's namespace when the caller knows them (None:
    unknown); the injector reads opt-in, Pod Security levels and other meshes' marks from them.
    """
    if not req.is_pod_create:
        return Outcome(_response(req.uid), RESULT_IGNORED)
    try:
        pod = req.request.get("object")
        if not isinstance(pod, dict):
            raise TypeError("request.object is not a pod object")
        decision = inject_pod(pod, req.namespace, namespace_labels, config, injected_by=injected_by)
        if decision.skipped:
            warning = f"{WARNING_PREFIX}: pod not injected: {decision.message}"
            return Outcome(_response(req.uid, warnings=[warning]), RESULT_SKIPPED, decision.reason)
        patch = make_patch(pod, decision.pod)
        warnings = [f"{WARNING_PREFIX}: {w}" for w in decision.warnings]
        return Outcome(_response(req.uid, patch=patch, warnings=warnings), RESULT_INJECTED)
    except Exception as exc:
        warning = (
            f"{WARNING_PREFIX}: pod admitted without the mesh proxy: injector error ({type(exc).__name__})"
        )
        return Outcome(_response(req.uid, warnings=[warning]), RESULT_ERROR, error=traceback.format_exc())


def _response(
    uid: str, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    if warnings:
        response["warnings"] = [warning_text(w) for w in warnings]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def warning_text(text: str) -> str:
    """One warning as Kubernetes wants it: one line of printable ASCII, at most 120 characters."""
    line = "".join(ch if " " <= ch <= "~" else "?" for ch in _one_line(text))
    return line if len(line) <= MAX_WARNING_CHARS else line[: MAX_WARNING_CHARS - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
