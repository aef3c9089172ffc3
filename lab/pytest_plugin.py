"""The `lab` fixture: one local cluster for the whole pytest session, shared by every test dir.

Loaded from tests/conftest.py (`pytest_plugins = ["lab.pytest_plugin"]`). The first test that asks
for `lab` starts the cluster (or joins one already running: `make cluster`, or another pytest
session); the session that started it stops it at the end, unless another session still uses it.
Tests isolate themselves with their own Kubernetes namespace (`lab_namespace`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes.client import ApiClient

from kubectl_mesh.prom import PrometheusClient, Vector
from lab import cluster, network
from lab.config import KUBECONFIG, LAB_DIR, NETNS_PREFIX, bin_dir, missing_binaries
from lab.kube import ERRORS, ApiException, Kube, data
from lab.runtime import helm_post_renderer

JSON = dict[str, Any]
T = TypeVar("T")
KUBECTL = "/usr/bin/kubectl"


class Lab:
    """Handles on the running lab for tests: kubeconfig, clients, helpers that wait on real state."""

    def __init__(self, state: cluster.State) -> None:
        self.state = state
        self.kubeconfig: Path = KUBECONFIG
        self.api_url: str = state.api_url
        self.prometheus_url: str = state.prometheus_url
        self.bin_dir: Path = Path(state.bin_dir or bin_dir())
        self.helm: Path = self.bin_dir / "helm"
        # The typed API groups as the lab's admin; `lab.kube.data(call, ...)` answers as plain JSON.
        self.kube = Kube.as_user(self.api_url, cluster.PKI_DIR, "admin")

    # --- clients ----------------------------------------------------------------------------
    @property
    def client(self) -> ApiClient:
        """The lab admin's `kubernetes.client.ApiClient`, for any API group the lab does not wrap."""
        return self.kube.api_client

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for tools run against the lab: KUBECONFIG set, lab binaries on PATH."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(extra)
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        """Run kubectl against the lab; returns stdout, raises AssertionError with stderr on failure."""
        proc = subprocess.run(
            [KUBECTL, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def run_helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Real helm against the lab; `install` and `upgrade` run the pods with the code under test
        (`runtime.helm_post_renderer`)."""
        if args and args[0] in ("install", "upgrade"):
            args = (*args, *helm_post_renderer())
        return subprocess.run(
            [str(self.helm), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )

    def apply(self, manifest: str, namespace: str | None = None) -> str:
        """`kubectl apply -f -` of a YAML (or JSON) text."""
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=manifest)

    # --- namespaces -------------------------------------------------------------------------
    def create_namespace(self, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
        """A fresh namespace, returned once its `default` ServiceAccount exists (pods need it)."""
        name = f"{prefix[:40].lower().strip('-')}-{uuid.uuid4().hex[:6]}"
        data(self.kube.core.create_namespace, {"metadata": {"name": name, "labels": labels or {}}})
        self.wait(
            lambda: data(self.kube.core.read_namespaced_service_account, "default", name), 30, "default SA"
        )
        return name

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 60) -> None:
        with contextlib.suppress(ApiException):
            data(self.kube.core.delete_namespace, name)
        if wait:
            self.wait(lambda: not self._namespace_exists(name), timeout, f"namespace {name} gone")

    def _namespace_exists(self, name: str) -> bool:
        try:
            data(self.kube.core.read_namespace, name)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise

    # --- pods -------------------------------------------------------------------------------
    def pods(self, namespace: str, selector: str | None = None) -> list[JSON]:
        return list(data(self.kube.core.list_namespaced_pod, namespace, label_selector=selector)["items"])

    def pod(self, namespace: str, name: str) -> JSON:
        return data(self.kube.core.read_namespaced_pod, name, namespace)

    @staticmethod
    def is_ready(pod: JSON) -> bool:
        conditions = pod.get("status", {}).get("conditions") or []
        return pod.get("status", {}).get("phase") == "Running" and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions
        )

    def wait_pods_ready(
        self, namespace: str, selector: str | None = None, count: int | None = None, timeout: float = 60
    ) -> list[JSON]:
        """Wait until `count` (default: all, at least one) non-terminating pods are Ready."""

        def ready() -> list[JSON] | None:
            pods = [p for p in self.pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")]
            want = count if count is not None else max(len(pods), 1)
            good = [p for p in pods if self.is_ready(p)]
            return good if len(good) == want and len(pods) == want else None

        return self.wait(ready, timeout, f"{count or 'all'} ready pods in {namespace} ({selector or 'any'})")

    def wait_pod_phase(self, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60) -> JSON:
        def phase() -> JSON | None:
            pod = self.pod(namespace, name)
            return pod if pod.get("status", {}).get("phase") in phases else None

        return self.wait(phase, timeout, f"pod {namespace}/{name} in {phases}")

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, from the node's log files (also served to `kubectl logs`)."""
        uid = self.pod(namespace, pod)["metadata"]["uid"]
        path = LAB_DIR / "logs" / "pods" / f"{namespace}_{pod}_{uid[:8]}" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def netns_of(pod: JSON) -> str:
        """The network namespace the lab node runs a pod in (for `ip netns exec`)."""
        return f"{NETNS_PREFIX}{pod['metadata']['uid'].replace('-', '')[:10]}"

    def pod_pids(self, pod: JSON) -> list[int]:
        """Every process of a pod (all its containers), by its network namespace."""
        return network.netns_pids(self.netns_of(pod))

    @staticmethod
    def live(pids: list[int]) -> list[int]:
        """The pids that still run (a zombie waiting for its parent to reap it has stopped)."""
        return [pid for pid in pids if network.running(pid)]

    # --- Prometheus -------------------------------------------------------------------------
    def prometheus_query(self, promql: str) -> Vector:
        """An instant query against the lab's Prometheus, by the mesh's one client: (labels, value)."""
        if not self.prometheus_url:
            raise AssertionError("the lab runs without Prometheus")
        return PrometheusClient(url=self.prometheus_url, timeout=10).query(promql)

    # --- waiting ----------------------------------------------------------------------------
    @staticmethod
    def wait(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
        """Poll `check()` until it returns something truthy (returned); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = check()
                if value:
                    return value
            except ERRORS as err:
                last = err
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})"
                )
            time.sleep(interval)


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the lab runs pods in network namespaces"
    missing = missing_binaries(bin_dir())
    if missing and not cluster.running():
        return f"lab binaries missing ({', '.join(missing)} in {bin_dir()}): run `make binaries`"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab cluster (started on first use, stopped at the end of the session)."""
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        state = cluster.up(owner="pytest", user=os.getpid())
    except cluster.LabError as err:
        pytest.fail(f"the lab did not start: {err}", pytrace=False)
    try:
        yield Lab(state)
    finally:
        cluster.release(os.getpid(), owner="pytest")


@pytest.fixture
def lab_namespace(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards (without waiting)."""
    name = lab.create_namespace(re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()))
    yield name
    lab.delete_namespace(name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab_lifecycle: starts and stops a lab of its own; runs first, before the shared lab starts",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Lifecycle tests first: they need the machine free of any lab (stable order otherwise)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("lab_lifecycle") else 1)
