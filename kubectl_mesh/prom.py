"""The one Prometheus HTTP API client (instant queries, optionally at a fixed evaluation time),
over one of two transports:

- a URL (the demo's Prometheus; `--prometheus-url` or `$MESH_PROMETHEUS_URL`, e.g. a
  `kubectl port-forward` or a Prometheus of your own), requested with urllib. A loopback URL is
  always asked directly, whatever `$http_proxy` says; others follow the environment's proxies;
- by default, the mesh's Prometheus in `mesh-system` through the Kubernetes API server's service
  proxy: `/api/v1/namespaces/mesh-system/services/prometheus:9090/proxy/api/v1/query`, with the
  user's own credentials (needs `services/proxy` permission; where a cluster forbids it the error
  names the port-forward alternative).

`PrometheusClient.query(promql, at=None) -> [(labels, value)]` is what `compute_stat` takes
(`at`, a Unix time, lets the demo ask its three tables about one instant); `samples(selector,
at=None)` gives a range selector's raw samples with their scrape instants (the demo's record and
the lab walkthrough read the apps' own counters at those instants). `connect(url, kube)`
picks the transport from typed values (the commands turn flags into them). Errors are
`PrometheusError` (a MeshError): a one-line message and, where there is one, a hint.

Sample values: Prometheus writes every value as a string that `float()` reads, "NaN" and "±Inf"
included, and those stay NaN and ±Inf. Any other value means the answer did not come from a
Prometheus (a proxy's page, a cut body) and raises `PrometheusError`: a NaN there would show as
"-" in a table, the same as no traffic, instead of saying that something is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from kubectl_mesh.contract import (
    CONTROL_PLANE_NAMESPACE,
    ENV_PROMETHEUS_URL,
    PROMETHEUS_PORT,
    PROMETHEUS_SERVICE,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.kube import KubeClient, KubeError

if TYPE_CHECKING:
    import urllib.request

SERVICE_PROXY_PATH = (
    f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/services/{PROMETHEUS_SERVICE}:{PROMETHEUS_PORT}/proxy"
)
PORT_FORWARD_HINT = (
    f"`kubectl -n {CONTROL_PLANE_NAMESPACE} port-forward svc/{PROMETHEUS_SERVICE} {PROMETHEUS_PORT}` "
    f"and pass --prometheus-url http://127.0.0.1:{PROMETHEUS_PORT}"
)
URL_HINT = (
    f"check --prometheus-url / ${ENV_PROMETHEUS_URL}, or drop them to use the mesh's Prometheus "
    "via the API server"
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_TIMEOUT_S = 15.0
Vector = list[tuple[dict[str, str], float]]
Matrix = list[tuple[dict[str, str], list[tuple[float, float]]]]


class PrometheusError(MeshError):
    """Prometheus could not answer; the message is one line, the hint (if any) what to do."""


def _sample(value: Any, where: str) -> float:
    """A sample value as Prometheus encodes it: a string, "NaN" and "+Inf" included."""
    if not isinstance(value, str):
        raise PrometheusError(f"{where} answered a sample value that is not a string: {value!r}")
    try:
        return float(value)
    except ValueError:
        raise PrometheusError(
            f"{where} answered a sample value that is not a number: {value[:40]!r}"
        ) from None


def _result(payload: bytes, where: str) -> tuple[Any, Any, dict[str, Any]]:
    """(resultType, result, the whole answer) of a successful query, else PrometheusError."""
    try:
        doc = json.loads(payload)
    except ValueError:
        raise PrometheusError(f"{where} did not answer with Prometheus JSON: {payload[:120]!r}") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error", "unknown error") if isinstance(doc, dict) else "unknown error"
        raise PrometheusError(f"Prometheus at {where} refused the query: {error}")
    data = doc.get("data")
    if not isinstance(data, dict):
        return None, None, doc
    return data.get("resultType"), data.get("result"), doc


def parse_vector(payload: bytes, where: str) -> Vector:
    """The `data.result` of an instant query, as (labels, value); a scalar becomes one row."""
    kind, result, doc = _result(payload, where)
    try:
        if kind == "scalar":
            return [({}, _sample(result[1], where))]
        if kind == "vector" and isinstance(result, list):
            return [({**(item.get("metric") or {})}, _sample(item["value"][1], where)) for item in result]
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    raise PrometheusError(f"{where} did not answer an instant vector: {str(doc)[:160]}")


def parse_matrix(payload: bytes, where: str) -> Matrix:
    """The `data.result` of an instant query of a range selector (`up{…}[20s]`): each series'
    labels and its raw samples, (Unix time, value), oldest first."""
    kind, result, doc = _result(payload, where)
    try:
        if kind == "matrix" and isinstance(result, list):
            return [
                ({**(item.get("metric") or {})}, [(float(t), _sample(v, where)) for t, v in item["values"]])
                for item in result
            ]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        pass
    raise PrometheusError(f"{where} did not answer a range vector: {str(doc)[:160]}")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class PrometheusClient:
    """Instant queries against one Prometheus, over a URL or a KubeClient; thread-safe.

    `url_hint` is the hint of the error raised when the URL cannot be reached (the CLI names
    its flag there; the demo, which made the URL, has nothing to add)."""

    def __init__(
        self,
        url: str | None = None,
        kube: KubeClient | None = None,
        timeout: float = 15.0,
        url_hint: str = "",
    ) -> None:
        if (url is None) == (kube is None):
            raise ValueError("PrometheusClient takes a URL or a KubeClient")
        self.url = url.rstrip("/") if url else None
        self.kube = kube
        self.timeout = timeout
        self.url_hint = url_hint
        self._opener: urllib.request.OpenerDirector | None = None
        # Once Prometheus could not be reached (or hung), every later query fails at once with
        # the same error: `stat all` asks 48 queries, and waiting for each to time out in turn
        # took 45 s against a Prometheus that never answers.
        self._unreachable: PrometheusError | None = None

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        assert self.kube is not None
        return f"{self.kube.config.server}{SERVICE_PROXY_PATH}"

    def query(self, promql: str, at: float | None = None) -> Vector:
        """An instant query, evaluated now or at the Unix time `at`."""
        return parse_vector(self._instant(promql, at), self.where)

    def samples(self, selector: str, at: float | None = None) -> Matrix:
        """The raw samples a range selector (`up{…}[20s]`) holds now or at `at`: the very samples
        `increase()` over that window uses, with the instants they were scraped."""
        return parse_matrix(self._instant(selector, at), self.where)

    def _instant(self, promql: str, at: float | None) -> bytes:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        status, payload = self.get("/api/v1/query", params)
        if status in (200, 400, 422):  # Prometheus answers errors with JSON too
            return payload
        raise self._http_failure(status, payload)

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET a Prometheus API path (e.g. /api/v1/query, /-/ready): (status, body)."""
        if self._unreachable is not None:
            raise self._unreachable
        try:
            if self.url:
                return self._get_url(path, params)
            assert self.kube is not None
            try:
                return self.kube.request("GET", SERVICE_PROXY_PATH + path, params=params, accept="*/*")
            except KubeError as exc:  # the API server is unreachable: say so, as a Prometheus failure
                raise PrometheusError(exc.message, exc.hint) from None
        except PrometheusError as exc:
            self._unreachable = exc
            raise

    def _get_url(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        assert self.url is not None
        if self._opener is None:
            direct = _is_loopback(self.url)
            self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if direct else []))
        full = self.url + path + (f"?{urlencode(params)}" if params else "")
        try:
            with self._opener.open(full, timeout=self.timeout) as resp:  # the user's URL
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError):
                raise PrometheusError(
                    f"Prometheus at {self.url} did not answer within {self.timeout:g}s",
                    "is it overloaded or stuck? --request-timeout sets how long to wait",
                ) from None
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {reason}", self.url_hint) from None

    def _http_failure(self, status: int, payload: bytes) -> PrometheusError:
        if self.url:
            return PrometheusError(
                f"Prometheus at {self.url} answered HTTP {status}; is it a Prometheus server?"
            )
        detail = ""
        try:
            detail = str(json.loads(payload).get("message", ""))
        except (ValueError, AttributeError):
            detail = payload[:120].decode(errors="replace").strip()
        if status == 404:
            return PrometheusError(
                f"the mesh's Prometheus (service {PROMETHEUS_SERVICE} in {CONTROL_PLANE_NAMESPACE}) was not "
                "found",
                "is the mesh installed? run `kubectl mesh check`; or point --prometheus-url at yours",
            )
        if status == 503:
            return PrometheusError(
                f"the mesh's Prometheus has no ready pod ({detail})",
                f"kubectl -n {CONTROL_PLANE_NAMESPACE} get pods; kubectl -n {CONTROL_PLANE_NAMESPACE} "
                f"logs deploy/{PROMETHEUS_SERVICE}",
            )
        if status == 403:
            return PrometheusError(
                f"the API server forbids its service proxy to you ({detail})", f"run {PORT_FORWARD_HINT}"
            )
        return PrometheusError(
            f"the mesh's Prometheus did not answer through the API server (HTTP {status}: {detail})",
            f"run `kubectl mesh check`, or {PORT_FORWARD_HINT}",
        )


def connect(
    url: str | None, kube: Callable[[], KubeClient], timeout: float | None = None
) -> PrometheusClient:
    """`url` (--prometheus-url), else $MESH_PROMETHEUS_URL, else the service proxy through `kube()`.

    `kube` is called only when the service proxy is used; `timeout` (seconds per query) defaults
    to DEFAULT_TIMEOUT_S."""
    timeout = timeout or DEFAULT_TIMEOUT_S
    url = url or os.environ.get(ENV_PROMETHEUS_URL) or None
    if url:
        if not url.startswith(("http://", "https://")):
            raise PrometheusError(f'Prometheus URL "{url}" must start with http:// or https://', URL_HINT)
        return PrometheusClient(url=url, timeout=timeout, url_hint=URL_HINT)
    return PrometheusClient(kube=kube(), timeout=timeout)
