"""The demo's Prometheus binary: where it is, and how to install it. Queries go through
`kubectl_mesh.prom.PrometheusClient`, the CLI's own client."""

from __future__ import annotations

import shutil

from kubectl_mesh.procs import PROMETHEUS_INSTALL_HINT as INSTALL_HINT

__all__ = ["INSTALL_HINT", "find_prometheus"]


def find_prometheus(explicit: str | None) -> str | None:
    """The binary to run: `--prometheus PATH` if given, else `prometheus` on PATH, else None."""
    if explicit:
        return explicit if shutil.which(explicit) else None
    return shutil.which("prometheus")
