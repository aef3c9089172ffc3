"""Start child processes, wait until they serve, and stop them with everything they forked.

One harness for the demo, the tests and the benchmarks. Each child runs in its own process
group (so a terminal's Ctrl-C reaches only its parent, which stops it in order, and a stop
reaches whatever the child forked), writes its output to a log file whose tail is quoted when it
dies or is not ready in time, and on Linux gets PR_SET_PDEATHSIG, so that even a `kill -9` of
the parent takes it down. The death signal follows the *thread* that started the child: start
children from a thread that outlives them (the main thread, or a gevent greenlet).

`Supervisor` is a table of children stopped together; `spawn` starts one on its own.
`start_prometheus` runs a Prometheus on loopback with a given configuration.
Standard library only: this sits at the bottom of the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kubectl_mesh.errors import MeshError

# What "ready" means: a TCP port on 127.0.0.1 that accepts, a URL that answers 200, or a predicate.
Ready = int | str | Callable[[], bool]


class StartError(MeshError):
    """A process did not start or did not become ready; the message says which and why."""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago (the kernel's choice).

    All sockets stay bound until every port is picked, so the kernel cannot hand one out twice.
    A child that still loses a race for its port fails to start and says so.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """`url` answers 200 (asked directly, never through a proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (a child forked without exec
    calls it itself; `spawn` runs it between fork and exec)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    """One started child: its Popen, and the log file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        text = self.log().strip().splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def wait_ready(self, ready: Ready, timeout: float, tail: int = 5) -> None:
        """Poll until `ready` holds; fail early, with the log's tail, if the process exits.

        `ready` is a port on 127.0.0.1, a URL that must answer 200, or a predicate (its OSError
        counts as not ready). StartError on exit or after `timeout` seconds; the process is left
        as it is (the caller stops it, or its Supervisor does).
        """
        check = _check(ready)
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with code {self.popen.returncode} while starting:\n"
                    f"{self.log_tail(tail)}"
                )
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} was not ready after {timeout:g}s:\n{self.log_tail(tail)}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send `signum` to the child's process group (the child and all it forked)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)  # pgid == pid: process_group=0

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace` seconds; returns the child's exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self._kill()
        return self.popen.returncode

    def _kill(self) -> None:
        self.signal(signal.SIGKILL)  # the group: nothing the child forked survives
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _check(ready: Ready) -> Callable[[], bool]:
    if isinstance(ready, int):
        return lambda: port_open(ready)
    if isinstance(ready, str):
        return lambda: http_ok(ready)
    return ready


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    before_exec: Callable[[], None] | None = None,
) -> Proc:
    """Start `argv` in its own process group, output appended to `log_path`, stdin closed.

    `env` replaces the environment (None: inherit). `before_exec` runs in the child before exec,
    after the death signal is set (e.g. to set a resource limit). StartError if it cannot start.
    """

    def prepare() -> None:
        die_with_parent()
        if before_exec is not None:
            before_exec()

    log: IO[bytes] = log_path.open("ab")
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=prepare,
            close_fds=True,
        )
    except OSError as exc:
        raise StartError(f"cannot start {name}: {exc.strerror or exc}") from None
    finally:
        log.close()
    return Proc(name, popen, log_path)


class Supervisor:
    """A table of children, logging into one directory, stopped together by `stop_all()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | Path | None = None,
        before_exec: Callable[[], None] | None = None,
    ) -> Proc:
        """`spawn` with the log at `<log_dir>/<name>.log` (`web's proxy` -> `web-proxy.log`)."""
        log_path = self.log_dir / (name.replace("'s ", "-").replace(" ", "-") + ".log")
        child = spawn(name, argv, log_path, env=env, cwd=cwd, before_exec=before_exec)
        self.children.append(child)
        return child

    def wait_ready(self, child: Proc, ready: Ready, timeout: float) -> None:
        child.wait_ready(ready, timeout)

    def first_dead(self) -> Proc | None:
        return next((c for c in self.children if not c.alive()), None)

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM every child's group (last started first), SIGKILL after `grace` seconds; reap
        them all. Idempotent."""
        for child in reversed(self.children):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            child._kill()
        self.children.clear()


# --- Prometheus ---------------------------------------------------------------------------------

PROMETHEUS_INSTALL_HINT = "sudo apt-get install prometheus"


@dataclass
class Prometheus:
    """A Prometheus started by `start_prometheus`: its process and where it listens."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.proc.wait_ready(f"{self.url}/-/ready", timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        return self.proc.stop(grace)


def prometheus_argv(binary: str, directory: Path, port: int, *flags: str) -> list[str]:
    """The command line `start_prometheus` runs: config and data in `directory`, loopback only."""
    return [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *flags,
    ]


def start_prometheus(
    config: str | Mapping[str, Any],
    directory: Path,
    *,
    binary: str | None = None,
    port: int | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    supervisor: Supervisor | None = None,
    wait: float | None = 30.0,
) -> Prometheus:
    """Run Prometheus on 127.0.0.1 with `config` (YAML text, or a mapping written as JSON).

    Writes `directory/prometheus.yml`, keeps its data in `directory/prometheus-data` and logs to
    `directory/prometheus.log` (or the supervisor's directory, when given, which then stops it).
    `binary` defaults to `prometheus` on PATH; `port` to a free one. Waits up to `wait` seconds
    for /-/ready (None: return at once; call `wait_ready()` later). StartError when the binary is
    missing, it exits, or it is not ready in time.
    """
    found = shutil.which(binary or "prometheus")
    if found is None:
        raise StartError(f"{binary or 'prometheus'} not found: install it: {PROMETHEUS_INSTALL_HINT}")
    if port is None:
        (port,) = free_ports(1)
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config, indent=2) + "\n"
    (directory / "prometheus.yml").write_text(text)
    argv = prometheus_argv(found, directory, port, *flags)
    if supervisor is not None:
        proc = supervisor.start("prometheus", argv, env)
    else:
        proc = spawn("prometheus", argv, directory / "prometheus.log", env=env)
    prometheus = Prometheus(proc, port)
    if wait is not None:
        try:
            prometheus.wait_ready(wait)
        except StartError:
            if supervisor is None:
                proc.stop()
            raise
    return prometheus
