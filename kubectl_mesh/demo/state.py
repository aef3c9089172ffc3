"""Where a running `kubectl mesh demo` can be found by `kubectl mesh tap|top --demo`.

The demo has no API server to port-forward through, so it leaves a small file naming its pods
and their proxies' tap ports (all on 127.0.0.1) while it runs, and removes it when it stops.
One per user: `$XDG_RUNTIME_DIR` (or the temp dir) / `kubectl-mesh-demo-<uid>.json`, mode 600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubectl_mesh.errors import MeshError


@dataclass(frozen=True)
class DemoState:
    pid: int
    namespace: str
    taps: dict[str, tuple[str, int]]  # deployment -> (pod name, tap port on 127.0.0.1)


def state_path() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"kubectl-mesh-demo-{os.getuid()}.json"


def write_state(state: DemoState) -> Path:
    path = state_path()
    tmp = path.with_name(path.name + f".{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": state.pid, "namespace": state.namespace,
                   "taps": {d: list(t) for d, t in state.taps.items()}}, fh)  # fmt: skip
    tmp.replace(path)
    return path


def remove_state(pid: int) -> None:
    """Remove the file if it is this demo's (a newer demo may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(state_path().read_text()).get("pid") == pid:
            state_path().unlink()


def read_state() -> DemoState:
    """The running demo's state; a MeshError when none runs."""
    path = state_path()
    hint = "start one in another terminal: kubectl mesh demo"
    try:
        doc = json.loads(path.read_text())
        state = DemoState(int(doc["pid"]), str(doc["namespace"]),
                          {str(d): (str(t[0]), int(t[1])) for d, t in doc["taps"].items()})  # fmt: skip
        if not all(0 < port < 65536 for _, port in state.taps.values()):
            raise ValueError("a tap port out of range")
    except FileNotFoundError:
        raise MeshError("no kubectl mesh demo is running", hint) from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise MeshError(f"{path} is not a demo's state file: {exc}", hint) from None
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        raise MeshError("no kubectl mesh demo is running (it stopped without cleaning up)", hint) from None
    except PermissionError:
        pass
    return state
