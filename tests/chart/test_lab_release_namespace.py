"""`helm install kubectl-mesh charts/kubectl-mesh -n mesh-system --create-namespace` (issue #12),
the form every Helm user types, with real helm against the lab: helm makes mesh-system, the chart
does not render it (helm would refuse to adopt it), the control plane comes up and injects, and
`helm upgrade` in place works. Runs after test_lab.py, whose release lives in `default`; skipped
while another session has a control plane in the lab (the objects' names are contracts).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from kubectl_mesh import contract as c
from lab.config import CHART, RELEASE
from tests.chart.test_lab import LAB_VALUES, NS, WEBHOOK_PODS, create_pod, helm, injected

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_helm_install_into_mesh_system_with_create_namespace(lab: Any) -> None:
    releases = lab.run_helm("list", "-A", "-q").stdout.split()
    if RELEASE in releases or lab.kubectl("get", "namespace", NS, "--ignore-not-found").strip():
        pytest.skip("a control plane is installed in the lab already (another test session)")
    base = ["-n", NS, "-f", str(LAB_VALUES), "--wait", "--timeout", "240s"]
    try:
        notes = helm(lab, "install", RELEASE, str(CHART), "--create-namespace", *base)
        # The label the chart's own Namespace would carry: the NOTES say how to add it.
        manifest = helm(lab, "get", "manifest", RELEASE, "-n", NS)
        assert "\nkind: Namespace\n" not in manifest
        namespace = json.loads(lab.kubectl("get", "namespace", NS, "-o", "json"))
        assert "meta.helm.sh/release-name" not in (namespace["metadata"].get("annotations") or {})
        lab.wait_pods_ready(NS, WEBHOOK_PODS, count=2, timeout=120)

        # The mesh needs no label of its own on mesh-system. Kept out of injection by its name
        # (`kubernetes.io/metadata.name`, which the API server sets on every namespace): a pod
        # that opts in there is created without the proxy, the webhook not even called (it would
        # have said why it skipped the pod, in a warning kubectl prints).
        namespace = json.loads(lab.kubectl("get", "namespace", NS, "-o", "json"))
        assert not any(k.startswith("kubectl-mesh.io/") for k in namespace["metadata"].get("labels", {}))
        opt_in = {c.INJECT_LABEL: c.INJECT_ENABLED}
        inside = create_pod(lab, "--dry-run=server", name="opted-in", namespace=NS, labels=opt_in)
        assert inside.returncode == 0 and not injected(json.loads(inside.stdout)), inside.stderr
        assert "kubectl-mesh" not in inside.stderr
        # The Pod Security label the NOTES give, applied as they say: the API server checks every
        # running control-plane pod against `restricted` and warns of none.
        command = [
            line.strip() for line in notes.splitlines() if "pod-security.kubernetes.io/enforce" in line
        ]
        assert command == [f"kubectl label namespace {NS} pod-security.kubernetes.io/enforce=restricted"]
        labelled = subprocess.run(
            command[0].split(), capture_output=True, text=True, env=lab.env(), timeout=60, check=False
        )
        assert labelled.returncode == 0, labelled.stderr
        assert "violate" not in labelled.stderr and "Warning" not in labelled.stderr, labelled.stderr

        meshed = lab.create_namespace("release-ns", labels={c.INJECT_LABEL: c.INJECT_ENABLED})
        try:
            created = create_pod(lab, "--dry-run=server", name="web", namespace=meshed)
            assert created.returncode == 0 and injected(json.loads(created.stdout)), created.stderr
        finally:
            lab.delete_namespace(meshed)

        helm(lab, "upgrade", RELEASE, str(CHART), *base)
    finally:
        lab.run_helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
        lab.delete_namespace(NS, wait=True, timeout=120)
