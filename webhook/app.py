"""The webhook's HTTP edge: Flask routes around the pure `webhook.admission` protocol.

`create_app()` is the factory gunicorn serves on the admission port (see `webhook/gunicorn_conf.py`);
`metrics_app()` is what the worker serves on the metrics port, apart, so that a NetworkPolicy can
admit the API server to the one and Prometheus to the other. The mesh config
is read once, at start-up, from `$MESH_CONFIG`; an unusable config stops the process with one
line rather than injecting pods with defaults nobody asked for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from kubectl_mesh import __version__
from kubectl_mesh.contract import WEBHOOK_PATH
from kubectl_mesh.inject import MeshConfig, load_config
from webhook.admission import (
    MAX_BODY_BYTES,
    RESULT_ERROR,
    AdmissionRequest,
    BadRequest,
    check_content_type,
    parse_review,
    review,
)
from webhook.kube import KubeAccess
from webhook.kube import start as start_kube
from webhook.logs import level_from_env, logger, stdlib_handler

INJECTED_BY = f"kubectl-mesh-webhook/{__version__}"
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

flask_log = logging.getLogger("webhook")  # Flask("webhook").logger: unhandled exceptions


class AdmissionMetrics:
    """The webhook's own metrics. Under gunicorn with several workers they are aggregated
    across workers through prometheus_client's multiprocess mode ($PROMETHEUS_MULTIPROC_DIR)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "mesh_webhook_admissions_total",
            "Admission requests answered, by result (injected|skipped|ignored|error) and skip reason.",
            ["result", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mesh_webhook_admission_duration_seconds",
            "Time to answer an admission request, from body read to response built.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.events = Counter(
            "mesh_webhook_events_total",
            "Kubernetes Events for workload owners, by reason and result (recorded|merged|dropped|failed).",
            ["reason", "result"],
            registry=self.registry,
        )
        # The error series exists from the start (0), so that Prometheus' increase() counts the
        # first error too (`kubectl mesh check` asks for the last hour's).
        self.admissions.labels(RESULT_ERROR, "")
        self.bad_requests = Counter(
            "mesh_webhook_bad_requests_total",
            "Requests refused before admission (400, 413, 415, ...), by HTTP status.",
            ["status"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        directory = os.environ.get(ENV_MULTIPROC_DIR)
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _configure_logging() -> None:
    """What Flask logs through `logging` (an exception in a view) in the mesh's format too."""
    if not flask_log.handlers:
        flask_log.addHandler(stdlib_handler())
        flask_log.setLevel(level_from_env().upper())
        flask_log.propagate = False


def create_app(config: MeshConfig | None = None, kube: KubeAccess | None = None) -> Flask:
    """The Flask app. `config` defaults to the file named by $MESH_CONFIG (or built-in defaults);
    `kube` (the namespace cache and the Event recorder) to `webhook.kube.start()`: in-cluster, or
    $KUBECONFIG, or nothing."""
    mesh_config = config if config is not None else load_config()
    _configure_logging()
    log = logger()
    app = Flask("webhook")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Flask would answer OPTIONS itself (200, an HTML body); every answer here is JSON: a 405.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    metrics = AdmissionMetrics()
    app.extensions["mesh_metrics"] = metrics
    app.extensions["mesh_config"] = mesh_config
    access = (
        kube
        if kube is not None
        else start_kube(log, lambda reason, result: metrics.events.labels(reason, result).inc())
    )
    app.extensions["mesh_kube"] = access

    @app.post(WEBHOOK_PATH)
    def mutate() -> Response:
        started = time.perf_counter()
        try:
            check_content_type(request.content_type)
            req = parse_review(_read_body())
        except BadRequest as exc:
            metrics.bad_requests.labels(str(exc.status)).inc()
            return _json({"error": exc.reason}, exc.status)
        # The namespace's labels (Pod Security level, other meshes' marks) from the cache (one
        # bounded GET for a namespace it does not know yet); None: the injector decides without.
        outcome = review(req, mesh_config, INJECTED_BY, access.namespace_labels(req.namespace))
        access.after_review(req, outcome)  # queues the Events for the owner: never waits
        metrics.admissions.labels(outcome.result, outcome.reason).inc()
        metrics.latency.observe(time.perf_counter() - started)
        if outcome.result == RESULT_ERROR:
            log.error(
                "injection_failed",
                pod=_where(req),
                uid=req.uid,
                admitted="without proxy",
                error=outcome.error,
            )
        elif log.threshold <= 10:
            log.debug("admission", pod=_where(req), result=outcome.result, reason=outcome.reason or "-")
        return _json(outcome.review)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz")
    def readyz() -> Response:
        return _json({"status": "ready", "proxyVersion": mesh_config.proxy_version})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            metrics.bad_requests.labels("413").inc()
        response = _json({"error": exc.description or exc.name}, status)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    return app


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def metrics_app(
    metrics: AdmissionMetrics | None,
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The metrics port's WSGI app: `GET /metrics` (the workers' sum) and nothing else; JSON errors.

    Not a Flask route of the admission app: that app answers on the admission port, which must not
    serve /metrics, and this port must not serve /mutate. `metrics` None (an app without the
    webhook's metrics): 404 for every path.
    """

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if metrics is None or environ.get("PATH_INFO") != "/metrics":
            return _answer(start_response, "404 Not Found", orjson.dumps({"error": "not found"}))
        if environ.get("REQUEST_METHOD") != "GET":
            error = orjson.dumps({"error": "method not allowed"})
            return _answer(start_response, "405 Method Not Allowed", error, [("Allow", "GET")])
        return _answer(start_response, "200 OK", metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    return serve


def _answer(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> list[bytes]:
    start_response(
        status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])]
    )
    return [body]


def _read_body() -> bytes:
    """The request body, at most MAX_BODY_BYTES (413 beyond), with or without Content-Length.

    A chunked body is read from `wsgi.input` directly: both gunicorn's and gevent's servers
    de-chunk it, but werkzeug reads a body without Content-Length only from servers that
    declare `wsgi.input_terminated`, and would see it as empty.
    """
    too_large = BadRequest(413, f"body larger than {MAX_BODY_BYTES} bytes")
    length = request.content_length
    if length is not None:
        if length > MAX_BODY_BYTES:
            raise too_large
        return request.get_data(cache=False)
    data: bytes = request.environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise too_large
    return data


def _where(req: AdmissionRequest) -> str:
    """`namespace/pod` for the log, built only when a line is written."""
    return f"{req.namespace or '-'}/{req.pod_name}"
