"""A Prometheus HTTP API client (instant queries), over one of two transports:

- a URL: `--prometheus-url`, else `$MESH_PROMETHEUS_URL` (e.g. a `kubectl port-forward` or a
  Prometheus of your own), requested with urllib;
- by default, the mesh's Prometheus in `mesh-system` through the Kubernetes API server's service
  proxy: `/api/v1/namespaces/mesh-system/services/prometheus:9090/proxy/api/v1/query`, with the
  user's own credentials (needs `services/proxy` permission; where a cluster forbids it the error
  names the port-forward alternative).

`PrometheusClient.query(promql) -> [(labels, value)]` is what `compute_stat` takes. Errors are
`PrometheusError`, one line with the command that fixes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from kubectl_mesh.contract import (
    CONTROL_PLANE_NAMESPACE,
    ENV_PROMETHEUS_URL,
    PROMETHEUS_PORT,
    PROMETHEUS_SERVICE,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.kube import KubeClient, KubeError

SERVICE_PROXY_PATH = (
    f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/services/{PROMETHEUS_SERVICE}:{PROMETHEUS_PORT}/proxy"
)
PORT_FORWARD_HINT = (
    f"`kubectl -n {CONTROL_PLANE_NAMESPACE} port-forward svc/{PROMETHEUS_SERVICE} {PROMETHEUS_PORT}` "
    f"and pass --prometheus-url http://127.0.0.1:{PROMETHEUS_PORT}"
)
Vector = list[tuple[dict[str, str], float]]


class PrometheusError(MeshError):
    """Prometheus could not answer; the message is one line with a fix."""


def parse_vector(payload: bytes, where: str) -> Vector:
    """The `data.result` of an instant query, as (labels, value); scalars become one row."""
    try:
        doc = json.loads(payload)
    except ValueError:
        raise PrometheusError(f"{where} did not answer with Prometheus JSON: {payload[:120]!r}") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error", "unknown error") if isinstance(doc, dict) else "unknown error"
        raise PrometheusError(f"Prometheus at {where} refused the query: {error}")
    data = doc.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return [({}, float(result[1]))]
    rows: Vector = []
    for item in result or []:
        # Prometheus writes values as strings: "1.5", "NaN", "+Inf".
        rows.append((dict(item.get("metric") or {}), float(item["value"][1])))
    return rows


class PrometheusClient:
    """Instant queries against one Prometheus; `query` is thread-safe."""

    def __init__(self, url: str | None = None, kube: KubeClient | None = None, timeout: float = 15.0) -> None:
        if url is None and kube is None:
            raise ValueError("a URL or a KubeClient")
        self.url = url.rstrip("/") if url else None
        self.kube = kube
        self.timeout = timeout

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        assert self.kube is not None
        return f"{self.kube.config.server}{SERVICE_PROXY_PATH}"

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET a Prometheus API path (e.g. /api/v1/query, /-/ready)."""
        if self.url:
            return self._get_url(path, params)
        assert self.kube is not None
        try:
            return self.kube.request("GET", SERVICE_PROXY_PATH + path, params=params, accept="*/*")
        except KubeError as exc:
            raise PrometheusError(f"{exc}") from None

    def _get_url(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        assert self.url is not None
        full = self.url + path + (f"?{urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(full, timeout=self.timeout) as resp:  # the user's URL
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise PrometheusError(
                f"cannot reach Prometheus at {self.url}: {reason}; check --prometheus-url / "
                f"${ENV_PROMETHEUS_URL}, or drop them to use the mesh's Prometheus via the API server"
            ) from None

    def query(self, promql: str) -> Vector:
        status, payload = self.get("/api/v1/query", {"query": promql})
        if status in (200, 400, 422):  # Prometheus answers errors with JSON too
            return parse_vector(payload, self.where)
        raise PrometheusError(self._http_failure(status, payload))

    def _http_failure(self, status: int, payload: bytes) -> str:
        if self.url:
            return f"Prometheus at {self.url} answered HTTP {status}; is it a Prometheus server?"
        detail = ""
        try:
            detail = str(json.loads(payload).get("message", ""))
        except (ValueError, AttributeError):
            detail = payload[:120].decode(errors="replace").strip()
        if status == 404:
            return (
                f"the mesh's Prometheus (service {PROMETHEUS_SERVICE} in {CONTROL_PLANE_NAMESPACE}) was not "
                f"found: is the mesh installed? run `kubectl mesh check`; or point --prometheus-url at yours"
            )
        if status == 503:
            return (
                f"the mesh's Prometheus has no ready pod ({detail}): "
                f"kubectl -n {CONTROL_PLANE_NAMESPACE} get pods; kubectl -n {CONTROL_PLANE_NAMESPACE} "
                f"logs deploy/{PROMETHEUS_SERVICE}"
            )
        if status == 403:
            return (
                f"the API server forbids its service proxy to you ({detail}); instead run {PORT_FORWARD_HINT}"
            )
        return (
            f"the mesh's Prometheus did not answer through the API server (HTTP {status}: {detail}); "
            f"run `kubectl mesh check`, or {PORT_FORWARD_HINT}"
        )


def client_from_args(args: Any, kube: Callable[[], KubeClient]) -> PrometheusClient:
    """--prometheus-url, else $MESH_PROMETHEUS_URL, else the service proxy through `kube()`."""
    url = getattr(args, "prometheus_url", None) or os.environ.get(ENV_PROMETHEUS_URL)
    if url:
        if not url.startswith(("http://", "https://")):
            raise PrometheusError(f'Prometheus URL "{url}" must start with http:// or https://')
        return PrometheusClient(url=url)
    return PrometheusClient(kube=kube())
