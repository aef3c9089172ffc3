"""The proxy as a process: admin endpoints, SIGTERM drain, command-line errors, import cost."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubectl_mesh.procs import free_ports
from lab.runtime import runtime_env
from tests.proxy.proxy_backends import AppServer
from tests.support.proxy_process import ProxyProcess, start_proxy


def test_admin_endpoints(server_proxy: ProxyProcess) -> None:
    assert server_proxy.admin_get("/live")[0] == 200
    assert server_proxy.admin_get("/ready")[0] == 200
    assert server_proxy.admin_get("/nope")[0] == 404
    status, body, ctype = server_proxy.admin_get("/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = body.decode()
    for needed in (
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "# TYPE request_total counter",
    ):
        assert needed in text


def test_sigterm_finishes_in_flight_request_then_exits_zero(app: AppServer, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", "--shutdown-grace", "10")
    idle = http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=10)
    idle.request("GET", "/status?code=200")
    idle.getresponse().read()  # an idle keep-alive client must not hold up the exit
    result: dict[str, object] = {}

    def slow_call() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=10)
        conn.request("GET", "/slow?s=1.5")
        r = conn.getresponse()
        result["status"], result["body"] = r.status, r.read()
        result["connection"] = r.headers.get("Connection")

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)
    start = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert proxy.admin_get("/ready")[0] == 503, "a draining proxy is not ready (no new traffic)"
    rc = proxy.process.wait(15)
    caller.join(5)
    assert rc == 0
    assert result == {"status": 200, "body": b"slow\n", "connection": "close"}
    assert time.monotonic() - start < 8
    try:
        http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=2).request("GET", "/")
        raise AssertionError("listener still accepting after drain")
    except OSError:
        pass
    assert "event=draining" in proxy.log() and "drained=True" in proxy.log()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, env=runtime_env(), timeout=30
    )


def test_bad_arguments_give_one_line_and_nonzero_exit() -> None:
    for args in (["run", "--namespace", "only-this"], ["run", "--opaque-ports", "x"], ["bogus"]):
        result = _run_cli(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_init_errors_are_one_line_with_the_command_and_exit_codes() -> None:
    """`mesh-proxy init`'s errors go through the same MeshError path as `run`'s: 2 for a bad flag,
    1 (and a hint) when iptables cannot be run; never a traceback."""
    for args, line in (
        (["init", "--proxy-uid", "-1", "--dry-run"], "mesh-proxy init: --proxy-uid must be a UID"),
        (["init", "--subnets-to-ignore", "nope", "--dry-run"], "mesh-proxy init: --subnets-to-ignore: "),
        (
            ["init", "--inbound-ports-to-ignore", "80-", "--dry-run"],
            "mesh-proxy init: --inbound-ports-to-ignore: ",
        ),
    ):
        result = _run_cli(*args)
        assert (result.returncode, result.stdout) == (2, ""), args
        assert result.stderr.startswith(line) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    env = runtime_env(PATH="/nonexistent")  # no iptables on PATH: the apply step cannot run
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "init"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "mesh-proxy init: iptables is not installed",
        "hint: apt-get install -y iptables",
    ]


def test_port_in_use_is_a_clear_error() -> None:
    (port,) = free_ports(1)
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = _run_cli(
            "run", "--admin-addr", "127.0.0.1", "--admin-port", "0", "--inbound-port", str(port),
            "--inbound-addr", "127.0.0.1", "--outbound-port", "0",
        )  # fmt: skip
    assert result.returncode == 1
    assert "bind_failed" in result.stderr and "Traceback" not in result.stderr


def test_init_dry_run_prints_rules() -> None:
    result = _run_cli("init", "--dry-run", "--inbound-ports-to-ignore", "22")
    assert result.returncode == 0
    assert "REDIRECT --to-ports 4143" in result.stdout and "--uid-owner 2102" in result.stdout


def test_importing_the_entry_point_is_cheap() -> None:
    heavy = ("gevent", "prometheus_client", "httptools")
    code = f"import sys, proxy.__main__; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=runtime_env())
    assert result.stdout.strip() == "[]", result.stderr
