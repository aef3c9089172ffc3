"""Pure parts of the node: $(VAR) expansion, downward API fields, probe ports, addresses."""

from __future__ import annotations

import pytest

from lab.agent import IpAllocator
from lab.config import BRIDGE_IP, POD_CIDR
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
