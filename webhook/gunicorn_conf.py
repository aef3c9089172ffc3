"""gunicorn settings for the webhook, driven by the environment the chart sets.

    gunicorn -c python:webhook.gunicorn_conf webhook.wsgi:app

| variable | meaning | default |
| --- | --- | --- |
| `MESH_TLS_CERT`, `MESH_TLS_KEY` | serving cert and key files (required; reloaded on change) | |
| `MESH_CONFIG` | mesh config JSON file (`kubectl_mesh.inject.config`) | built-in defaults |
| `MESH_WEBHOOK_BIND` | admission listen address (TLS: `/mutate`, `/healthz`, `/readyz`) | `0.0.0.0:8443` |
| `MESH_WEBHOOK_METRICS_BIND` | metrics listen address (plain HTTP: `GET /metrics` only) | `0.0.0.0:9995` |
| `MESH_WEBHOOK_WORKERS` | gevent worker processes | `2` |
| `MESH_WEBHOOK_WORKER_CLASS` | gunicorn worker (others lack the limits below) | `webhook.worker.MeshWorker` |
| `MESH_WEBHOOK_TLS_TIMEOUT` | seconds from accept to the end of the TLS handshake | `10` |
| `MESH_WEBHOOK_HEADER_TIMEOUT` | seconds from a request's first byte to the end of its headers | `10` |
| `MESH_WEBHOOK_BODY_TIMEOUT` | seconds from the end of the headers to the end of the body | `10` |
| `MESH_WEBHOOK_KEEPALIVE` | seconds an idle keep-alive connection is kept | `30` |
| `MESH_WEBHOOK_MAX_CONNECTIONS` | connections per worker; beyond, the longest waiting is closed | `1000` |
| `MESH_WEBHOOK_BODY_BUDGET` | bytes of request bodies in flight per worker | `16777216` (16 MiB) |
| `MESH_WEBHOOK_LOG_LEVEL` | gunicorn and webhook log level | `info` |
| `MESH_LOG_FORMAT` | `logfmt` or `json` lines (`kubectl_mesh/log.py`), for gunicorn's lines too | `logfmt` |
| `PROMETHEUS_MULTIPROC_DIR` | where workers share metrics (a writable emptyDir) | a new dir under `$TMPDIR` |

TLS 1.2 is the minimum on the admission port. The metrics port is plain HTTP, as Linkerd's
injector (admin port 9995) and istiod (15014) serve theirs: counters, no secrets; the chart's
NetworkPolicy admits only Prometheus to it. Only `webhook.worker.MeshWorker` serves it (another
worker class, as `make bench-webhook --sweep` runs, would serve the admission app there over
TLS), so with another class it is not bound. The limits are `webhook/connections.py`'s, enforced by the worker
(`webhook/worker.py`). The config and the limits are checked in the master before any worker
starts, so a bad ConfigMap or variable stops the pod with one clear line.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from kubectl_mesh.errors import MeshError
from kubectl_mesh.inject import MeshConfigError, load_config
from kubectl_mesh.log import Formatter, format_from_env
from webhook.logs import level_from_env
from webhook.tls import ReloadingTLS
from webhook.worker import limits_from_env, metrics_bind_from_env, workers_from_env

_cert = os.environ.get("MESH_TLS_CERT", "")
_key = os.environ.get("MESH_TLS_KEY", "")
if not _cert or not _key:
    sys.exit("error: MESH_TLS_CERT and MESH_TLS_KEY must name the serving certificate and key files")
try:
    _log_format = format_from_env()
    _limits = limits_from_env()
    _metrics_bind, _metrics_port = metrics_bind_from_env()
    _workers = workers_from_env()
    _log_level = level_from_env()
except MeshError as _exc:  # LogFormatError, LogLevelError, WebhookConfigError: one line, no traceback
    sys.exit(f"error: {_exc}")


class MeshLogger(GunicornLogger):
    """gunicorn's logger, its lines in the mesh's format (as the webhook's and the proxy's).

    Only the formatter changes: gunicorn still decides what goes where, and the access log stays
    off (`logconfig_dict` would switch it on, paying for it on every admission).
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(Formatter(_log_format))


# gevent's own WSGI server in each worker (~10% less CPU per admission than gunicorn's gevent
# handler on this workload), with deadlines, a connection cap and a body budget added
# (webhook/worker.py): gunicorn's `keepalive` alone did nothing with gevent's server.
MESH_WORKER = "webhook.worker.MeshWorker"
worker_class = os.environ.get("MESH_WEBHOOK_WORKER_CLASS", MESH_WORKER)
bind = [os.environ.get("MESH_WEBHOOK_BIND", "0.0.0.0:8443")]
if bind[0].rpartition(":")[2] == str(_metrics_port):
    sys.exit(f"error: MESH_WEBHOOK_BIND and MESH_WEBHOOK_METRICS_BIND share port {_metrics_port}")
if worker_class == MESH_WORKER:
    bind.append(_metrics_bind)  # the worker serves metrics_app there, without TLS
workers = _workers
worker_connections = _limits.max_connections
keepalive = int(_limits.keepalive)  # the API server keeps its connections to webhooks open
timeout = 30
graceful_timeout = 5  # for requests under way; idle keep-alive connections are closed at once (worker.py)
certfile = _cert
keyfile = _key
loglevel = _log_level
errorlog = "-"
accesslog = None
logger_class = MeshLogger
proc_name = "mesh-webhook"
control_socket_disable = True  # no admin socket: nothing to write under $HOME, nothing extra exposed
# The heartbeat files must live on a writable filesystem: the container's root is read-only.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

_own_metrics_dir = ""
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="mesh-webhook-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir

_tls: ReloadingTLS | None = None


def on_starting(server: Any) -> None:
    """In the master, before workers: fail fast on a bad config or unusable TLS files."""
    try:
        load_config()
    except MeshConfigError as exc:
        sys.exit(f"error: {exc}")
    try:
        ReloadingTLS(_cert, _key)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: cannot load TLS certificate {_cert} / key {_key}: {exc}")
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.unlink(stale)  # counters of a previous run must not be added to this one


def ssl_context(conf: Any, default_ssl_context_factory: Any) -> Any:
    """Called in each worker: a TLS >= 1.2 context that follows certificate renewals."""
    global _tls
    if _tls is None:
        _tls = ReloadingTLS(conf.certfile, conf.keyfile)
    return _tls.context()


def post_worker_init(worker: Any) -> None:
    """Per worker, before its server starts: routine TLS failures stay quiet; GC skips start-up.

    A client that fails the TLS handshake (scanner, wrong CA) is routine, not a traceback.
    (Each worker already accepts one connection per wake-up: gunicorn sets gevent's
    `max_accept` to 1 when it runs more than one worker.)
    """
    import gc
    import ssl

    import gevent

    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, ssl.SSLError, ConnectionError)
    # Everything loaded so far (Flask, the config, the injector) lives as long as the worker:
    # keep it out of the cyclic GC's scans, which otherwise walk it on every full collection
    # (server CPU per admission 0.80 -> 0.65 ms, bench/bench_webhook.py). Collect first, so no
    # start-up garbage is frozen for good.
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration created (not one given to it)."""
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
