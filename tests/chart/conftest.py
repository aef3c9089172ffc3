"""Fixtures for the chart tests: real helm (built by lab/build-binaries.sh) and renderings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.config import CHART, RELEASE, find_helm
from scripts.chart_snapshot import KUBE_VERSION
from tests.chart.helpers import Render, run_helm


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if not path or not Path(path).exists():
        pytest.skip("helm not built: run `make binaries` (lab/build-binaries.sh)")
    return path


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """`helm template` with extra args (e.g. --set x=y) as a list of objects; fails on an error."""

    def _render(*args: str) -> list[dict[str, Any]]:
        proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return _render


@pytest.fixture(scope="session")
def render_error(helm: str) -> Callable[..., str]:
    """`helm template` that must fail: its stderr."""

    def _render_error(*args: str) -> str:
        proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args)
        assert proc.returncode != 0, f"helm template {' '.join(args)} rendered, but should fail"
        return proc.stderr

    return _render_error


@pytest.fixture(scope="session")
def defaults(render: Render) -> list[dict[str, Any]]:
    return render()
