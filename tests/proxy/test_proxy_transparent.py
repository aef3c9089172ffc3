"""Transparent mode as root: iptables from `mesh-proxy init`, proxies as UID 2102, unmodified curl."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kubectl_mesh.contract import PROXY_UID
from tests.proxy.netns_pods import HERE, PodPair

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (shutil.which("iptables") and shutil.which("ip") and shutil.which("curl")),
        reason="needs iptables, iproute2 and curl (apt-get install -y iptables iproute2 curl)",
    ),
]
APP_PORT = 8080


def test_init_is_idempotent(pods: PodPair) -> None:
    first = pods.client.init()
    second = pods.client.init()

    def rules(save: str) -> list[str]:
        return [line for line in save.splitlines() if line.startswith(("-A", ":MESH"))]

    assert rules(first) == rules(second)
    assert any("--uid-owner 2102" in line for line in rules(first))
    pods.client.exec(sys.executable, "-m", "proxy", "init", "--clean")
    assert "MESH" not in pods.client.exec("iptables-save", "-t", "nat").stdout


def test_unmodified_client_is_counted_on_both_sides(pods: PodPair) -> None:
    client, server = pods.client, pods.server
    server.spawn("app", sys.executable, str(HERE / "proxy_backends.py"), "0.0.0.0", str(APP_PORT))
    for pod in (client, server):
        pod.init()
        pod.start_proxy()
    for pod in (client, server):
        assert pod.proxy is not None
        status = Path(f"/proc/{pod.proxy.pid}/status").read_text()
        assert f"Uid:\t{PROXY_UID}\t" in status, "the proxy runs as its own UID"

    url = f"http://{server.ip}:{APP_PORT}/headers"
    for _ in range(3):
        out = client.exec("curl", "-si", "--noproxy", "*", "--max-time", "10", url, timeout=30).stdout
        head, _, body = out.partition("\n\n")  # text mode turned CRLF into LF
        assert head.startswith("HTTP/1.1 200"), out
        assert "x-mesh-dst" not in head.lower(), "the client app never sees the mesh's response header"
        assert "x-mesh-src" not in json.loads(body)["headers"], "the server app never sees x-mesh-src"

    authority = f"{server.ip}:{APP_PORT}"
    [outbound] = [s for s in client.samples("response_total") if s.get("status_code") == "200"]
    assert outbound == {
        "direction": "outbound", "authority": authority, "dst_namespace": "shop", "dst_deployment": "web",
        "dst_pod": "web-1", "classification": "success", "status_code": "200", "__value__": "3.0",
    }, client.log("proxy")  # fmt: skip
    [inbound] = [s for s in server.samples("response_total") if s.get("status_code") == "200"]
    assert inbound == {
        "direction": "inbound", "authority": authority, "src_namespace": "front", "src_deployment": "vote",
        "src_pod": "vote-1", "classification": "success", "status_code": "200", "__value__": "3.0",
    }, server.log("proxy")  # fmt: skip
    # The TCP view: the client's proxy opened connections to the server's original address,
    # named by the server's workload; the server's proxy accepted them from the client's workload.
    dst = [s for s in client.samples("tcp_open_total") if s.get("peer") == "dst"]
    assert dst and {(s["authority"], s.get("dst_deployment")) for s in dst} == {(authority, "web")}, dst
    src = [s for s in server.samples("tcp_open_total") if s.get("peer") == "src"]
    assert src and {s.get("src_deployment") for s in src} == {"vote"}, src
