"""A large multi-document manifest and one measured `kubectl mesh inject` over it.

Shared by bench/bench_inject.py (the 50 MB goal) and tests/cli/test_manifests.py (a 5 MB bound).
Two shapes of input, Deployments (which are injected), Services and ConfigMaps in turn:
- "export": what `kubectl get -A -o yaml --show-managed-fields` writes, split into documents
  (block style, managedFields, status, the last-applied annotation): how 50 MB of manifests
  usually come about;
- "dense": hand-written style, short flow mappings; about three times the scalars per byte, and
  an injected output four times the input: the worst case per byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


EXPORTED_DEPLOYMENT = """\
---
apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    deployment.kubernetes.io/revision: "3"
    kubectl.kubernetes.io/last-applied-configuration: |
      {{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"annotations":{{}},"labels":{{"app":"web-{n}","tier":"frontend"}},"name":"web-{n}","namespace":"shop-{ns}"}},"spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"web-{n}"}}}},"template":{{"metadata":{{"labels":{{"app":"web-{n}","tier":"frontend"}}}},"spec":{{"containers":[{{"command":["/bin/web","--port","8080"],"image":"registry.example.com/shop/web:1.2.{n}","name":"web","ports":[{{"containerPort":8080,"name":"http"}}],"resources":{{"limits":{{"memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}}}}]}}}}}}}}
  creationTimestamp: "2026-01-12T09:14:{s:02d}Z"
  generation: 3
  labels:
    app: web-{n}
    tier: frontend
  managedFields:
  - apiVersion: apps/v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:annotations:
          .: {{}}
          f:kubectl.kubernetes.io/last-applied-configuration: {{}}
        f:labels:
          .: {{}}
          f:app: {{}}
          f:tier: {{}}
      f:spec:
        f:progressDeadlineSeconds: {{}}
        f:replicas: {{}}
        f:revisionHistoryLimit: {{}}
        f:selector: {{}}
        f:strategy:
          f:rollingUpdate:
            .: {{}}
            f:maxSurge: {{}}
            f:maxUnavailable: {{}}
          f:type: {{}}
        f:template:
          f:metadata:
            f:labels:
              .: {{}}
              f:app: {{}}
              f:tier: {{}}
          f:spec:
            f:containers:
              k:{{"name":"web"}}:
                .: {{}}
                f:command: {{}}
                f:image: {{}}
                f:imagePullPolicy: {{}}
                f:name: {{}}
                f:ports:
                  .: {{}}
                  k:{{"containerPort":8080,"protocol":"TCP"}}:
                    .: {{}}
                    f:containerPort: {{}}
                    f:name: {{}}
                    f:protocol: {{}}
                f:resources:
                  .: {{}}
                  f:limits:
                    .: {{}}
                    f:memory: {{}}
                  f:requests:
                    .: {{}}
                    f:cpu: {{}}
                    f:memory: {{}}
                f:terminationMessagePath: {{}}
                f:terminationMessagePolicy: {{}}
            f:dnsPolicy: {{}}
            f:restartPolicy: {{}}
            f:schedulerName: {{}}
            f:securityContext: {{}}
            f:terminationGracePeriodSeconds: {{}}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-01-12T09:14:{s:02d}Z"
  name: web-{n}
  namespace: shop-{ns}
  resourceVersion: "{rv}"
  uid: 6f1c2a7e-{n:04x}-4c1b-9a55-0c1d2e3f{n:04x}
spec:
  progressDeadlineSeconds: 600
  replicas: 2
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app: web-{n}
  strategy:
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 25%
    type: RollingUpdate
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: web-{n}
        tier: frontend
    spec:
      containers:
      - command:
        - /bin/web
        - --port
        - "8080"
        image: registry.example.com/shop/web:1.2.{n}
        imagePullPolicy: IfNotPresent
        name: web
        ports:
        - containerPort: 8080
          name: http
          protocol: TCP
        resources:
          limits:
            memory: 256Mi
          requests:
            cpu: 100m
            memory: 128Mi
        terminationMessagePath: /dev/termination-log
        terminationMessagePolicy: File
      dnsPolicy: ClusterFirst
      restartPolicy: Always
      schedulerName: default-scheduler
      securityContext: {{}}
      terminationGracePeriodSeconds: 30
status:
  availableReplicas: 2
  conditions:
  - lastTransitionTime: "2026-01-12T09:14:{s:02d}Z"
    lastUpdateTime: "2026-01-12T09:14:{s:02d}Z"
    message: Deployment has minimum availability.
    reason: MinimumReplicasAvailable
    status: "True"
    type: Available
  - lastTransitionTime: "2026-01-12T09:14:{s:02d}Z"
    lastUpdateTime: "2026-01-12T09:15:{s:02d}Z"
    message: ReplicaSet "web-{n}-5d8c7b9f6d" has successfully progressed.
    reason: NewReplicaSetAvailable
    status: "True"
    type: Progressing
  observedGeneration: 3
  readyReplicas: 2
  replicas: 2
  updatedReplicas: 2
