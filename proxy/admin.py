"""The admin listener (:4191): /live, /ready (503 until listeners are up and while draining), /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from .server import Proxy

StartResponse = Callable[..., Any]
# The classic text format: what generate_latest writes, and what every Prometheus 2.x parses.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def process_registry() -> CollectorRegistry:
    """prometheus_client's default process metrics (Grafana reads process_start_time_seconds)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(proxy: Proxy, registry: CollectorRegistry) -> Iterator[bytes]:
    """The mesh's metrics (rendered by proxy/metrics.py, see why there) and the process metrics,
    as a stream: gevent's WSGI server sends each chunk (chunked transfer coding) before the next
    is rendered, so a scrape never holds the whole text, nor its encoded copy. Between chunks the
    proxy's traffic runs (sleep(0)), so a large scrape stalls it for one chunk at a time."""
    for chunk in proxy.metrics.render_chunks():
        yield chunk.encode()
        gevent.sleep(0)
    yield generate_latest(registry)


def admin_app(proxy: Proxy) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    registry = process_registry()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        elif path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
            # HEAD renders nothing (the server then says Content-Length: 0, and sends no body).
            return [] if method == "HEAD" else exposition(proxy, registry)
        elif path == "/live":
            status, body, ctype = "200 OK", b"live\n", "text/plain"
        elif path == "/ready":
            if proxy.ready:
                status, body, ctype = "200 OK", b"ready\n", "text/plain"
            else:
                status, body, ctype = "503 Service Unavailable", b"not ready\n", "text/plain"
        else:
            status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    return app


def serve_admin(proxy: Proxy, address: tuple[str, int]) -> WSGIServer:
    server = WSGIServer(address, admin_app(proxy), log=None, error_log=None)
    server.start()
    return server
