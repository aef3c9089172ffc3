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
