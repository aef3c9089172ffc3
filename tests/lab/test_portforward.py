"""Port-forward, both ends: the lab's kubelet side (lab/portforward.py) and the CLI's client
(kubectl_mesh/portforward.py, what `kubectl mesh tap` uses). The `kubernetes` package's own
`portforward` client is the oracle for the lab's side; then the CLI's client goes through the same
relay, and both go through the real API server to a pod's loopback-only port, as whoever RBAC
allows, and no one else."""

from __future__ import annotations

import http.server
import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websocket
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward as k8s_portforward
from kubernetes.stream.ws_client import PortForward

from kubectl_mesh.kube import KubeClient, KubeConfig, KubeError
from kubectl_mesh.portforward import PortForward as MeshPortForward
from lab import cluster, portforward
from tests.support import rbac


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A TCP server on 127.0.0.1 that answers each connection with `hello <n>\\n` then echoes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        n = 0
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            n += 1
            conn.sendall(f"hello {n}\n".encode())
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _echo(conn: socket.socket) -> None:
    with conn:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)


class _Kubelet(http.server.BaseHTTPRequestHandler):
    """The agent's handler, cut down to the port-forward call with a plain loopback connect."""

    def do_GET(self) -> None:
        import urllib.parse

        url = urllib.parse.urlsplit(self.path)
        try:
            protocol = portforward.choose_protocol(self.headers.get("Sec-WebSocket-Protocol", ""))
            ports = portforward.parse_ports(urllib.parse.parse_qs(url.query))
        except portforward.PortForwardError as exc:
            self.send_error(exc.status, str(exc))
            return
        self.wfile.write(portforward.handshake_response(self.headers["Sec-WebSocket-Key"], protocol))
        self.wfile.flush()
        self.close_connection = True
        portforward.relay(
            self.connection, ports, lambda p: socket.create_connection(("127.0.0.1", p), timeout=5), 30.0
        )

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def kubelet() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Kubelet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _read_until(sock: Any, expected: bytes, timeout: float = 10) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while expected not in got and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_the_kubernetes_clients_portforward_reaches_each_port_through_the_relay(kubelet: int) -> None:
    first, _ = _echo_server()
    second, _ = _echo_server()
    ports = [first.getsockname()[1], second.getsockname()[1]]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{kubelet}/portForward/ns/pod?ports={ports[0]},{ports[1]}",
        subprotocols=["v4.channel.k8s.io"],
        timeout=10,
    )
    forward = PortForward(ws, ports)
    try:
        a, b = forward.socket(ports[0]), forward.socket(ports[1])
        a.settimeout(10)
        b.settimeout(10)
        assert _read_until(a, b"\n") == b"hello 1\n"
        assert _read_until(b, b"\n") == b"hello 1\n"
        payload = bytes(range(256)) * 4096  # 1 MiB each way, through the channel framing
        threading.Thread(target=a.sendall, args=(payload,), daemon=True).start()
        echoed = b""
        while len(echoed) < len(payload):
            echoed += a.recv(65536)
        assert echoed == payload
        b.sendall(b"second port\n")
        assert _read_until(b, b"second port\n") == b"second port\n"
    finally:
        forward.close()
        first.close()
        second.close()


def test_a_closed_port_reports_on_its_error_channel(kubelet: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{kubelet}/portForward/ns/pod?ports={port}",
        subprotocols=["v4.channel.k8s.io"],
        timeout=10,
    )
    forward = PortForward(ws, [port])
    deadline = time.monotonic() + 10
    while forward.error(port) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"error forwarding port {port} to pod" in (forward.error(port) or "")
    forward.close()


@pytest.mark.parametrize(
    ("query", "protocol", "status"),
    [
        ("ports=80", "base64.channel.k8s.io", 400),
        ("", "v4.channel.k8s.io", 400),
        ("ports=99999", "v4.channel.k8s.io", 400),
    ],
)
def test_bad_requests_are_refused_before_the_upgrade(
    kubelet: int, query: str, protocol: str, status: int
) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(
            f"ws://127.0.0.1:{kubelet}/portForward/ns/pod?{query}", subprotocols=[protocol], timeout=10
        )
    assert info.value.status_code == status


