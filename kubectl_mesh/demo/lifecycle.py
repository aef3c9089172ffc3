"""How a demo app's process ends (emojivoto's services, the topologies' app): SIGTERM or SIGINT
sets an Event, and the main thread, waiting on it, shuts its servers down and returns.

Both apps waited with an untimed `Event.wait()`, which missed a signal the kernel gave to one of
their server threads: the supervisor then waited out its grace and killed them (often, in
tests/e2e/test_demo_apps_stop.py).

Standard library only: the emojivoto image copies this file beside emojivoto.py.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from socketserver import BaseServer


def stop_on_signals() -> threading.Event:
    """An Event that SIGTERM (the supervisor's or the kubelet's stop) or SIGINT sets: the main
    thread then leaves its wait and stops cleanly, instead of dying wherever the signal lands.
    Call it before the servers start, so that a stop during the start is not lost."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def wait_then_shutdown(
    stop: threading.Event, servers: Iterable[BaseServer], before: Callable[[], object] = lambda: None
) -> int:
    """Wait for `stop`, run `before` (what must stop first, e.g. gRPC servers with their grace),
    then stop each server's loop and close its socket; the exit code, 0."""
    # Timed waits: the kernel may deliver the signal to another thread (a server's), and Python
    # runs handlers only in the main thread, which an untimed wait leaves blocked in the C lock.
    while not stop.wait(0.2):
        pass
    before()
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0
