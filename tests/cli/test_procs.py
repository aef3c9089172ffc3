"""kubectl_mesh.procs: start, wait until ready, the log's tail on failure, stop by process group."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from kubectl_mesh.procs import StartError, Supervisor, free_ports, http_ok, spawn, start_prometheus

SERVE = "import http.server, sys; http.server.test(http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind='127.0.0.1')"  # noqa: E501


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_ready_by_port_url_and_predicate(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    proc = spawn("server", [sys.executable, "-c", SERVE, str(port)], tmp_path / "server.log", cwd=tmp_path)
    try:
        proc.wait_ready(port, timeout=20)
        proc.wait_ready(f"http://127.0.0.1:{port}/", timeout=5)
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/"), timeout=5)
        assert os.getpgid(proc.pid) == proc.pid, "its own process group"
    finally:
        assert proc.stop(grace=5) is not None
    assert not proc.alive()


def test_a_child_that_dies_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-c",
        "import sys; print('line one'); print('bad flag', file=sys.stderr); sys.exit(3)",
    ]
    proc = spawn("broken", argv, tmp_path / "broken.log")
    with pytest.raises(
        StartError, match=r"broken exited with code 3 while starting:\n    line one\n    bad flag"
    ):
        proc.wait_ready(1, timeout=20)


def test_not_ready_in_time_names_the_deadline(tmp_path: Path) -> None:
    proc = spawn(
        "sleeper", [sys.executable, "-c", "print('waiting'); import time; time.sleep(60)"], tmp_path / "s.log"
    )
    try:
        with pytest.raises(StartError, match=r"sleeper was not ready after 0.5s"):
            proc.wait_ready(lambda: False, timeout=0.5)
    finally:
        proc.stop(grace=1)


def test_stop_reaches_what_the_child_forked_and_kills_after_the_grace(tmp_path: Path) -> None:
    # The child ignores SIGTERM and forks a grandchild that does too: both must go.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = spawn("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    proc.wait_ready(lambda: proc.log().strip().isdigit(), timeout=20)
    grandchild = int(proc.log().strip())
    started = time.monotonic()
    assert proc.stop(grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_supervisor_logs_per_child_and_stops_all(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    a = supervisor.start(
        "web's proxy", [sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(60)"]
    )
    b = supervisor.start(
        "b", [sys.executable, "-c", "import sys; sys.exit(0)"], env={"PATH": os.environ["PATH"]}
    )
    b.popen.wait(10)
    assert supervisor.first_dead() is b
    supervisor.wait_ready(a, lambda: "hi" in a.log(), timeout=20)
    assert (tmp_path / "web-proxy.log").read_text() == "hi\n"
    supervisor.stop_all(grace=2)
    assert not a.alive() and supervisor.children == []


def test_a_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(StartError, match="cannot start nothing"):
        spawn("nothing", [str(tmp_path / "no-such-binary")], tmp_path / "x.log")
    with pytest.raises(StartError, match="no-such-prometheus not found"):
        start_prometheus({}, tmp_path, binary=str(tmp_path / "no-such-prometheus"))


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs prometheus (apt-get install prometheus)"
)
def test_start_prometheus_serves_its_config(tmp_path: Path) -> None:
    config = {"global": {"scrape_interval": "7s"}, "scrape_configs": []}
    prometheus = start_prometheus(config, tmp_path / "prom")
    try:
        assert http_ok(f"{prometheus.url}/-/ready")
        assert http_ok(f"{prometheus.url}/api/v1/status/config")
        assert (tmp_path / "prom" / "prometheus.yml").exists()
    finally:
        assert prometheus.stop() == 0
