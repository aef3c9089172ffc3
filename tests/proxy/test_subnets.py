"""One subnet-list format, read alike by the mesh config (`skipSubnets`) and the init step
(`--subnets-to-ignore`), and every list they accept is one the real iptables applies."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import uuid

import pytest

from kubectl_mesh.contract import PROXY_UID
from kubectl_mesh.inject import MeshConfig, MeshConfigError, inject_pod
from kubectl_mesh.subnetlist import parse_subnets
from lab.runtime import runtime_env
from proxy.config import ProxyConfigError
from proxy.init import config_from_args

APP = {"name": "app", "image": "app:1"}
# What each side must read alike: lists, a netmask, a host, junk, IPv6 (which iptables refuses),
# digits that are not ASCII, a blank inside an item.
TEXTS = [
    "10.96.0.0/12, 192.168.1.1,,",
    "10.1.2.3/255.0.0.0",
    "172.16.0.0/12,10.244.1.7",
    "nope",
    "10.0.0.0/33",
    "fd00::/8",
    "10.0.0.0/8,::/0",
    "\u0661\u0660.0.0.0/8",
    "10.0.0.0/ 8",
]


def test_parse_canonical_cidrs_in_order() -> None:
    assert parse_subnets(" 10.1.2.3/8, 192.168.1.1,, 10.0.0.0/255.0.0.0 ") == (
        "10.0.0.0/8",
        "192.168.1.1/32",
        "10.0.0.0/8",
    )
    assert parse_subnets("") == parse_subnets(" , ") == ()
    for bad in ("fd00::/8", "\u0661\u0660.0.0.0/8", "10.0.0.0/\u0668", "x", "10.0.0.0/33"):
        with pytest.raises(ValueError, match=rf"^not an IPv4 subnet: {bad!r}$"):
            parse_subnets(f"10.0.0.0/8, {bad}")


def _config_reads(text: str) -> str:
    try:
        return MeshConfig.from_mapping({"skipSubnets": text}).skip_subnets
    except MeshConfigError as error:
        return "error " + str(error).removeprefix("skipSubnets: ")


def _init_reads(text: str) -> str:
    args = argparse.Namespace(
        proxy_uid=PROXY_UID, inbound_port=4143, outbound_port=4140,
        inbound_ports_to_ignore="", outbound_ports_to_ignore="", subnets_to_ignore=text,
    )  # fmt: skip
    try:
        return ",".join(config_from_args(args).subnets_to_ignore)
    except ProxyConfigError as error:
        return "error " + str(error).removeprefix("--subnets-to-ignore: ")


@pytest.mark.parametrize("text", TEXTS)
def test_the_mesh_config_and_the_init_step_read_a_list_alike(text: str) -> None:
    """Same canonical text, or the same error: a list the webhook takes never stops a pod's init."""
    assert _config_reads(text) == _init_reads(text)


@pytest.mark.root
@pytest.mark.skipif(not (shutil.which("iptables") and shutil.which("ip")), reason="needs iptables, iproute2")
def test_every_list_the_config_takes_the_real_init_step_applies() -> None:
    """Oracle: iptables in a fresh network namespace. Each list the mesh config accepts is
    injected into a pod, and that pod's own init command runs for real: exit 0, and the nat table
    holds a RETURN for each subnet. IPv6 (which iptables refuses, stopping the pod's init step)
    is refused by the config instead."""
    accepted = [t for t in TEXTS if not _config_reads(t).startswith("error ")]
    assert accepted == TEXTS[:3]  # IPv6, junk and non-ASCII refused before any pod gets them
    netns = f"mtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True, timeout=30)
    try:
        for text in accepted:
            config = MeshConfig.from_mapping({"skipSubnets": text})
            pod = inject_pod({"metadata": {"name": "p"}, "spec": {"containers": [APP]}}, "ns", None, config)
            pod = pod.pod
            (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "mesh-init"]
            command = init["command"]
            assert command[:2] == ["mesh-proxy", "init"], command
            run = ["ip", "netns", "exec", netns, sys.executable, "-m", "proxy", *command[1:]]
            for args in ([*run, "--clean"], run):
                done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=runtime_env())
                assert done.returncode == 0, (text, done.stderr)
            save = subprocess.run(
                ["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            for cidr in config.skip_subnets.split(","):
                assert f"-d {cidr} " in save, (text, cidr, save)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
