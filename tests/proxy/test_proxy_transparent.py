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


GRPC_PORT = 50051
GRPC_CLIENT = """
import grpc, json, sys
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
rpc = "/mesh.test.Echo/"
forged = [("x-mesh-src", "evil/deployment/forged/forged-1")]
out = {}
out["unary"] = channel.unary_unary(rpc + "Unary")(b"hi", metadata=forged, timeout=10).decode()
out["server_stream"] = [m.decode() for m in channel.unary_stream(rpc + "ServerStream")(b"3", timeout=10)]
out["client_stream"] = channel.stream_unary(rpc + "ClientStream")(iter([b"a", b"b"]), timeout=10).decode()
out["bidi"] = [m.decode() for m in channel.stream_stream(rpc + "Bidi")(iter([b"x", b"y"]), timeout=10)]
out["seen"] = json.loads(channel.unary_unary(rpc + "Seen")(b"", metadata=forged, timeout=10))
try:
    channel.unary_unary(rpc + "Unary")(b"fail:5", timeout=10)
except grpc.RpcError as error:
    out["failed"] = error.code().value[0]
print(json.dumps(out))
"""


def test_grpc_between_unmodified_apps_through_transparent_proxies(pods: PodPair, tmp_path: Path) -> None:
    """Prior-knowledge h2c redirected by iptables on both sides: detected, proxied stream by stream,
    counted per grpc_status on both sides with the peer's workload, and no mesh field reaches an app."""
    client, server = pods.client, pods.server
    app_script = HERE.parent / "support" / "grpc_app.py"
    server.spawn("grpc-app", sys.executable, str(app_script), str(tmp_path / "port"), f"0.0.0.0:{GRPC_PORT}")
    for pod in (client, server):
        pod.init()
        pod.start_proxy()
    out = client.exec(sys.executable, "-c", GRPC_CLIENT, f"{server.ip}:{GRPC_PORT}", timeout=60).stdout
    result = json.loads(out)
    assert result["unary"] == "echo:hi"
    assert result["server_stream"] == ["0", "1", "2"]
    assert result["client_stream"] == "a|b"
    assert result["bidi"] == ["re:x", "re:y"]
    assert result["failed"] == 5
    assert not [k for k in result["seen"] if k.startswith("x-mesh-")], result["seen"]

    def by_status(samples: list[dict[str, str]], peer: dict[str, str]) -> dict[str, float]:
        counts: dict[str, float] = {}
        for s in samples:
            assert {k: s.get(k) for k in peer} == peer, s
            counts[s["grpc_status"]] = counts.get(s["grpc_status"], 0) + float(s["__value__"])
        return counts

    dst = {"dst_namespace": "shop", "dst_deployment": "web", "dst_pod": "web-1"}
    src = {"src_namespace": "front", "src_deployment": "vote", "src_pod": "vote-1"}
    assert by_status(client.samples("response_total"), {"direction": "outbound", **dst}) == {"0": 5, "5": 1}
    assert by_status(server.samples("response_total"), {"direction": "inbound", **src}) == {"0": 5, "5": 1}
