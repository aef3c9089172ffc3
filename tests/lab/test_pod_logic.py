"""Pure parts of the node: $(VAR) expansion, downward API fields, probe ports, addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.agent import IpAllocator
from lab.config import BRIDGE_IP, POD_CIDR, find_helm
from lab.pods import expand
from lab.probes import resolve_port
from lab.volumes import VolumeError, field_value

POD = {
    "metadata": {"name": "web-1", "namespace": "demo", "uid": "u-1", "labels": {"app": "web"}},
    "spec": {"nodeName": "lab-node", "serviceAccountName": "web"},
    "status": {"podIP": "10.244.0.7"},
}


def test_expansion_follows_the_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)", "unknown references stay as written"
    assert expand("$$(A)", env) == "$(A)", "$$ escapes"


def test_downward_api_fields() -> None:
    assert field_value(POD, "metadata.name") == "web-1"
    assert field_value(POD, "metadata.namespace") == "demo"
    assert field_value(POD, "status.podIP") == "10.244.0.7"
    assert field_value(POD, "spec.serviceAccountName") == "web"
    assert field_value(POD, "spec.nodeName") == "lab-node"
    assert field_value(POD, "metadata.labels['app']") == "web"
    with pytest.raises(VolumeError):
        field_value(POD, "spec.nonsense")


def test_probe_ports_by_number_or_name() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port(8080, container) == 8080
    assert resolve_port("http", container) == 8080
    with pytest.raises(ValueError):
        resolve_port("admin", container)


def test_pod_addresses_are_unique_and_never_the_bridge() -> None:
    ips = IpAllocator()
    got = [ips.allocate() for _ in range(50)]
    assert len(set(got)) == 50 and str(BRIDGE_IP) not in got
    assert all(__import__("ipaddress").ip_address(ip) in POD_CIDR for ip in got)
    ips.release(got[0])
    assert ips.allocate() not in got[1:]


def test_find_helm_is_one_rule_flag_then_env_then_the_lab_build_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot step, the chart tests, the walkthrough and the lab fixture all run this helm."""
    lab_bin, on_path = tmp_path / "lab-bin", tmp_path / "path"
    for d in (lab_bin, on_path):
        d.mkdir()
        (d / "helm").write_text("#!/bin/sh\n")
    (on_path / "helm").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.delenv("MESH_HELM", raising=False)
    # the lab's build is not executable yet: PATH's helm
    assert find_helm(lab_bin=lab_bin) == str(on_path / "helm")
    (lab_bin / "helm").chmod(0o755)
    assert find_helm(lab_bin=lab_bin) == str(lab_bin / "helm")
    monkeypatch.setenv("MESH_HELM", "/from/env/helm")
    assert find_helm(lab_bin=lab_bin) == "/from/env/helm"
    assert find_helm("/from/flag/helm", lab_bin=lab_bin) == "/from/flag/helm"
    monkeypatch.delenv("MESH_HELM")
    monkeypatch.setenv("MESH_LAB_BIN", str(lab_bin))  # bin_dir(): the lab's pinned build
    assert find_helm() == str(lab_bin / "helm")
