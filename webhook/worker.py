"""The webhook's gunicorn worker: gevent's WSGI server with deadlines, a connection cap and a byte budget.

    worker_class = "webhook.worker.MeshWorker"   (webhook/gunicorn_conf.py)

gunicorn's `gevent_pywsgi` worker has no deadline on a connection (its `keepalive` setting is
read only by gunicorn's own HTTP parser, which that worker does not use), handshakes TLS with no
time limit, stops accepting when `worker_connections` are open (so 2,000 idle sockets starved
every admission), holds any half-sent body, and drains the rest of a body it refused. This
worker keeps gevent's parser and adds, per connection, the phases and rules of
`webhook/connections.py`:

- TLS is handshaken in the connection's greenlet once the client's first byte arrives (an idle
  socket costs a greenlet and a descriptor, no TLS state); the wait and the handshake share
  `tls_timeout`.
- A reaper greenlet ends connections whose phase outlived its deadline (handshake, keep-alive
  idle, head, body), every `REAP_INTERVAL` seconds; at shutdown, also those waiting for a
  request (gunicorn would otherwise wait `graceful_timeout` for idle keep-alive connections).
- At `max_connections` the connection that has waited longest is closed for the newcomer.
- The body is read by the server, before the app, into memory reserved from `body_budget`
  (the app then reads it from memory). A `Content-Length` over the largest body allowed is
  answered 413 at once and the connection half-closed: at most `LINGER_BYTES` more are read and
  dropped (so a client still sending can read the answer), never the whole body. A body that
  stalls is answered 408 and closed.
- Every answer the server writes itself is JSON, as the app's are, and a malformed request is
  one log line (gevent printed a traceback for some).
- Two listeners (`webhook/gunicorn_conf.py`): the admission port (TLS, the Flask app: /mutate and
  the probes) and the metrics port (`MESH_WEBHOOK_METRICS_BIND`, plain HTTP, `GET /metrics`
  alone: `webhook.app.metrics_app`), each with its own app, under the same bounds and one
  connection table; neither serves the other's paths. A body on the metrics port is refused
  unread (it would hold the body budget of /mutate).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import resource
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from http import HTTPStatus
from typing import Any

import gevent
import orjson
from gevent.pool import Pool
from gevent.pywsgi import MAX_REQUEST_LINE, _InvalidClientInput, headers_factory
from gevent.socket import wait_read
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from kubectl_mesh.errors import MeshError
from webhook.admission import MAX_BODY_BYTES
from webhook.connections import BODY, BUSY, HEAD, IDLE, Conn, ConnectionTable, Limits
from webhook.logs import logger

REAP_INTERVAL = 0.25
MAX_HEAD_BYTES = (
    16 * 1024
)  # header fields of a request (the line: gevent's 8 KiB); the API server sends < 1 KiB
POOL_SLACK = 64  # greenlets of connections told to stop, until they have unwound
SUMMARY_INTERVAL = 10.0  # at most one log line per interval about connections shed
LINGER_BYTES = 1024 * 1024  # read and dropped after a refusal, so the client can read the answer
LINGER_SECONDS = 1.0
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 256 * 1024

ENV_WORKERS = "MESH_WEBHOOK_WORKERS"
DEFAULT_WORKERS = 2
ENV_METRICS_BIND = "MESH_WEBHOOK_METRICS_BIND"
DEFAULT_METRICS_BIND = "0.0.0.0:9995"

ENV_LIMITS = {
    "MESH_WEBHOOK_TLS_TIMEOUT": ("tls_timeout", float),
    "MESH_WEBHOOK_HEADER_TIMEOUT": ("header_timeout", float),
    "MESH_WEBHOOK_BODY_TIMEOUT": ("body_timeout", float),
    "MESH_WEBHOOK_KEEPALIVE": ("keepalive", float),
    "MESH_WEBHOOK_MAX_CONNECTIONS": ("max_connections", int),
    "MESH_WEBHOOK_BODY_BUDGET": ("body_budget", int),
}


class WebhookConfigError(MeshError, ValueError):
    """A `MESH_WEBHOOK_*` variable that cannot work: gunicorn_conf prints it in one line and stops."""


def limits_from_env(environ: Mapping[str, str] | None = None) -> Limits:
    """`Limits` with the `MESH_WEBHOOK_*` overrides; WebhookConfigError names a bad variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, (name, kind) in ENV_LIMITS.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = 0
        if not value > 0:
            expected = "integer" if kind is int else "number"
            raise WebhookConfigError(f"{var}={raw!r}: expected a positive {expected}")
        values[name] = value
    limits = Limits(**values)
    if limits.body_budget < MAX_BODY_BYTES + 1:
        raise WebhookConfigError(
            f"MESH_WEBHOOK_BODY_BUDGET must hold one body of {MAX_BODY_BYTES} bytes at least"
        )
    return limits


