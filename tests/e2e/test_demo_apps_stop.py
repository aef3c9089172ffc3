"""The demo's apps (emojivoto's services, the topologies' app) end the one way of
kubectl_mesh/demo/lifecycle.py: SIGTERM or SIGINT, then their servers close and they exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubectl_mesh.demo.lifecycle import wait_then_shutdown
from kubectl_mesh.procs import free_ports, port_open, spawn
from lab.runtime import runtime_env

APPS = {
    "topoapp serve": ("kubectl_mesh.demo.topoapp", "serve"),
    "topoapp client": ("kubectl_mesh.demo.topoapp", "client"),
    "emojivoto emoji": ("kubectl_mesh.demo.emojivoto", "emoji"),
    "emojivoto voting": ("kubectl_mesh.demo.emojivoto", "voting"),
    "emojivoto web": ("kubectl_mesh.demo.emojivoto", "web"),
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("app", list(APPS))
def test_an_app_stops_on_a_signal_closes_its_ports_and_exits_0(
    app: str, signum: signal.Signals, tmp_path: Path
) -> None:
    module, role = APPS[app]
    port, counters, nowhere = free_ports(3)
    env = runtime_env(PYTHONFAULTHANDLER="1",
        BIND="127.0.0.1", PORT=str(port), COUNTERS_PORT=str(counters), REQUEST_RATE="5",
        CALLS=f"next=127.0.0.1:{nowhere}", EMOJISVC_HOST=f"127.0.0.1:{nowhere}",
        VOTINGSVC_HOST=f"127.0.0.1:{nowhere}",
    )  # fmt: skip
    proc = spawn(app, [sys.executable, "-m", module, role], tmp_path / "app.log", env=env)
    try:
        listening = [counters] if role == "client" else [counters, port]
        proc.wait_ready(lambda: all(port_open(p) for p in listening), timeout=20)
        proc.signal(signum)
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # where it hangs: faulthandler's stacks, in the log
            proc.signal(signal.SIGABRT)
            proc.popen.wait(5)
            raise AssertionError(f"{app} ignored {signum.name}:\n{proc.log_tail(40)}") from None
        assert proc.popen.returncode == 0, proc.log_tail(20)
        assert not any(port_open(p) for p in listening)
    finally:
        proc.stop()


def test_wait_then_shutdown_runs_before_first_then_closes_every_server() -> None:
    """emojivoto's gRPC servers stop (with their grace) before its HTTP servers do."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = [s.server_address[1] for s in servers]
    stop, order = threading.Event(), []

    def before() -> None:
        order.append(("before", all(port_open(p) for p in ports)))

    threading.Timer(0.2, stop.set).start()
    assert wait_then_shutdown(stop, servers, before=before) == 0
    assert order == [("before", True)]  # the servers were still up when it ran
    assert not any(port_open(p) for p in ports)
