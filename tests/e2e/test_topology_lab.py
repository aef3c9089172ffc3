"""Issue #14's topologies on the lab with the chart installed: the demo's call graphs
(kubectl_mesh.demo.topology) as Deployments and Services, injected by the chart's webhook,
intercepted by iptables, scraped by the chart's Prometheus; `kubectl mesh diagnose` run through
the real kubectl's plugin discovery, its culprits and paths checked against the apps' own counters
(read from each pod's counters port, which the mesh leaves alone)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubectl_mesh.demo.topology import CLIENT, ENTRY, TOPOLOGIES, manifests
from lab.runtime import runtime_pythonpath
from tests.e2e.tables import success_tolerance
from tests.support.topology import assert_diagnosis_matches_apps

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow]

NAMES = ("depth1", "depth3", "two-leaves", "cycle")  # and emojivoto: the walkthrough (test_walkthrough.py)
WINDOW_S = 60  # diagnose's default -t 1m
SCRAPE_S = 10  # the chart's scrape interval


def _manifest(name: str) -> str:
    """The topology's objects, its apps running this checkout's code (as lab/post_render.py does
    for the chart: the lab's node may run another checkout's)."""
    docs = manifests(TOPOLOGIES[name])
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["env"].append({"name": "PYTHONPATH", "value": str(runtime_pythonpath())})
    return "".join(f"---\n{json.dumps(d)}\n" for d in docs)


@pytest.fixture(scope="module")
def tools(lab: Any) -> Iterator[Any]:
    """kubectl and helm on the lab, the chart installed (and removed after, if installed here)."""
    from lab import walkthrough as w

    if not os.access(lab.helm, os.X_OK):
        pytest.skip(f"helm is missing from {lab.bin_dir}: run `make binaries`")
    tools = w.tools_for(lab.kubeconfig, lab.bin_dir)
    installed = w.install_chart(tools)
    try:
        yield tools
    finally:
        for name in NAMES:
            tools.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)
        if installed:
            w.uninstall_chart(tools)


@pytest.fixture(scope="module")
def running(tools: Any) -> Iterator[dict[str, Any]]:
    """Every topology applied at once (one wait for all), each Deployment with one Ready, meshed
    pod; each topology's counters read every 2 s from then on; returned once a full window of
    traffic has been scraped."""
    from lab import walkthrough as w

    for name in NAMES:
        tools.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", "--timeout=120s")
        tools.kubectl("apply", "-f", "-", stdin=_manifest(name))
    histories: dict[str, Any] = {}
    deadline = time.monotonic() + 300
    try:
        for name in NAMES:
            wanted = {*TOPOLOGIES[name].names, CLIENT}
            while True:
                items = tools.json("get", "pods", "-n", name)["items"]
                ready = {
                    p["metadata"]["labels"]["app"]: p
                    for p in items
                    if not p["metadata"].get("deletionTimestamp")
                    and any(c["type"] == "Ready" and c["status"] == "True"
                            for c in p["status"].get("conditions", []))
                }  # fmt: skip
                if set(ready) == wanted:
                    break
                phases = {p["metadata"]["name"]: p["status"].get("phase") for p in items}
                assert time.monotonic() < deadline, f"{name}: pods not ready after 300 s: {phases}"
                time.sleep(3)
            assert all(w.meshed(p) for p in ready.values()), f"{name}: a pod without its proxy"
            histories[name] = w.CounterHistory(ready)
            histories[name].start()
        time.sleep(WINDOW_S + 2 * SCRAPE_S)  # the last topology's traffic fills a scraped window
        yield histories
    finally:
        for history in histories.values():
            history.stopped.set()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_diagnose_through_kubectl_finds_where_the_apps_say_failures_start(
    tools: Any, running: dict[str, Any], name: str
) -> None:
    topology, history = TOPOLOGIES[name], running[name]
    argv = ("mesh", "diagnose", f"deploy/{ENTRY}", "-n", name)
    at = time.time()
    done = tools.kubectl_full(*argv, "-o", "json")
    end = history.read()
    text = tools.kubectl_full(*argv)
    start = history.nearest(at - WINDOW_S)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert abs(start["time"] - (at - WINDOW_S)) < 3, "no counters read at the window's start"
    found = assert_diagnosis_matches_apps(
        json.loads(done.stdout), topology, start["services"], end["services"],
        lambda requests: success_tolerance(requests, WINDOW_S, SCRAPE_S),
    )  # fmt: skip
    assert found, f"{name}: no app failed on its own in the window"
    # The table a user reads says the same.
    assert text.returncode == 0, text.stderr
    if len(found) > 1:
        assert f"Failures start in {len(found)} places" in text.stdout, text.stdout
    else:
        (only,) = found
        assert f"→ look at {only}" in text.stdout, text.stdout