def metrics_bind_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """`MESH_WEBHOOK_METRICS_BIND` as (its text, its port); WebhookConfigError names a bad value."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_METRICS_BIND, "").strip() or DEFAULT_METRICS_BIND
    _host, sep, port = raw.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise WebhookConfigError(f"{ENV_METRICS_BIND}={raw!r}: expected HOST:PORT with a port of 1-65535")
    return raw, int(port)


def workers_from_env(environ: Mapping[str, str] | None = None) -> int:
    """`MESH_WEBHOOK_WORKERS`: a positive number of worker processes (gunicorn would start none on
    0, listening but never answering); WebhookConfigError names a bad value."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_WORKERS, "").strip()
    if not raw:
        return DEFAULT_WORKERS
    if not (raw.isascii() and raw.isdigit() and int(raw) > 0):
        raise WebhookConfigError(f"{ENV_WORKERS}={raw!r}: expected a positive integer")
    return int(raw)


class HeadTooLarge(ValueError):
    """The header fields of a request passed `MAX_HEAD_BYTES`: 431."""


class _HeadReader:
    """The connection's reader for the header fields, with a budget of bytes.

    http.client's parser alone takes 100 lines of 64 KiB: 6.5 MB held per connection.
    """

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile = rfile
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        line: bytes = self._rfile.readline(want)
        self._left -= len(line)
        if self._left < 0:
            raise HeadTooLarge(f"header fields larger than {MAX_HEAD_BYTES} bytes")
        return line


class Expired(gevent.GreenletExit):
    """Thrown into a connection's greenlet that ran out of time or was evicted."""


def error_body(reason: str) -> bytes:
    return orjson.dumps({"error": reason})


