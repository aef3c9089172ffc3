"""Run the real webhook (gunicorn, gevent workers, TLS with a test CA) for tests; talk HTTPS to it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubectl_mesh.demo.ports import free_ports
from kubectl_mesh.install.certs import generate_webhook_certs

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
    def __init__(self, workdir: Path, workers: int = 2, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.tls_dir = workdir / "tls"
        self.ca_file = write_certs(self.tls_dir)
        (self.port,) = free_ports(1)
        self.log_path = workdir / "gunicorn.log"
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            MESH_TLS_CERT=str(self.tls_dir / "tls.crt"),
            MESH_TLS_KEY=str(self.tls_dir / "tls.key"),
            MESH_WEBHOOK_BIND=f"127.0.0.1:{self.port}",
            MESH_WEBHOOK_WORKERS=str(workers),
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        )
        if config is not None:
            path = workdir / "mesh-config.json"
            path.write_text(json.dumps(config))
            self.env["MESH_CONFIG"] = str(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> WebhookServer:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [GUNICORN, "-c", "python:webhook.gunicorn_conf", "webhook.wsgi:app"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"webhook not healthy after {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

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

    def mutate(self, review: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, _, body = self.request(
            "POST", "/mutate", json.dumps(review).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(body)

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        pids = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid:
                    pids.add(int(entry.name))
        return pids
