"""Readiness, startup and liveness probes, executed for real against the pod's address.

HTTP and TCP probes connect from the host to the pod IP (through the pod's own iptables, as the
kubelet's do); exec probes run inside the container's namespaces. Until a probe first succeeds
it is retried every 0.5 s (at most its period), so a pod becomes ready as soon as it can serve
instead of one full period later; after that the spec's timing applies.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
FAST_PERIOD = 0.5


def resolve_port(port: object, container: JSON) -> int:
    """An int port, or a named containerPort of this container."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} not found in container {container.get('name')}")


def http_probe(spec: JSON, pod_ip: str, container: JSON, timeout: float) -> tuple[bool, str]:
    get = spec["httpGet"]
    host = get.get("host") or pod_ip
    port = resolve_port(get.get("port"), container)
    conn: http.client.HTTPConnection
    if (get.get("scheme") or "HTTP").upper() == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": "kube-probe/1.33", "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
    try:
        conn.request("GET", get.get("path") or "/", headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"


def tcp_probe(spec: JSON, pod_ip: str, container: JSON, timeout: float) -> tuple[bool, str]:
    sock = spec["tcpSocket"]
    port = resolve_port(sock.get("port"), container)
    with socket.create_connection((sock.get("host") or pod_ip, port), timeout=timeout):
        return True, ""


@dataclass
class Probe:
    """One probe of one container: its spec, its counters, and when it is due."""

    kind: str  # readiness | startup | liveness
    spec: JSON
    container: JSON
    exec_runner: Callable[[list[str], float], int]
    started: float = field(default_factory=time.monotonic)
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None: not yet decided
    ever_succeeded: bool = False
    next_due: float = 0.0
    message: str = ""

    def __post_init__(self) -> None:
        self.next_due = self.started + float(self.spec.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def run(self, pod_ip: str, now: float) -> bool | None:
        """Execute once; update the result by the success/failure thresholds; return the result."""
        timeout = float(self.spec.get("timeoutSeconds", 1))
        period = float(self.spec.get("periodSeconds", 10))
        try:
            if "httpGet" in self.spec:
                ok, msg = http_probe(self.spec, pod_ip, self.container, timeout)
            elif "tcpSocket" in self.spec:
                ok, msg = tcp_probe(self.spec, pod_ip, self.container, timeout)
            elif "exec" in self.spec:
                code = self.exec_runner(list(self.spec["exec"].get("command") or []), timeout)
                ok, msg = code == 0, f"exec probe exited with {code}"
            else:
                ok, msg = False, f"unsupported probe handler {sorted(self.spec)}"
        except (OSError, ValueError, http.client.HTTPException) as err:
            ok, msg = False, f"{self.kind} probe failed: {err}"
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            threshold = 1 if self.kind != "readiness" else int(self.spec.get("successThreshold", 1))
            if self.successes >= threshold:
                self.result, self.ever_succeeded, self.message = True, True, ""
        else:
            self.failures, self.successes = self.failures + 1, 0
            self.message = msg
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False
        fast = not self.ever_succeeded and self.kind != "liveness"
        self.next_due = now + (min(period, FAST_PERIOD) if fast else period)
        return self.result
