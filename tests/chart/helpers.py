"""Helpers shared by the chart tests: run helm, pick objects out of a rendering."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

Render = Callable[..., list[dict[str, Any]]]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in objects]}")


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def chart_objects(*args: str) -> list[dict[str, Any]]:
    """Real `helm template` of the chart (defaults plus `args`) as objects, for tests outside
    tests/chart; skips the test when helm is not built."""
    from pathlib import Path

    import pytest
    import yaml

    from lab.config import CHART, RELEASE, find_helm
    from scripts.chart_snapshot import KUBE_VERSION

    helm = find_helm()
    if not helm or not Path(helm).exists():
        pytest.skip("helm not built: run `make binaries`")
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