def error_response(status: int, reason: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers before the app runs."""
    body = error_body(reason)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _NoDrain:
    """Stands for gevent's body reader after a refusal: the rest of the body is never read."""

    def _discard(self) -> None:
        pass


_NO_DRAIN = _NoDrain()


class MeshHandler(PyWSGIHandler):
    """gevent's HTTP/1.1 handler with phases (`webhook/connections.py`) and JSON errors."""

    conn: Conn
    _reserved = False

    def _enter(self, phase: str) -> None:
        table: ConnectionTable = self.server.table
        if not table.enter(self.conn, phase):
            raise Expired

    def read_requestline(self) -> str:
        self._enter(IDLE)
        if not self.rfile.peek(1):  # waits for the first byte (or EOF) of the next request
            return ""
        self._enter(HEAD)
        line: str = super().read_requestline()
        if not line.endswith("\n") and len(line) < MAX_REQUEST_LINE:
            return ""  # the client closed in the middle of its request line: nothing to answer
        return line

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # gevent parses the head fields here
        return headers_factory(_HeadReader(fp, MAX_HEAD_BYTES), *args)

    def read_request(self, raw_requestline: str) -> bool:
        try:
            ok: bool = super().read_request(raw_requestline)
        except ValueError as exc:
            self._check_framing()  # a clearer reason when the framing is what failed
            if type(exc) is ValueError and "invalid literal" in str(exc):  # gevent's int() of "1x"
                raise ValueError("invalid HTTP version") from None
            raise
        if self.request_version == "HTTP/0.9":
            raise ValueError("HTTP/0.9 is not served")
        self._check_framing()
        return ok

    def _check_framing(self) -> None:
        """Refuse what gevent would read loosely (`int()` takes "+5" or "5_0"): no guessing at framing."""
        lengths = self.headers.get_all("content-length") or ()
        if len(lengths) > 1:
            raise ValueError("more than one Content-Length")
        for value in lengths:
            if not (value.strip().isascii() and value.strip().isdigit()):
                raise ValueError(f"invalid Content-Length {value[:20]!r}")
        coding = self.headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            raise ValueError(f"unsupported Transfer-Encoding {coding[:40]!r}")

    def handle_one_request(self) -> Any:
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[0] == "414":
            logger().warning(
                "bad_request", client=_client(self.client_address), error="request line too long"
            )
            self._count_refusal(414)
            return ("414", error_response(414, "request line too long"))
        return result

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A malformed request: one log line (never a traceback) and a JSON 400 (431) that closes."""
        reason = str(ex).splitlines()[0][:200] if str(ex) else type(ex).__name__
        status = 431 if isinstance(ex, HeadTooLarge) else 400
        logger().warning("bad_request", client=_client(self.client_address), error=reason)
        self._count_refusal(status)
        return (str(status), error_response(status, reason))

    def _count_refusal(self, status: int) -> None:
        """Count it in the app's `mesh_webhook_bad_requests_total`, as the app counts its own."""
        metrics = self.server.mesh_metrics
        if metrics is not None:
            metrics.bad_requests.labels(str(status)).inc()

    def _send_error_response_if_possible(self, error_code: int) -> None:
        if self.response_length:
            self.close_connection = True
            return
        self._respond(error_code, HTTPStatus(error_code).phrase.lower())

    def _respond(self, status: int, reason: str) -> None:
        """Answer with a JSON error and close: the rest of a body is not drained, only lingered on."""
        self.close_connection = True
        self.wsgi_input = _NO_DRAIN
        body = error_body(reason)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            self.start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            self.write(body)
            self._enter(BUSY)
            _linger(self.socket)
        except (OSError, Expired):
            pass

    def run_application(self) -> None:
        table: ConnectionTable = self.server.table
        try:
            refusal = self._read_body(table)
            if refusal is not None:
                if refusal[0]:
                    self._count_refusal(refusal[0])
                    self._respond(*refusal)
                else:  # the client went away: nothing to answer
                    self.close_connection = True
                    self.wsgi_input = _NO_DRAIN
                return
            super().run_application()
        finally:
            table.release(self.conn)

    def _read_body(self, table: ConnectionTable) -> tuple[int, str] | None:
        """Read the whole body into memory before the app; or (status, reason) to refuse with."""
        body: Any = self.wsgi_input  # gevent's reader: de-chunks, sends 100 Continue when asked
        length = self.content_length
        chunked = body.chunked_input
        if not chunked and not length:
            return self._busy_or_refuse()
        if self.server.serves_metrics:  # nothing there takes a body: none waited for, no budget held
            return _metrics_refusal(self.environ)
        if length is not None and length > MAX_BODY_BYTES:
            return (413, f"body larger than {MAX_BODY_BYTES} bytes")
        granted, victims = table.reserve(self.conn, MAX_BODY_BYTES + 1 if chunked else length)
        _stop(victims)
        if not granted:
            return (503, "too many request bodies in flight, retry")
        try:
            self._enter(BODY)
            data = body.read(MAX_BODY_BYTES + 1 if chunked else length)
        except Expired:
            return self._why_gone()
        except (ValueError, _InvalidClientInput) as exc:  # malformed chunks
            detail = str(exc.args[0])[:100] if exc.args else type(exc).__name__
            reason = f"malformed chunked body ({detail})"
            logger().warning("bad_request", client=_client(self.client_address), error=reason)
            return (400, reason)
        except OSError:  # the client went away mid-body
            return (0, "")
        if len(data) > MAX_BODY_BYTES:
            return (413, f"body larger than {MAX_BODY_BYTES} bytes")
        env = self.environ
        env["wsgi.input"] = io.BytesIO(data)
        env["CONTENT_LENGTH"] = str(len(data))
        env.pop("HTTP_TRANSFER_ENCODING", None)
        return self._busy_or_refuse()

    def _busy_or_refuse(self) -> tuple[int, str] | None:
        try:
            self._enter(BUSY)
        except Expired:
            return self._why_gone()
        return None

    def _why_gone(self) -> tuple[int, str]:
        if self.conn.why == "timeout":
            return (408, "request body not received in time")
        return (503, "server busy, retry")


class MeshServer(PyWSGIServer):
    """gevent's WSGIServer with a connection table; TLS is handshaken lazily, with a deadline.

    On the listener bound to `metrics_port` it serves `metrics_app` over plain HTTP instead of the
    application it is given (the admission app, whose metrics it serves).
    """

    def __init__(
        self,
        listener: Any,
        *,
        table: ConnectionTable,
        metrics_port: int | None = None,
        application: Any = None,
        spawn: Any = None,
        **kwargs: Any,
    ) -> None:
        self.mesh_metrics = getattr(application, "extensions", {}).get("mesh_metrics")
        self.serves_metrics = metrics_port is not None and listener.getsockname()[1] == metrics_port
        if self.serves_metrics:
            from webhook.app import metrics_app  # here: the master imports this module, not Flask

            kwargs.pop("ssl_context", None)
            application = metrics_app(self.mesh_metrics)
        # gunicorn's pool of `worker_connections` would stop accepting when full; the table evicts
        # at that count, and the pool only bounds the greenlets still unwinding on top of it.
        pool = Pool(table.limits.max_connections + POOL_SLACK)
        super().__init__(listener, application=application, spawn=pool, **kwargs)
        self.table = table

    def init_socket(self) -> None:
        super().init_socket()
        self._handle = self.wrap_socket_and_handle  # with or without TLS: the table's phases apply

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> None:
        conn, victims = self.table.open(gevent.getcurrent())
        _stop(victims)
        try:
            wait_read(client_socket.fileno())  # no TLS state for a socket that sends nothing
            sock = self.wrap_socket(client_socket, **self.ssl_args) if self.ssl_args else client_socket
            handler = self.handler_class(sock, address, self)
            handler.conn = conn
            handler.handle()
        except Expired:
            pass
        except OSError:  # a failed handshake, a reset: routine, not worth a line each
            pass
        finally:
            self.table.close(conn)
            with contextlib.suppress(OSError):
                client_socket.close()


def _metrics_refusal(environ: Mapping[str, Any]) -> tuple[int, str]:
    """A request with a body on the metrics port: `metrics_app`'s answer, without reading the body."""
    if environ.get("PATH_INFO") != "/metrics":
        return (404, "not found")
    if environ.get("REQUEST_METHOD") != "GET":
        return (405, "method not allowed")
    return (413, "no body is read here")


def _linger(sock: Any) -> None:
    """Half-close after a refusal, then discard what the client is still sending, a little and briefly.

    Closing with unread bytes makes the kernel reset the connection, which can destroy the answer
    before a client that is still sending reads it. So, as Go's server and nginx's lingering close
    do, send FIN and read on, raw (no TLS), at most `LINGER_BYTES` or `LINGER_SECONDS`; then close.
    """
    sock.shutdown(socket.SHUT_WR)
    fd = sock.fileno()
    deadline = time.monotonic() + LINGER_SECONDS
    discarded = 0
    while discarded < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            wait_read(fd, timeout=left)
            chunk = os.read(fd, 65536)
        except (OSError, TimeoutError):
            return
        if not chunk:
            return
        discarded += len(chunk)


def _stop(conns: list[Conn]) -> None:
    for conn in conns:
        conn.handle.kill(Expired, block=False)  # type: ignore[attr-defined]


def _client(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


class MeshWorker(GeventPyWSGIWorker):
    """gunicorn's gevent_pywsgi worker, serving with `MeshServer` and `MeshHandler`."""

    wsgi_handler = MeshHandler

    def run(self) -> None:
        limits = replace(
            limits_from_env(),
            keepalive=float(self.cfg.keepalive),
            max_connections=int(self.cfg.worker_connections),
        )
        limits = _fit_descriptors(limits)
        _return_large_blocks()
        self.table = ConnectionTable(limits, time.monotonic)
        _bind, metrics_port = metrics_bind_from_env()
        self.server_class = partial(MeshServer, table=self.table, metrics_port=metrics_port)
        gevent.spawn(self._reap)
        super().run()

    def _reap(self) -> None:
        """End connections past their deadline; say how many were shed, at most once per interval."""
        table = self.table
        next_summary = time.monotonic() + SUMMARY_INTERVAL
        while True:
            gevent.sleep(REAP_INTERVAL)
            _stop(table.expired())
            if not self.alive:  # shutting down: what waits for a request is closed, not waited for
                _stop(table.drop_waiting())
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + SUMMARY_INTERVAL
                shed = table.take_shed()
                if any(shed.values()):
                    logger().warning("connections_shed", open=table.count, **shed)


def _return_large_blocks() -> None:
    """Bodies (up to 4 MiB each) go back to the system when freed, not into the heap.

    glibc serves large blocks with mmap, but raises that threshold to the size of each mmapped
    block freed, so after the first body freed, later ones come from the heap, whose freed
    memory mostly stays in the process: 40 held bodies then left a worker 40 MiB larger than the
    bodies it still held. Setting the threshold fixes it (and turns that adjustment off).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides


def _fit_descriptors(limits: Limits) -> Limits:
    """Raise the soft descriptor limit for the cap (as Go does); lower the cap if the hard limit is short."""
    need = limits.max_connections + POOL_SLACK + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new_soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(16, soft - POOL_SLACK - 64)
        logger().warning(
            "max_connections_lowered", wanted=limits.max_connections, now=fitted, descriptor_limit=soft
        )
        return replace(limits, max_connections=fitted)
    return limits
