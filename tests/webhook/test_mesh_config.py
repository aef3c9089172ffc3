"""MeshConfig: the chart's ConfigMap keys, validation, and the $MESH_CONFIG loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubectl_mesh.inject.config import MeshConfig, MeshConfigError, load_config


def test_defaults_round_trip_through_the_mapping() -> None:
    mapping = MeshConfig().to_mapping()
    assert MeshConfig.from_mapping(mapping) == MeshConfig()
    assert json.loads(json.dumps(mapping)) == mapping  # plain JSON, what a ConfigMap holds
    assert set(mapping) == {
        "proxyImage", "proxyVersion", "initImage", "imagePullPolicy", "proxyResources", "initResources",
        "logLevel", "logFormat", "nativeSidecar", "skipInboundPorts", "skipOutboundPorts", "skipSubnets",
        "opaquePorts", "controlPlaneNamespace",
    }  # fmt: skip


def test_port_lists_are_canonical_and_accept_arrays() -> None:
    config = MeshConfig.from_mapping(
        {"skipInboundPorts": [9090, "80", "8000-8010"], "opaquePorts": "3306, 25,25"}
    )
    assert str(config.skip_inbound_ports) == "80,8000-8010,9090"
    assert str(config.opaque_ports) == "25,3306"
    assert config.to_mapping()["skipInboundPorts"] == "80,8000-8010,9090"


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"proxyImg": "x"}, "unknown mesh config key(s): proxyImg"),
        ({"nativeSidecar": "true"}, "nativeSidecar must be true or false"),
        ({"logLevel": "loud"}, "logLevel must be one of"),
        ({"logFormat": "xml"}, "logFormat must be one of logfmt, json"),
        ({"skipInboundPorts": "80,http"}, "skipInboundPorts"),
        ({"skipOutboundPorts": "0"}, "skipOutboundPorts"),
        ({"skipSubnets": "10.0.0.0/33"}, "skipSubnets"),
        ({"proxyResources": {"requests": {"cpu": "lots"}}}, "proxyResources.requests.cpu"),
        ({"proxyResources": {"requests": {"gpu": "1"}}}, "unknown resource"),
        ({"proxyImage": ""}, "proxyImage must not be empty"),
        ({"controlPlaneNamespace": "Mesh_System"}, "controlPlaneNamespace"),
        ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    ],
)
def test_bad_values_name_the_key(mapping: dict[str, object], needle: str) -> None:
    with pytest.raises(MeshConfigError) as info:
        MeshConfig.from_mapping(mapping)
    assert needle in str(info.value)


def test_load_config_reads_the_file_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"proxyVersion": "1.2.3", "nativeSidecar": False}))
    config = load_config({"MESH_CONFIG": str(path)})
    assert config.proxy_version == "1.2.3" and config.native_sidecar is False
    assert config.proxy_image_ref == "ghcr.io/kubectl-mesh/proxy:1.2.3"
    assert load_config({}) == MeshConfig()


def test_load_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(MeshConfigError, match="not valid JSON"):
        load_config({"MESH_CONFIG": str(bad)})
    with pytest.raises(MeshConfigError, match="cannot read mesh config"):
        load_config({"MESH_CONFIG": str(tmp_path / "missing.json")})
    bad.write_text('{"proxyVersion": 3}')
    with pytest.raises(MeshConfigError, match=r"bad.json: proxyVersion must be a string"):
        load_config({"MESH_CONFIG": str(bad)})
