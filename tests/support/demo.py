"""Running `kubectl mesh demo` from a test: as an unprivileged user when the test runs as root (the
demo promises to need none), and checking that a run left nothing behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lab.runtime import is_root

KUBECTL_MESH = str(Path(sys.executable).parent / "kubectl-mesh")
NOBODY = 65534


def as_user() -> list[str]:
    """Drop root, to show that the demo needs none (as the user of a fresh machine would run it)."""
    if not is_root():
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def demo_argv(*args: str, record: Path | None = None) -> list[str]:
    """`kubectl-mesh demo ARGS [--record FILE]`, as that user."""
    argv = [*as_user(), KUBECTL_MESH, "demo", *args]
    if record is not None:
        argv += ["--record", str(record)]
    return argv


def processes_of_run(workdir: str) -> list[str]:
    """Every live process started by the demo run whose work directory was `workdir`."""
    marker = f"MESH_DEMO_RUN={workdir}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") or workdir.encode() in cmdline:
            args = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {args}")
    return found


def assert_nothing_left(workdir: str) -> None:
    deadline = time.monotonic() + 5  # children SIGKILLed by the demo may take a moment to vanish
    while processes_of_run(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of_run(workdir) == [], "the demo left processes behind"
    assert not Path(workdir).exists(), "the demo left its work directory behind"
