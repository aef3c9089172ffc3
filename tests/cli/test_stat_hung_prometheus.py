"""`kubectl mesh stat all` against a Prometheus that accepts connections and never answers.

The Kubernetes side is the lab's real API server; the Prometheus side is a real listening socket
that accepts every connection and sends nothing (bounded: the test closes it). Oracle: the wall
time of the real CLI, its one-line error, and how many queries reached the socket (one wave of
at most 16 concurrent ones, not 48 in three waves as before).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.pytest_plugin import Lab

pytestmark = [pytest.mark.lab]

VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 2.0


class HungServer:
    """Accepts connections and holds them open, silent, until closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_stat_all_fails_fast_when_prometheus_hangs(lab: Lab) -> None:
    server = HungServer()
    try:
        start = time.monotonic()
        done = subprocess.run(
            [str(VENV_BIN / "kubectl-mesh"), "stat", "all", "-n", "default",
             "--kubeconfig", str(lab.kubeconfig), "--prometheus-url", f"http://127.0.0.1:{server.port}",
             "--request-timeout", f"{TIMEOUT_S:g}s"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - start
        asked = len(server.accepted)
    finally:
        server.close()
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        f"error: Prometheus at http://127.0.0.1:{server.port} did not answer within {TIMEOUT_S:g}s"
    ), done.stderr
    assert len(done.stderr.splitlines()) == 2 and done.stderr.splitlines()[1].startswith("hint: ")
    assert elapsed < 2 * TIMEOUT_S, f"{elapsed:.1f}s"  # one timeout (and the start-up), not three waves
    assert 1 <= asked <= 16, asked


def test_request_timeout_is_checked() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), "stat", "deploy", "--request-timeout", "soon"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        1,
        'error: --request-timeout "soon" is not a duration above zero; use e.g. 5s, 1m\n',
    )
