"""The demo's Prometheus: find the binary, and ask it instant queries (stat's `query` source)."""

from __future__ import annotations

import json
import math
import shutil
import urllib.error
import urllib.parse
import urllib.request

from kubectl_mesh.prom import PrometheusError, Vector

INSTALL_HINT = "sudo apt-get install prometheus"


def find_prometheus(explicit: str | None) -> str | None:
    """The binary to run: `--prometheus PATH` if given, else `prometheus` on PATH, else None."""
    if explicit:
        return explicit if shutil.which(explicit) else None
    return shutil.which("prometheus")


class PrometheusClient:
    """Instant queries against one Prometheus, optionally evaluated at a fixed time.

    A fixed evaluation time lets the demo ask its three tables about the same instant, and
    compare them with the services' own counters taken at that instant.
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def query(self, promql: str, at: float | None = None) -> Vector:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with self._opener.open(url, timeout=self.timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise PrometheusError(f"Prometheus rejected a query ({exc.code}): {detail}") from None
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} did not answer: {exc}") from None
        data = payload.get("data", {})
        if payload.get("status") != "success" or data.get("resultType") != "vector":
            raise PrometheusError(f"unexpected answer from Prometheus: {str(payload)[:200]}")
        vector: Vector = []
        for item in data.get("result", []):
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                value = math.nan
            vector.append((dict(item.get("metric", {})), value))
        return vector