def test_the_clis_port_forward_client_streams_both_ways_and_reports_port_errors(kubelet: int) -> None:
    server, _ = _echo_server()
    port = server.getsockname()[1]
    api = KubeClient(KubeConfig(server=f"http://127.0.0.1:{kubelet}", context="test"))
    stream = MeshPortForward(api, "ns", "pod", port)
    try:
        got = b""
        while b"\n" not in got:
            got += stream.recv()
        assert got == b"hello 1\n"
        payload = bytes(range(256)) * 1024
        stream.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += stream.recv()
        assert echoed == payload
    finally:
        stream.close()
        server.close()
    with socket.create_server(("127.0.0.1", 0)) as unused:
        closed = unused.getsockname()[1]
    stream = MeshPortForward(api, "ns", "pod", closed)
    with pytest.raises(
        KubeError, match=f"port-forward to port {closed}: error forwarding port {closed} to pod"
    ):
        stream.recv()
    stream.close()


# --- through the real API server ----------------------------------------------------------

LOOPBACK_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"inside the pod\\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 4190), H).serve_forever()
"""


def _pod(name: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}}}
        spec:
          containers:
          - name: main
            image: python:3.11
            command: [python3, -c, {json.dumps(LOOPBACK_SERVER)}]
            readinessProbe:
              exec: {{command: [python3, -c, "import socket; socket.create_connection(('127.0.0.1', 4190))"]}}
              periodSeconds: 1
        """
    )


def _get_through(api: client.CoreV1Api, namespace: str, pod: str) -> bytes:
    forward = k8s_portforward(api.connect_get_namespaced_pod_portforward, pod, namespace, ports="4190")
    sock = forward.socket(4190)
    sock.settimeout(10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = _read_until(sock, b"inside the pod\n")
    forward.close()
    return answer


def _client_as(lab: Any, namespace: str, service_account: str) -> client.CoreV1Api:
    token = rbac.token(lab, namespace, service_account)
    config = client.Configuration(host=lab.api_url)
    config.ssl_ca_cert = str(cluster.PKI_DIR / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(config))


@pytest.mark.lab
@pytest.mark.root
def test_portforward_through_the_api_server_reaches_the_pods_loopback_for_whom_rbac_allows(
    lab: Any, lab_namespace: str
) -> None:
    lab.apply(_pod("loopback"), lab_namespace)
    lab.wait_pods_ready(lab_namespace, count=1)
    # The admin (system:masters), through the API server's pods/portforward to the agent.
    assert _get_through(lab.kube.core, lab_namespace, "loopback").endswith(b"inside the pod\n")
    # Not reachable from the pod network: it listens on the pod's loopback only.
    pod_ip = lab.pod(lab_namespace, "loopback")["status"]["podIP"]
    with pytest.raises(OSError):
        socket.create_connection((pod_ip, 4190), timeout=3)

    # viewer: no permission at all; tapper: may read pods and port-forward to them.
    tapper = rbac.account(lab_namespace, "tapper", rbac.READ_PODS, rbac.PORT_FORWARD)
    lab.apply(rbac.accounts_yaml(rbac.account(lab_namespace, "viewer"), tapper), lab_namespace)
    viewer = _client_as(lab, lab_namespace, "viewer")
    with pytest.raises(ApiException) as refused:
        _get_through(viewer, lab_namespace, "loopback")
    # The package reports a refused WebSocket handshake as status 0, the code in its reason.
    assert "Handshake status 403" in str(refused.value), refused.value
    tapper = _client_as(lab, lab_namespace, "tapper")
    assert _get_through(tapper, lab_namespace, "loopback").endswith(b"inside the pod\n")

    # The CLI's own client, with the same two identities' tokens, through the same API server.
    for account, allowed in (("viewer", False), ("tapper", True)):
        config = KubeConfig(
            server=lab.api_url,
            context=account,
            ca_data=(cluster.PKI_DIR / "ca.crt").read_bytes(),
            token=rbac.token(lab, lab_namespace, account),
        )
        if not allowed:
            with pytest.raises(KubeError) as info:
                MeshPortForward(KubeClient(config), lab_namespace, "loopback", 4190)
            assert info.value.status == 403 and "pods/portforward" in info.value.hint
            continue
        stream = MeshPortForward(KubeClient(config), lab_namespace, "loopback", 4190)
        stream.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := stream.recv():
            got += chunk
        stream.close()
        assert got.startswith(b"HTTP/1.0 200") and got.endswith(b"inside the pod\n")
