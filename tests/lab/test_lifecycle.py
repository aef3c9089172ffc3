"""`make cluster` / `make cluster-down` as a user runs them, and nothing left behind afterwards,
even when the node agent crashed with pods running (their processes are found by namespace).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import cluster, network
from lab.config import CHAIN_PREFIX, KUBECONFIG, PREFIX, REPO, RUN_DIR, SERVICE_CIDR, State, alive

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.lab_lifecycle]
MOUNT = "/mesh-lab-lifecycle-mount"  # a mount target the node must create on the host, then remove


def lab_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc, time.monotonic() - t0


def kubectl(*args: str, input: str | None = None) -> str:
    env = dict(os.environ, KUBECONFIG=str(KUBECONFIG))
    return subprocess.run(
        ["/usr/bin/kubectl", *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout


def leftovers() -> list[str]:
    """Everything of a lab still on the machine, described in one line each."""
    found = [f"netns {ns}" for ns in network.lab_netns()]
    found += [f"link {link}" for link in network.lab_links()]
    for table in ("filter", "nat"):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True
        ).stdout
        found += [f"iptables -t {table} {line}" for line in rules.splitlines() if CHAIN_PREFIX in line]
    routes = subprocess.run(["ip", "route", "show", str(SERVICE_CIDR)], capture_output=True, text=True).stdout
    found += [f"route {line}" for line in routes.splitlines()]
    found += [f"dir {p}" for p in Path("/etc/netns").glob(f"{PREFIX}-*")]
    if RUN_DIR.exists():
        found.append(f"dir {RUN_DIR}")
    return found


def test_down_removes_everything_even_after_the_node_agent_crashed() -> None:
    if cluster.running():
        pytest.skip("a lab is already running (make cluster, or another session): not stopping it")
    ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()

    up, up_seconds = lab_cli("up")
    try:
        assert up.returncode == 0, up.stderr
        kubectl("get", "ns", "default")
        state = State.load()
        assert state is not None and all(alive(p) for p in state.procs)
        pod = (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper}\nspec:\n  containers:\n"
            "  - {name: s, image: python, command: [python3, -m, http.server, '8080'],\n"
            f"     volumeMounts: [{{name: v, mountPath: {MOUNT}}}]}}\n"
            "  volumes: [{name: v, emptyDir: {}}]\n"
        )
        kubectl("apply", "-f", "-", input=pod)
        kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
        uid = json.loads(kubectl("get", "pod", "sleeper", "-o", "json"))["metadata"]["uid"]
        pod_pids = network.netns_pids(f"{PREFIX}-{uid.replace('-', '')[:10]}")
        assert pod_pids and Path(MOUNT).is_dir()
        agent = next(p for p in state.procs if p.name == "node-agent")
        os.kill(agent.pid, signal.SIGKILL)  # a crash: nobody stops the pod
    finally:
        down, down_seconds = lab_cli("down")
    print(f"\nlab up {up_seconds:.1f}s, lab down {down_seconds:.1f}s (CLI, incl. interpreter start)")
    assert down.returncode == 0, down.stderr
    assert not [p for p in state.procs if alive(p)], "control-plane processes still running"
    assert not [pid for pid in pod_pids if network.running(pid)], "pod processes still running"
    assert not leftovers(), leftovers()
    assert not [d for d in state.temp_dirs if Path(d).exists()]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == ip_forward
    assert not KUBECONFIG.exists()
    assert not Path(MOUNT).exists(), "mount targets the node created are removed"
