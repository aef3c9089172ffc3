"""A real mesh of any call graph on loopback, with no Kubernetes: for `edges` and `diagnose`.

Each workload is an app (stdlib HTTP, in this process) with a real `mesh-proxy run` beside it:
the proxy forwards inbound requests to the app, and the app calls its callees through the
proxy's outbound listener (explicit mode, as the demo). A request to an app calls each callee
once, in order, and fails (500) when one of them failed or when its own rule says so (every
`fail_every`-th request it serves): failures travel up the graph as they do in emojivoto. A
hop counter stops cycles. The test's driver calls the entry workload's proxy directly, as an
unmeshed client. A real Prometheus scrapes every proxy each second, with the labels the mesh's
relabelling gives pods. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_mesh.procs import Prometheus, start_prometheus
from kubectl_mesh.prom import PrometheusClient
from tests.support.proxy_process import ProxyProcess, start_proxy

NAMESPACE = "graph"
HOPS_HEADER = "x-test-hops"  # the app's own header (not the mesh's): stops a cycle after MAX_HOPS
MAX_HOPS = 4


@dataclass
class Workload:
    name: str
    calls: tuple[str, ...] = ()
    fail_every: int = 0  # fails its own every n-th request (0: never)
    served: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class GraphMesh:
    def __init__(self, topology: dict[str, tuple[tuple[str, ...], int]]) -> None:
        """`topology`: workload -> (callees, fail_every)."""
        self.tmp = Path(tempfile.mkdtemp(prefix="mesh-graph-test-"))
        self.workloads = {name: Workload(name, calls, fail) for name, (calls, fail) in topology.items()}
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.proxies: dict[str, ProxyProcess] = {}
        self.prometheus: Prometheus | None = None
        try:
            for workload in self.workloads.values():
                app = self._start_app(workload)
                self.proxies[workload.name] = start_proxy(
                    self.tmp,
                    "--inbound-forward",
                    f"127.0.0.1:{app.server_address[1]}",
                    identity=(NAMESPACE, "deployment", workload.name, f"{workload.name}-1"),
                    log_level="warning",
                    name=workload.name,
                )
            self.prometheus = start_prometheus(self._prometheus_config(), self.tmp)
            self._wait_scraped()
        except BaseException:
            self.close()
            raise

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    def _wait_scraped(self, timeout: float = 30) -> None:
        """Until Prometheus has scraped every proxy: traffic before that would be missed (a series'
        first sample is where `increase()` starts counting)."""
        client = PrometheusClient(url=self.prometheus_url, timeout=5.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(client.query('up{job="mesh-proxy"} == 1')) == len(self.proxies):
                return
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus did not scrape all {len(self.proxies)} proxies in {timeout}s")

    def _start_app(self, workload: Workload) -> http.server.ThreadingHTTPServer:
        mesh = self

        class App(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hops = int(self.headers.get(HOPS_HEADER, "0"))
                with workload.lock:
                    workload.served += 1
                    own_failure = workload.fail_every > 0 and workload.served % workload.fail_every == 0
                callee_failed = False
                if hops < MAX_HOPS:
                    for callee in workload.calls:
                        callee_failed |= mesh.call(workload.name, callee, hops + 1) >= 500
                status = 500 if own_failure or callee_failed else 200
                if status == 500:
                    with workload.lock:
                        workload.failed += 1
                self.send_response(status)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n" if status == 200 else b"no\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
        server.daemon_threads = True
        self.servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def call(self, caller: str, callee: str, hops: int) -> int:
        """One request from `caller`'s app through its proxy to `callee`'s proxy; the status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxies[caller].outbound, timeout=10)
        try:
            target = f"http://127.0.0.1:{self.proxies[callee].inbound}/"
            conn.request("GET", target, headers={HOPS_HEADER: str(hops)})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def drive(self, entry: str, *, requests: int, seconds: float) -> int:
        """An unmeshed client calling `entry`'s proxy: `requests` requests over about `seconds`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxies[entry].inbound, timeout=10)
        start = time.monotonic()
        sent = 0
        for i in itertools.count(1):
            if i > requests or time.monotonic() - start > seconds * 2:
                break
            conn.request("GET", "/")
            conn.getresponse().read()
            sent += 1
            time.sleep(max(0.0, start + i * seconds / requests - time.monotonic()))
        conn.close()
        return sent

    def _prometheus_config(self) -> dict[str, object]:
        targets = [
            {
                "targets": [f"127.0.0.1:{proxy.admin}"],
                "labels": {"namespace": NAMESPACE, "pod": f"{name}-1", "deployment": name},
            }
            for name, proxy in self.proxies.items()
        ]
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "mesh-proxy", "static_configs": targets}],
        }

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        for server in self.servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)
