"""A real mesh of issue #14's topologies on loopback, with no Kubernetes: for `edges` and `diagnose`.

The topologies and their app are the demo's (kubectl_mesh.demo.topology, topoapp), each in its
own namespace; here every app runs in this process (a topoapp.App on a thread), each with a real
`mesh-proxy run` beside it: the proxy forwards inbound requests to the app, and the app calls
its callees through the proxy's outbound listener (explicit mode, as the demo). The test's driver
calls a topology's entry proxy directly, as an unmeshed client. A real Prometheus scrapes every
proxy each second, with the labels the mesh's relabelling gives pods. Every load loop is
bounded in count and time.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubectl_mesh.demo.topoapp import App, serve
from kubectl_mesh.demo.topology import ENTRY, Topology
from kubectl_mesh.procs import Prometheus, start_prometheus
from kubectl_mesh.prom import PrometheusClient
from tests.support.proxy_process import ProxyProcess, start_proxy

Key = tuple[str, str]  # (namespace: the topology's name, workload)


class GraphMesh:
    def __init__(self, topologies: Iterable[Topology]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mesh-graph-test-"))
        self.topologies = {t.name: t for t in topologies}
        self.apps: dict[Key, App] = {}
        self.servers: list[ThreadingHTTPServer] = []
        self.proxies: dict[Key, ProxyProcess] = {}
        self.prometheus: Prometheus | None = None
        try:
            for t in self.topologies.values():
                for w in t.workloads:
                    self._start((t.name, w.name), w.fail_every)
            for (ns, name), app in self.apps.items():  # now that every proxy has its ports
                callees = self.topologies[ns].workload(name).calls
                app.calls = {c: f"127.0.0.1:{self.proxies[(ns, c)].inbound}" for c in callees}
            self.prometheus = start_prometheus(self._prometheus_config(), self.tmp)
            self._wait_scraped()
        except BaseException:
            self.close()
            raise

    def _start(self, key: Key, fail_every: int) -> None:
        server_app = App({}, fail_every)
        server = serve(server_app, "127.0.0.1", 0)
        self.servers.append(server)
        ns, name = key
        proxy = start_proxy(
            self.tmp,
            "--inbound-forward",
            f"127.0.0.1:{server.server_address[1]}",
            identity=(ns, "deployment", name, f"{name}-1"),
            log_level="warning",
            name=f"{ns}-{name}",
        )
        self.proxies[key] = proxy
        # The app reaches its callees through its own proxy, as `http_proxy` does in the demo.
        handler = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy.outbound}"})
        server_app.opener = urllib.request.build_opener(handler)
        self.apps[key] = server_app

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    def counters(self, ns: str) -> dict[str, dict[str, Any]]:
        """Each app's own counters in topology `ns`, as its /counters would answer."""
        return {name: app.counters.snapshot() for (n, name), app in self.apps.items() if n == ns}

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

    def drive(self, ns: str, *, requests: int, seconds: float) -> int:
        """An unmeshed client calling topology `ns`'s entry proxy: `requests` requests over about
        `seconds` (never longer than twice that)."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        client = App({ENTRY: f"127.0.0.1:{self.proxies[(ns, ENTRY)].inbound}"}, opener=direct, timeout=10)
        stop = threading.Event()
        timer = threading.Timer(seconds * 2, stop.set)
        timer.start()
        try:
            client.drive(requests / seconds, stop, requests)
        finally:
            timer.cancel()
        return int(client.counters.snapshot()["loops"])

    def _prometheus_config(self) -> dict[str, object]:
        targets = [
            {
                "targets": [f"127.0.0.1:{proxy.admin}"],
                "labels": {"namespace": ns, "pod": f"{name}-1", "deployment": name},
            }
            for (ns, name), proxy in self.proxies.items()
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
