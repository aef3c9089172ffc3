"""A real two-workload mesh on loopback, with no Kubernetes: for stat's end-to-end numbers.

    server app (stdlib HTTP, /fail -> 500)  <-  proxy "back/deployment/voting/voting-1" (explicit
    inbound forward)  <-  proxy "front/deployment/web/web-1" (outbound HTTP forward proxy)  <-
    a client loop in the test, counting what it sent and what failed.

A real Prometheus (the system's `prometheus`) scrapes both proxies' admin ports every second,
with the target labels the mesh's relabelling gives pods (namespace, pod, deployment). Every
process is started here and stopped by `close()`; only 127.0.0.1 is used.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_mesh.procs import Prometheus, start_prometheus
from tests.support.proxy_process import ProxyProcess, start_proxy

SERVER = ("back", "deployment", "voting", "voting-1")  # the app's sidecar: explicit inbound forward
CLIENT = ("front", "deployment", "web", "web-1")  # the client's sidecar: outbound forward proxy


class _App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = 500 if self.path.startswith("/fail") else 200
        body = b"no\n" if status == 500 else b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class ClientCount:
    sent: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    times: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic, failed)

    def window(self, seconds: float, end: float) -> tuple[int, int]:
        """(sent, failed) in the `seconds` before `end` (monotonic)."""
        inside = [f for t, f in self.times if end - seconds <= t <= end]
        return len(inside), sum(inside)


class LoopbackMesh:
    def __init__(self, scrape_interval: str = "1s") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mesh-stat-test-"))
        self.app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
        self.app_port = self.app.server_address[1]
        threading.Thread(target=self.app.serve_forever, daemon=True).start()
        self.proxies: list[ProxyProcess] = []
        self.prometheus: Prometheus | None = None
        try:
            self.server = self._start_proxy(SERVER)
            self.client = self._start_proxy(CLIENT)
            self.prometheus = start_prometheus(self._prometheus_config(scrape_interval), self.tmp)
        except BaseException:
            self.close()
            raise

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    def _start_proxy(self, identity: tuple[str, str, str, str]) -> ProxyProcess:
        proxy = start_proxy(
            self.tmp,
            "--inbound-forward",
            f"127.0.0.1:{self.app_port}",
            identity=identity,
            log_level="warning",
        )
        self.proxies.append(proxy)
        return proxy

    def _prometheus_config(self, scrape_interval: str) -> dict[str, object]:
        """Static targets with the labels the mesh's relabelling gives pods (namespace, pod, kind)."""
        targets = [
            {"targets": [f"127.0.0.1:{p.admin}"], "labels": {"namespace": ns, "pod": pod, kind: name}}
            for p, (ns, kind, name, pod) in ((self.server, SERVER), (self.client, CLIENT))
        ]
        return {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": "mesh-proxy", "static_configs": targets}],
        }

    def send(self, count: ClientCount, *, seconds: float, rps: float, fail_every: int) -> None:
        """The client app: GET through its proxy to the server at a steady rate; every
        `fail_every`-th request asks for /fail (a 500). Bounded by `seconds`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.client.outbound, timeout=5)
        count.started = time.monotonic()
        deadline = count.started + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            path = "/fail" if i % fail_every == 0 else "/ok"
            conn.request("GET", f"http://127.0.0.1:{self.server.inbound}{path}")
            resp = conn.getresponse()
            resp.read()
            failed = resp.status >= 500
            count.sent += 1
            count.failed += failed
            count.times.append((time.monotonic(), failed))
            next_at = count.started + i / rps
            time.sleep(max(0.0, next_at - time.monotonic()))
        count.finished = time.monotonic()
        conn.close()

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for proxy in self.proxies:
            proxy.stop()
        self.app.shutdown()
        self.app.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)
