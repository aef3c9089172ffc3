"""Start `mesh-proxy run` as a real process and read its metrics the way Prometheus would."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.runtime import runtime_env

from kubectl_mesh.demo.ports import free_ports

SERVER_ID = ("shop", "deployment", "web", "web-7d9f-abcde")  # the app's sidecar in the fixtures
CLIENT_ID = ("front", "deployment", "vote", "vote-5c4b-xyz12")  # a client's sidecar


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    inbound: int
    outbound: int
    admin: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.inbound}{path}"

    def admin_get(self, path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def exposition(self) -> str:
        status, body, _ = self.admin_get("/metrics")
        assert status == 200
        return body.decode()

    def samples(self, name: str) -> list[Sample]:
        out = []
        for family in text_string_to_metric_families(self.exposition()):
            for s in family.samples:
                if s.name == name:
                    out.append(Sample(s.name, dict(s.labels), s.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        wanted = labels.items()
        return sum(s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in wanted))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fd_count(self) -> int:
        """Open file descriptors of the proxy process."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_proxy(
    tmp: Path,
    *args: str,
    identity: tuple[str, str, str, str] | None = None,
    rlimit_nofile: int | None = None,
) -> ProxyProcess:
    """Run `python -m proxy run` on free loopback ports; returns once /ready says 200.

    `rlimit_nofile` caps the proxy's descriptors (soft and hard), as a container's limit would.
    """
    inbound, outbound, admin = free_ports(3)
    argv = [
        sys.executable, "-m", "proxy", "run",
        "--inbound-addr", "127.0.0.1", "--inbound-port", str(inbound),
        "--outbound-addr", "127.0.0.1", "--outbound-port", str(outbound),
        "--admin-addr", "127.0.0.1", "--admin-port", str(admin),
        "--log-level", "debug",
        *args,
    ]  # fmt: skip
    if identity:
        ns, kind, name, pod = identity
        argv += ["--namespace", ns, "--workload-kind", kind, "--workload-name", name, "--pod", pod]
    log_path = tmp / f"proxy-{inbound}.log"
    # The code under test on PYTHONPATH, and no MESH_* setting of the caller's leaking in.
    child_env = {k: v for k, v in runtime_env().items() if not k.startswith("MESH_")}

    def limit_fds() -> None:  # runs in the child, before exec
        if rlimit_nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))

    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        env=child_env,
        preexec_fn=limit_fds if rlimit_nofile is not None else None,
    )
    proxy = ProxyProcess(process, inbound, outbound, admin, log_path, argv)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited {process.returncode}: {proxy.log()}")
        try:
            if proxy.admin_get("/ready")[0] == 200:
                return proxy
        except OSError:
            pass
        time.sleep(0.05)
    proxy.stop()
    raise AssertionError(f"proxy not ready in 20 s: {proxy.log()}")


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes to a port, return everything read until the peer closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                piece = s.recv(65536)
                if not piece:
                    break
                chunks.append(piece)
                if not read_until_close:
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)
