"""Two "pods" as network namespaces joined by a veth pair, each with the real init rules and proxy.

Test subnet 10.250.7.0/24 (not the lab's 10.244/16). Everything made here is removed in
`close()`, which the fixture calls even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kubectl_mesh.contract import PROXY_ADMIN_PORT, PROXY_UID
from kubectl_mesh.procs import Proc, spawn
from lab.runtime import runtime_env

SUBNET = "10.250.7"
HERE = Path(__file__).resolve().parent


def _run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Pod:
    netns: str
    ip: str
    identity: tuple[str, str, str, str]
    log_dir: Path
    processes: list[Proc] = field(default_factory=list)
    proxy: Proc | None = None

    def exec(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True, text=True, check=check, timeout=timeout, env=runtime_env(),
        )  # fmt: skip

    def spawn(self, name: str, *argv: str, as_proxy_uid: bool = False) -> Proc:
        prefix = ["ip", "netns", "exec", self.netns]
        if as_proxy_uid:
            prefix += ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"]
        log_path = self.log_dir / f"{self.netns}-{name}.log"
        process = spawn(f"{name} in {self.netns}", [*prefix, *argv], log_path, env=runtime_env(), cwd="/")
        self.processes.append(process)
        return process

    def init(self) -> str:
        """Run the real init step; returns the nat table afterwards."""
        self.exec(sys.executable, "-m", "proxy", "init")
        return self.exec("iptables-save", "-t", "nat").stdout

    def start_proxy(self, *extra: str) -> None:
        """Start `mesh-proxy run` as the proxy's UID; `extra` flags are appended (e.g. timeouts)."""
        ns, kind, name, pod = self.identity
        self.proxy = self.spawn(
            "proxy", sys.executable, "-m", "proxy", "run", "--namespace", ns, "--workload-kind", kind,
            "--workload-name", name, "--pod", pod, "--log-level", "debug", *extra, as_proxy_uid=True,
        )  # fmt: skip
        self.proxy.wait_ready(lambda: self.admin("/ready", check=False).returncode == 0, timeout=20, tail=40)

    def admin(self, path: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.exec(
            "curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{PROXY_ADMIN_PORT}{path}", check=check
        )

    def samples(self, name: str) -> list[dict[str, str]]:
        text = self.admin("/metrics").stdout
        out = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name:
                    out.append({**s.labels, "__value__": str(float(s.value))})
        return out

    def log(self, name: str) -> str:
        path = self.log_dir / f"{self.netns}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class PodPair:
    def __init__(self, log_dir: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.client = Pod(f"mt-cli-{tag}", f"{SUBNET}.1", ("front", "deployment", "vote", "vote-1"), log_dir)
        self.server = Pod(f"mt-srv-{tag}", f"{SUBNET}.2", ("shop", "deployment", "web", "web-1"), log_dir)
        self._veth = (f"mtc{tag}", f"mts{tag}")

    def create(self) -> None:
        a, b = self._veth
        for pod in (self.client, self.server):
            _run("ip", "netns", "add", pod.netns)
            _run("ip", "-n", pod.netns, "link", "set", "lo", "up")
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for pod, dev in ((self.client, a), (self.server, b)):
            _run("ip", "link", "set", dev, "netns", pod.netns)
            _run("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", dev)
            _run("ip", "-n", pod.netns, "link", "set", dev, "up")

    def close(self) -> None:
        for pod in (self.client, self.server):
            for process in pod.processes:
                process.stop()
            _run("ip", "netns", "del", pod.netns, check=False)
        _run("ip", "link", "del", self._veth[0], check=False)
