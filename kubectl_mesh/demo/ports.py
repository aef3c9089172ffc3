"""Loopback ports for the demo: a given range (`--base-port`) checked free first.

Free ports picked by the kernel come from `kubectl_mesh.procs.free_ports`.
"""

from __future__ import annotations

import contextlib
import os
import socket

from kubectl_mesh.errors import MeshError


class PortsInUse(MeshError):
    """Ports the demo needs are taken; the message names them."""


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def ports_from(base: int, count: int) -> list[int]:
    """`base … base+count-1`, each checked free on 127.0.0.1; PortsInUse names every taken one."""
    if not 1024 <= base <= 65535 - count + 1:
        raise PortsInUse(f"--base-port must be between 1024 and {65535 - count + 1} (the demo needs {count})")
    ports = list(range(base, base + count))
    taken = [p for p in ports if port_in_use(p)]
    if taken:
        listed = ", ".join(f"127.0.0.1:{p}{describe_holder(p)}" for p in taken)
        raise PortsInUse(
            f"port{'s' if len(taken) > 1 else ''} {listed} in use; the demo needs {base}-{base + count - 1} "
            "free: pick another --base-port, or leave it out to use free ports"
        )
    return ports


def describe_holder(port: int) -> str:
    """Best effort `(pid 123 python3)` for who listens on `port` (Linux /proc), else ''."""
    with contextlib.suppress(OSError):
        inodes: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                        inodes.add(parts[9])
        if not inodes:
            return ""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        with open(f"/proc/{pid}/comm") as comm:
                            return f" (pid {pid} {comm.read().strip()})"
    return ""
