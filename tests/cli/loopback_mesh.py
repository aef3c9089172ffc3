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
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_mesh.demo.ports import free_ports

REPO = Path(__file__).resolve().parents[2]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.1)


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
class Proxy:
    namespace: str
    kind: str
    name: str
    pod: str
    inbound: int
    outbound: int
    admin: int
    process: subprocess.Popen[bytes] | None = None


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
        ports = free_ports(7)
        self.server = Proxy("back", "deployment", "voting", "voting-1", *ports[0:3])
        self.client = Proxy("front", "deployment", "web", "web-1", *ports[3:6])
        self.prom_port = ports[6]
        self.prometheus: subprocess.Popen[bytes] | None = None
        self.scrape_interval = scrape_interval
        try:
            for proxy in (self.server, self.client):
                self._start_proxy(proxy)
            self._start_prometheus()
        except BaseException:
            self.close()
            raise

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def _start_proxy(self, p: Proxy) -> None:
        cmd = [
            sys.executable, "-m", "proxy", "run",
            "--inbound-addr", "127.0.0.1", "--inbound-port", str(p.inbound),
            "--outbound-port", str(p.outbound),
            "--admin-addr", "127.0.0.1", "--admin-port", str(p.admin),
            "--namespace", p.namespace, "--workload-kind", p.kind, "--workload-name", p.name, "--pod", p.pod,
            "--inbound-forward", f"127.0.0.1:{self.app_port}",
            "--log-level", "warning",
        ]  # fmt: skip
        log = open(self.tmp / f"{p.pod}.log", "wb")  # noqa: SIM115 - closed with the process
        p.process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{p.admin}/ready")

    def _start_prometheus(self) -> None:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            raise RuntimeError("prometheus is not installed: apt-get install -y prometheus")
        targets = [
            {
                "targets": [f"127.0.0.1:{p.admin}"],
                "labels": {"namespace": p.namespace, "pod": p.pod, p.kind: p.name},
            }
            for p in (self.server, self.client)
        ]
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": "mesh-proxy", "static_configs": targets}],
        }
        (self.tmp / "prometheus.yml").write_text(json.dumps(config))
        log = open(self.tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        self.prometheus = subprocess.Popen(
            [
                prometheus,
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.prometheus_url}/-/ready", timeout=30)

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
        for proc in (self.prometheus, self.server.process, self.client.process):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.app.shutdown()
        self.app.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)
