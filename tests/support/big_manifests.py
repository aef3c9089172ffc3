"""A large multi-document manifest and one measured `kubectl mesh inject` over it.

Shared by bench/bench_inject.py (the 50 MB goal) and tests/cli/test_manifests.py (a 5 MB bound).
The input is what a big `kubectl get -A -o yaml` split into documents looks like: Deployments
(which are injected), Services and ConfigMaps with multi-line data, in turn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEPLOYMENT = """\
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-{n}
  namespace: shop-{ns}
  labels: {{app: web-{n}, tier: frontend, version: "1.2.{n}"}}
  annotations:
    deployment.kubernetes.io/revision: "3"
    owner: team-{ns}@example.com
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web-{n}}}
  template:
    metadata:
      labels: {{app: web-{n}, tier: frontend}}
    spec:
      containers:
      - name: web
        image: registry.example.com/shop/web:1.2.{n}
        command: [/bin/web, --port, "8080", --workers, "4"]
        ports:
        - {{containerPort: 8080, name: http}}
        env:
        - {{name: MODE, value: production}}
        - {{name: TIMEOUT, value: "12:30"}}
        resources:
          requests: {{cpu: 100m, memory: 128Mi}}
          limits: {{memory: 256Mi}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8080}}
"""
SERVICE = """\
---
apiVersion: v1
kind: Service
metadata: {{name: web-{n}, namespace: shop-{ns}}}
spec:
  selector: {{app: web-{n}}}
  ports:
  - {{port: 80, targetPort: 8080, name: http}}
"""
CONFIGMAP = """\
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg-{n}, namespace: shop-{ns}}}
data:
  enabled: "yes"
  script: |
    #!/bin/sh
    echo starting {n}
    exec /bin/web --config /etc/web/{n}.conf
"""


def write_manifests(path: Path, size: int) -> int:
    """Write at least `size` bytes of manifests to `path`; returns the number of documents."""
    count = 0
    written = 0
    with path.open("w") as fh:
        while written < size:
            for template in (DEPLOYMENT, SERVICE, CONFIGMAP):
                text = template.format(n=count, ns=count % 50)
                fh.write(text)
                written += len(text)
                count += 1
    return count


@dataclass(frozen=True)
class InjectRun:
    seconds: float
    max_rss_bytes: int
    output_bytes: int
    returncode: int
    stderr_tail: str


def run_inject(source: Path, output: Path) -> InjectRun:
    """`kubectl-mesh inject SOURCE > OUTPUT` in its own process: wall time and peak RSS."""
    exe = Path(sys.executable).parent / "kubectl-mesh"
    with output.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen([str(exe), "inject", str(source)], stdout=out, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()  # the per-object report: read while it runs
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return InjectRun(
        seconds=seconds,
        max_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        output_bytes=output.stat().st_size,
        returncode=proc.returncode,
        stderr_tail=err[-500:].decode(errors="replace"),
    )
