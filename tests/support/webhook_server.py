"""The real webhook (gunicorn, gevent workers, TLS with a test CA) as a process; HTTPS to it.

The one webhook harness of the tests and `bench/bench_webhook.py`, on `kubectl_mesh.procs`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubectl_mesh.install.certs import generate_webhook_certs
from kubectl_mesh.procs import Proc, free_ports, spawn

REPO = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
SERVER_NAME = "mesh-webhook.mesh-system.svc"


def write_certs(directory: Path) -> Path:
    """A fresh CA and serving pair in `directory` (tls.crt, tls.key, ca.crt); returns the CA path."""
    bundle = generate_webhook_certs(extra_dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("tls.crt", bundle.cert_pem),
        ("tls.key", bundle.key_pem),
        ("ca.crt", bundle.ca_cert_pem),
    ):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)  # atomic, like a Secret volume update
    return directory / "ca.crt"


class WebhookServer:
    """gunicorn serving `app` (the webhook by default) on a free port with a fresh test CA, and its
    metrics on another (`metrics_port`, plain HTTP).

    `workers` and `worker_class` set MESH_WEBHOOK_WORKERS / MESH_WEBHOOK_WORKER_CLASS (None: the
    shipped defaults); `config` is written as the MESH_CONFIG file; `pythonpath` is put before the
    inherited PYTHONPATH (for another `app` module); `python` runs gunicorn (`python -m gunicorn`)
    from another environment than this one (e.g. one of tests/support/image_env.py's venvs).
    """

    def __init__(
        self,
        workdir: Path,
        workers: int | None = 2,
        config: dict[str, Any] | None = None,
        *,
        worker_class: str | None = None,
        log_level: str | None = None,
        app: str = "webhook.wsgi:app",
        pythonpath: Sequence[Path] = (),
        python: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.tls_dir = workdir / "tls"
        self.ca_file = write_certs(self.tls_dir)
        self.port, self.metrics_port = free_ports(2)
        self.log_path = workdir / "gunicorn.log"
        self.app = app
        self.gunicorn = [str(python), "-m", "gunicorn"] if python is not None else [GUNICORN]
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            MESH_TLS_CERT=str(self.tls_dir / "tls.crt"),
            MESH_TLS_KEY=str(self.tls_dir / "tls.key"),
            MESH_WEBHOOK_BIND=f"127.0.0.1:{self.port}",
            MESH_WEBHOOK_METRICS_BIND=f"127.0.0.1:{self.metrics_port}",
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        )
        if workers is not None:
            self.env["MESH_WEBHOOK_WORKERS"] = str(workers)
        if worker_class is not None:
            self.env["MESH_WEBHOOK_WORKER_CLASS"] = worker_class
        if log_level is not None:
            self.env["MESH_WEBHOOK_LOG_LEVEL"] = log_level
        if pythonpath:
            paths = [*map(str, pythonpath), self.env.get("PYTHONPATH", "")]
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        if config is not None:
            path = workdir / "mesh-config.json"
            path.write_text(json.dumps(config))
            self.env["MESH_CONFIG"] = str(path)
        self.server: Proc | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """gunicorn's master, once started."""
        return self.server.popen if self.server is not None else None

    def start(self, timeout: float = 30.0) -> WebhookServer:
        self.server = spawn(
            "the webhook (gunicorn)",
            [*self.gunicorn, "-c", "python:webhook.gunicorn_conf", self.app],
            self.log_path,
            env=self.env,
            cwd=REPO,
        )

        def healthy() -> bool:
            try:
                return self.request("GET", "/healthz")[0] == 200
            except http.client.HTTPException:
                return False

        try:
            self.server.wait_ready(healthy, timeout, tail=40)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=15)

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_context(self, ca_file: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca_file or self.ca_file))

    def connect(
        self, ca_file: Path | None = None, timeout: float = 10.0, context: ssl.SSLContext | None = None
    ) -> http.client.HTTPSConnection:
        ctx = context or self.client_context(ca_file)
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPSConnection | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        own = conn is None
        c = conn or self.connect()
        try:
            c.request(method, path, body=body, headers=headers or {})
            resp = c.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            if own:
                c.close()

    def metrics_request(
        self, method: str = "GET", path: str = "/metrics"
    ) -> tuple[int, dict[str, str], bytes]:
        """A plain-HTTP request to the metrics port (no TLS there)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def mutate(self, review: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, _, body = self.request(
            "POST", "/mutate", json.dumps(review).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(body)

    def worker_pids(self) -> set[int]:
        """The gunicorn workers (children of the master)."""
        assert self.server is not None
        pids = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.server.pid:
                    pids.add(int(entry.name))
        return pids

    def cpu_seconds(self) -> float:
        """user+system CPU of the master and its workers so far."""
        assert self.server is not None
        total = 0
        for pid in [self.server.pid, *self.worker_pids()]:
            try:
                fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / os.sysconf("SC_CLK_TCK")
