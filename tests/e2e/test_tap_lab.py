"""`kubectl mesh tap` and `top` on the lab, through the real kubectl (plugin discovery), the real
API server's pods/portforward and the node agent's kubelet endpoint, against injected pods in
network namespaces: what the tap shows is what the caller sent and got, and who may tap is RBAC's
call (a ServiceAccount without `create pods/portforward` is refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.lab.test_lab import MARKER, web_manifest
from tests.support.rbac import READ_DEPLOYMENTS, READ_PODS, account, accounts_yaml, kubeconfig_for
from tests.support.streaming import run_until_ctrl_c

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
CALLER = """
import time, urllib.request
deadline = time.time() + 240
while time.time() < deadline:
    for path in ("/index.html", "/missing"):
        try:
            urllib.request.urlopen("http://web" + path, timeout=3).read()
        except Exception:
            pass
    time.sleep(0.2)
"""


def _caller() -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: caller}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: caller}}}}
          template:
            metadata: {{labels: {{app: caller}}}}
            spec:
              containers:
              - name: main
                image: python:3.11
                command: [python3, -c, {json.dumps(CALLER)}]
                securityContext: {{runAsUser: 1000}}
        """
    )


def _inject(manifest: str) -> str:
    return subprocess.run(
        [str(VENV_BIN / "kubectl-mesh"), "inject", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _events(lines: list[str] | str) -> list[dict[str, Any]]:
    text = lines if isinstance(lines, str) else "".join(line for line in lines if line.endswith("\n"))
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_tap_and_top_through_the_api_server_and_only_for_whom_rbac_allows(
    lab: Any, lab_namespace: str, tmp_path: Path
) -> None:
    ns = lab_namespace
    lab.apply(_inject(web_manifest("web", 1)), ns)
    lab.apply(_inject(_caller()), ns)
    (web,) = lab.wait_pods_ready(ns, "app=web", count=1, timeout=120)
    (caller,) = lab.wait_pods_ready(ns, "app=caller", count=1, timeout=120)
    env = lab.env(PATH=f"{VENV_BIN}:{lab.env()['PATH']}")

    def enough(lines: list[str]) -> bool:
        return sum(e["type"] == "end" for e in _events(lines)) >= 12

    tap = ["kubectl", "mesh", "tap", "deploy/web", "-n", ns, "-o", "json"]
    rc, out, err = run_until_ctrl_c(tap, env, enough, 90)
    assert rc == 0 and "Traceback" not in err, err
    events = _events(out)
    reqs = {e["id"]: e for e in events if e["type"] == "req"}
    rsps = {e["id"]: e for e in events if e["type"] == "rsp"}
    ends = {e["id"]: e for e in events if e["type"] == "end"}
    assert len(ends) >= 12, out[-3000:]
    caller_identity = f"{ns}/deployment/caller/{caller['metadata']['name']}"
    web_name = web["metadata"]["name"]
    from_caller = 0
    for number, end in ends.items():
        if number not in reqs:
            continue  # began before the tap
        req, rsp = reqs[number], rsps[number]
        if not req["src"].startswith(f"{ns}/"):  # the node's readiness probes: an unmeshed address
            assert req["src"].startswith("10.244.0.1:") and req["path"] == f"/{MARKER}", req
            continue
        from_caller += 1
        assert (req["proxy"], req["src"], req["method"]) == ("in", caller_identity, "GET")
        assert req["dst"] == f"{ns}/deployment/web/{web_name}" and req["pod"] == web_name
        # What the caller asked for, and what it got: the page (the pod's name) or a 404.
        expected = (200, len(web_name) + 1) if req["path"] == f"/{MARKER}" else (404, None)
        assert rsp["status"] == expected[0], (req, rsp)
        if expected[1] is not None:
            assert end["response_bytes"] == expected[1]
    assert from_caller >= 8

    def top_enough(lines: list[str]) -> bool:
        return sum(line.startswith("SRC") for line in lines) >= 2

    rc, out, err = run_until_ctrl_c(
        ["kubectl", "mesh", "top", "deploy/web", "-n", ns, "--interval", "2"], env, top_enough, 60
    )
    assert rc == 0 and "Traceback" not in err, err
    table = out.strip().split("\n\n")[-1].splitlines()
    rows = {tuple(line.split()[:4]): line.split() for line in table[1:]}
    assert ("caller", "web", "GET", f"/{MARKER}") in rows and ("caller", "web", "GET", "/missing") in rows, (
        out
    )
    assert rows[("caller", "web", "GET", f"/{MARKER}")][-1] == "100.00%"  # a 404 is a success too

    # A ServiceAccount that may read pods and deployments, but not port-forward: refused, one line each.
    lab.apply(accounts_yaml(account(ns, "viewer", READ_PODS, READ_DEPLOYMENTS)), ns)
    viewer = kubeconfig_for(lab, ns, "viewer", tmp_path / "viewer.kubeconfig")
    refused = subprocess.run(
        ["kubectl", "mesh", "tap", "deploy/web"], capture_output=True, text=True, timeout=60,
        env={**env, "KUBECONFIG": str(viewer)},
    )  # fmt: skip
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.startswith(
        f"error: {web_name}: port-forward to pod {ns}/{web_name} refused (HTTP 403)"
    )
    assert "create` on pods/portforward" in refused.stderr and "Traceback" not in refused.stderr
    assert os.path.exists(viewer)