"""
EXPORTED_SERVICE = """\
---
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {{"apiVersion":"v1","kind":"Service","metadata":{{"annotations":{{}},"name":"web-{n}","namespace":"shop-{ns}"}},"spec":{{"ports":[{{"name":"http","port":80,"targetPort":8080}}],"selector":{{"app":"web-{n}"}}}}}}
  creationTimestamp: "2026-01-12T09:14:{s:02d}Z"
  name: web-{n}
  namespace: shop-{ns}
  resourceVersion: "{rv}"
  uid: 0a9b8c7d-{n:04x}-4e5f-8a9b-1c2d3e4f{n:04x}
spec:
  clusterIP: 10.96.{a}.{b}
  clusterIPs:
  - 10.96.{a}.{b}
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: web-{n}
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {{}}
"""
EXPORTED_CONFIGMAP = """\
---
apiVersion: v1
data:
  enabled: "yes"
  web.conf: |
    listen 8080
    workers 4
    upstream shop-{ns}.svc.cluster.local:80
    timeout 12:30
kind: ConfigMap
metadata:
  creationTimestamp: "2026-01-12T09:14:{s:02d}Z"
  name: cfg-{n}
  namespace: shop-{ns}
  resourceVersion: "{rv}"
  uid: 1b2c3d4e-{n:04x}-4a5b-9c8d-2e3f4a5b{n:04x}
"""
SHAPES = {
    "export": (EXPORTED_DEPLOYMENT, EXPORTED_SERVICE, EXPORTED_CONFIGMAP),
    "dense": (DEPLOYMENT, SERVICE, CONFIGMAP),
}


def write_manifests(path: Path, size: int, shape: str = "export") -> int:
    """Write at least `size` bytes of manifests to `path`; returns the number of documents."""
    count = 0
    written = 0
    with path.open("w") as fh:
        while written < size:
            for template in SHAPES[shape]:
                text = template.format(
                    n=count, ns=count % 50, s=count % 60, rv=1000 + count, a=count // 250 % 250, b=count % 250
                )
                fh.write(text)
                written += len(text)
                count += 1
    return count


@dataclass(frozen=True)
class InjectRun:
    seconds: float
    cpu_seconds: float  # user + system of the process and its workers: what the run costs
    max_rss_bytes: int  # the largest single process (the kernel's peak, wait4)
    tree_rss_bytes: int  # peak of the summed RSS of the process and its workers (sampled)
    tree_pss_bytes: int  # the same in PSS: pages shared after fork counted once
    processes: int  # most processes seen at once (1: no worker pool)
    output_bytes: int
    returncode: int
    stderr_tail: str


def run_inject(
    source: Path, output: Path, env: dict[str, str] | None = None, reader_delay: float = 0.0
) -> InjectRun:
    """`kubectl-mesh inject SOURCE > OUTPUT` in its own process: wall and CPU time, peak RSS of
    the process and of its whole tree (sampled every 10 ms from /proc). `reader_delay`: stdout is
    a pipe read 64 KB at a time with that many seconds between reads (a slow consumer)."""
    exe = Path(sys.executable).parent / "kubectl-mesh"
    with output.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [str(exe), "inject", str(source)],
            stdout=subprocess.PIPE if reader_delay else out,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        reader = threading.Thread(target=_read_slowly, args=(proc.stdout, out, reader_delay), daemon=True)
        if reader_delay:
            reader.start()
        assert proc.stderr is not None
        err = proc.stderr.read()  # the per-object report: read while it runs
        if reader_delay:
            reader.join()
        sampler.stop.set()
        sampler.join()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return InjectRun(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,  # with its reaped workers' (RUSAGE_BOTH)
        max_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        tree_rss_bytes=sampler.peak_rss,
        tree_pss_bytes=sampler.peak_pss,
        processes=sampler.most,
        output_bytes=output.stat().st_size,
        returncode=proc.returncode,
        stderr_tail=err[-500:].decode(errors="replace"),
    )


def _read_slowly(pipe: Any, out: Any, delay: float) -> None:
    while chunk := pipe.read(65536):
        out.write(chunk)
        time.sleep(delay)


class _TreeSampler(threading.Thread):
    """Peaks of the summed RSS and PSS of a process and its descendants, polled from /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peak_rss = self.peak_pss = self.most = 0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            rss = pss = 0
            for pid in pids:
                rss += _kib(f"/proc/{pid}/status", "VmRSS:")
                pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss * 1024), max(self.peak_pss, pss * 1024)
            self.most = max(self.most, len(pids))
            self.stop.wait(0.01)


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a zombie
