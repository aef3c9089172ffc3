"""Commands that stream until stopped (`tap`, `top`, a live demo): run one until it has printed
enough, then Ctrl-C it as a user would, and tell what it printed and how it ended."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable


def run_until_ctrl_c(
    argv: list[str],
    env: dict[str, str],
    enough: Callable[[list[str]], bool],
    seconds: float,
    grace: float = 15,
) -> tuple[int, str, str]:
    """`argv` until `enough(lines so far)` or `seconds` pass, then SIGINT: (rc, stdout, stderr).

    A command that does not stop within `grace` seconds of the Ctrl-C is killed and fails the test.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not enough(list(lines)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{' '.join(argv)} did not stop on Ctrl-C within {grace:g} s") from None
    reader.join(5)
    return proc.returncode, "".join(lines), proc.stderr.read()
