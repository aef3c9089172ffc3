"""Start the demo's processes and make sure every one of them stops, whatever happens.

Each child runs in its own process group (so a terminal's Ctrl-C reaches only the demo, which
then stops them in order), writes its output to a log file in the demo's work directory, and on
Linux gets PR_SET_PDEATHSIG, so that even a `kill -9` of the demo takes its children down.
`stop_all()` sends SIGTERM to each group, waits briefly, then SIGKILLs what is left; it is
idempotent and registered with atexit by the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class StartError(RuntimeError):
    """A process did not start or did not become ready; the message says which and why."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])


class Supervisor:
    """The demo's process table."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: tuple[str, ...] | list[str], env: dict[str, str]) -> Child:
        log_path = self.log_dir / (name.replace("'s ", "-").replace(" ", "-") + ".log")
        log: IO[bytes] = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
        except OSError as exc:
            raise StartError(f"cannot start {name}: {exc.strerror or exc}") from None
        finally:
            log.close()
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail early, with the log's tail, if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not child.alive():
                raise StartError(
                    f"{child.name} exited with code {child.popen.returncode} while starting:\n"
                    f"{child.log_tail()}"
                )
            if http_ok(url):
                return
            if time.monotonic() > deadline:
                raise StartError(f"{child.name} was not ready after {timeout:.0f}s:\n{child.log_tail()}")
            time.sleep(0.05)

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM every child's group, then SIGKILL after `grace` seconds; reap them all."""
        for child in reversed(self.children):
            _signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            _signal_group(child.popen, signal.SIGKILL)  # the group: nothing a child forked survives
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=2)
        self.children.clear()


def _signal_group(popen: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signum)  # pgid == pid: process_group=0


def http_ok(url: str, timeout: float = 1.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def install_signal_handlers(on_signal: Callable[[int], None]) -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP all end the demo the same way.

    SIGINT is set explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    keeps ignoring it, so `kill -INT` would otherwise leave the demo running.
    """

    def handler(signum: int, _frame: object) -> None:
        on_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)
