"""`mesh-proxy run` as a real process on free loopback ports, its metrics read as Prometheus would.

The one proxy harness of the tests and `bench/bench_proxy.py`, on `kubectl_mesh.procs`.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kubectl_mesh.procs import Proc, free_ports, spawn
from lab.runtime import runtime_env

SERVER_ID = ("shop", "deployment", "web", "web-7d9f-abcde")  # the app's sidecar in the fixtures
CLIENT_ID = ("front", "deployment", "vote", "vote-5c4b-xyz12")  # a client's sidecar


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class ProxyProcess:
    proc: Proc
    inbound: int
    outbound: int
    admin: int
    tap: int  # its tap listener (127.0.0.1)
    args: list[str] = field(default_factory=list)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.proc.popen

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

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

    def h2_open_streams(self) -> dict[str, int]:
        """`h2_open_streams` now, by series: "inbound_src", "inbound_dst", "outbound_src", "outbound_dst"."""
        return {
            f"{s.labels['direction']}_{s.labels['peer']}": int(s.value)
            for s in self.samples("h2_open_streams")
        }

    def assert_h2_open_streams(self, seconds: float = 10.0, **want: int) -> None:
        """Polls until `h2_open_streams` reads exactly `want` (the series not named: 0), then reads
        it again 0.2 s later: still so (no stream counted in or out late). Raises with the last
        reading after `seconds`. The direct oracle of "no stream leaked" (`()`: all 0)."""
        expected = {f"{d}_{p}": 0 for d in ("inbound", "outbound") for p in ("src", "dst")} | want
        deadline = time.monotonic() + seconds
        while (got := self.h2_open_streams()) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        if got == expected:
            time.sleep(0.2)
            got = self.h2_open_streams()
        assert got == expected, f"h2_open_streams {got}, wanted {expected}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fd_count(self) -> int:
        """Open file descriptors of the proxy process."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log(self) -> str:
        return self.proc.log()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (the proxy drains), SIGKILL after `timeout` seconds; the exit code."""
        return self.proc.stop(grace=timeout)


def start_proxy(
    tmp: Path,
    *args: str,
    identity: tuple[str, str, str, str] | None = None,
    rlimit_nofile: int | None = None,
    log_level: str = "debug",
    launcher: Sequence[str] = ("-m", "proxy"),
    name: str = "proxy",
    timeout: float = 20,
    python: str | Path = sys.executable,
    env: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """Run `python -m proxy run` on free loopback ports; returns once /ready says 200.

    `rlimit_nofile` caps the proxy's descriptors (soft and hard), as a container's limit would.
    `launcher` replaces `-m proxy` (e.g. `-c <script>` that runs the proxy under a profiler);
    `python` is the interpreter (e.g. one of tests/support/image_env.py's venvs).
    The log is `tmp/<name>-<inbound port>.log`. `env`: settings added to the proxy's environment.
    """
    inbound, outbound, admin, tap = free_ports(4)
    argv = [
        str(python), *launcher, "run",
        "--inbound-addr", "127.0.0.1", "--inbound-port", str(inbound),
        "--outbound-addr", "127.0.0.1", "--outbound-port", str(outbound),
        "--admin-addr", "127.0.0.1", "--admin-port", str(admin), "--tap-port", str(tap),
        "--log-level", log_level,
        *args,
    ]  # fmt: skip
    if identity:
        ns, kind, workload, pod = identity
        argv += ["--namespace", ns, "--workload-kind", kind, "--workload-name", workload, "--pod", pod]
    # The code under test on PYTHONPATH, and no MESH_* setting of the caller's leaking in.
    child_env = {k: v for k, v in runtime_env().items() if not k.startswith("MESH_")}
    child_env.update(env or {})

    def limit_fds() -> None:  # runs in the child, before exec
        assert rlimit_nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))

    proc = spawn(
        name,
        argv,
        tmp / f"{name}-{inbound}.log",
        env=child_env,
        before_exec=limit_fds if rlimit_nofile is not None else None,
    )
    try:
        proc.wait_ready(f"http://127.0.0.1:{admin}/ready", timeout, tail=40)
    except BaseException:
        proc.stop()
        raise
    return ProxyProcess(proc, inbound, outbound, admin, tap, argv)


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
