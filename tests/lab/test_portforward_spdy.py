"""SPDY/3.1 port-forward (lab/spdy.py, lab/portforward.spdy_relay), checked with the real
`kubectl port-forward`: a stand-in API server (discovery, the pod, and the portforward upgrade,
served by the lab's own relay, which then connects to 127.0.0.1 where the kubelet would connect
inside the pod) refuses kubectl's WebSocket tunnel as an older API server would, so kubectl falls
back to SPDY and speaks it to the relay. What kubectl's clients send and receive is the oracle,
and the bytes kubectl sent are decoded by the pure framing as the frames kubectl means.

In the lab, the API server hands the node agent the same SPDY bytes (tunnelled or not); that path
needs a lab restarted from this code (the node agent), see the report of branch wt-topo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from lab import portforward, spdy

POD, NS = "web-0", "shop"
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")


class Recorder:
    """The upgraded socket, keeping every byte the client sent (for the framing's own check)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        self.received.extend(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class FakeApiServer(BaseHTTPRequestHandler):
    """Just enough of kube-apiserver for `kubectl port-forward POD`: discovery, the pod, the upgrade."""

    protocol_version = "HTTP/1.1"
    sessions: ClassVar[list[Recorder]] = []
    websocket_offers: ClassVar[list[str]] = []
    kubelet: ClassVar[int | None] = None  # set: pass the upgrade on to this kubelet, as the API server does

    def _json(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.endswith("/portforward"):  # a WebSocket upgrade is a GET
            self.do_POST()
        elif path == "/api":
            self._json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif path == "/apis":
            self._json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        elif path == "/api/v1":
            resources = [
                {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"]},
                {"name": "pods/portforward", "singularName": "", "namespaced": True,
                 "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
            ]  # fmt: skip
            self._json({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
        elif path == f"/api/v1/namespaces/{NS}/pods/{POD}":
            self._json({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": POD, "namespace": NS},
                        "spec": {"containers": [{"name": "app", "image": "x"}]},
                        "status": {"phase": "Running"}})  # fmt: skip
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        if self.path.split("?")[0] != f"/api/v1/namespaces/{NS}/pods/{POD}/portforward":
            self.send_error(404)
            return
        if self.headers.get("Upgrade", "").lower() == "websocket":
            # An API server without the WebSocket tunnel: kubectl falls back to SPDY.
            FakeApiServer.websocket_offers.append(self.headers.get("Sec-WebSocket-Protocol", ""))
            self.send_error(400, "no websocket here")
            return
        if FakeApiServer.kubelet is not None:
            self._to_kubelet(FakeApiServer.kubelet)
            return
        try:
            answer = portforward.spdy_handshake_response(self.headers)
        except portforward.PortForwardError as exc:
            self.send_error(exc.status, str(exc))
            return
        recorder = Recorder(portforward.switch_protocols(self, answer))
        FakeApiServer.sessions.append(recorder)
        portforward.spdy_relay(recorder, lambda port: socket.create_connection(("127.0.0.1", port), 5), 30)

    def _to_kubelet(self, port: int) -> None:
        """The upgrade request on to the kubelet's /portForward, then the bytes both ways."""
        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() != "host")
        upstream.sendall(f"POST /portForward/{NS}/{POD} HTTP/1.1\r\nHost: kubelet\r\n{head}\r\n".encode())
        self.close_connection = True
        client = self.connection
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(30)
        upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Path]:
    """The stand-in API server; yields a kubeconfig for it."""
    FakeApiServer.sessions, FakeApiServer.websocket_offers, FakeApiServer.kubelet = [], [], None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NS}}],
    }))  # fmt: skip
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()


def _echo_server() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _port_forward(
    kubeconfig: Path, remote: int, tunnel: bool = False, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """`kubectl port-forward POD :REMOTE`; the local port it chose. `tunnel`: kubectl first tries
    SPDY through a WebSocket (what the lab's API server takes), and falls back on our refusal."""
    env = {
        **(env or os.environ),
        "KUBECONFIG": str(kubeconfig),
        "KUBECTL_PORT_FORWARD_WEBSOCKETS": str(tunnel).lower(),
    }
    proc = subprocess.Popen(
        ["kubectl", "port-forward", *(args or (POD,)), f":{remote}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNN -> REMOTE"
    match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
    if match is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        if "SPDY is not served" in err:
            pytest.skip(
                "the running lab's node agent predates SPDY port-forward: restart the lab from this code"
            )
        raise AssertionError(f"kubectl port-forward said {line!r}: {err}")
    assert int(match.group(2)) == remote
    return proc, int(match.group(1))


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        sender.join(20)
        return bytes(got)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tunnel", [False, True])
def test_kubectl_port_forward_speaks_spdy_to_the_relay(api: Path, tunnel: bool) -> None:
    echo = _echo_server()
    port = str(echo.getsockname()[1])
    proc, local = _port_forward(api, int(port), tunnel)
    try:
        # Two connections at once, 1 MiB each way: what each client gets back is what it sent.
        payloads = [os.urandom(1 << 20), os.urandom(1 << 20)]
        results: list[bytes] = [b"", b""]

        def run(i: int) -> None:
            results[i] = _exchange(local, payloads[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [len(r) for r in results] == [1 << 20, 1 << 20]
        assert results == payloads
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        echo.close()
    assert bool(FakeApiServer.websocket_offers) == tunnel, FakeApiServer.websocket_offers
    assert "error" not in err.lower(), err

    # The bytes kubectl sent, read by the pure framing: per connection an error and a data stream
    # naming the port and one request id, then the data.
    (session,) = FakeApiServer.sessions
    events = spdy.ServerConnection().receive_data(bytes(session.received))
    opened = [e for e in events if isinstance(e, spdy.SynStream)]
    assert len(opened) == 4
    by_request: dict[str, set[str]] = {}
    for e in opened:
        assert e.headers["port"] == port
        by_request.setdefault(e.headers["requestid"], set()).add(e.headers["streamtype"])
    assert list(by_request.values()) == [{"error", "data"}, {"error", "data"}]
    data = sum(len(e.data) for e in events if isinstance(e, spdy.Data))
    assert data == 2 << 20


@pytest.mark.timeout(60)
def test_a_closed_port_is_reported_by_kubectl_from_the_error_stream(api: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # held bound, never listening: refused, and no one else gets it
    port = closed.getsockname()[1]
    proc, local = _port_forward(api, port)
    try:
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.sendall(b"hello")
            conn.settimeout(10)
            assert conn.recv(100) == b""  # closed by kubectl, nothing forwarded
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        closed.close()
    assert f"error forwarding port {port} to pod" in err and "Connection refused" in err, err


@pytest.mark.lab
@pytest.mark.root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("tunnel", [False, True])
def test_kubectl_port_forward_through_the_labs_api_server(lab: Any, lab_namespace: str, tunnel: bool) -> None:
    """The real path: kubectl → kube-apiserver (SPDY, or SPDY in its WebSocket tunnel) → the node
    agent → 127.0.0.1:4190 inside the pod, where nothing else can reach."""
    from tests.lab.test_portforward import _pod

    lab.apply(_pod("loopback"), lab_namespace)
    lab.wait_pods_ready(lab_namespace, count=1)
    proc, local = _port_forward(
        lab.kubeconfig, 4190, tunnel, "-n", lab_namespace, "pod/loopback", env=lab.env()
    )
    try:
        for _ in range(2):  # a connection after another, each its own pair of streams
            with socket.create_connection(("127.0.0.1", local), timeout=20) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
            assert got.startswith(b"HTTP/1.0 200") and got.endswith(b"inside the pod\n"), got
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "error" not in err.lower(), err


@pytest.mark.root
@pytest.mark.timeout(120)
def test_the_node_agents_kubelet_endpoint_serves_kubectl_port_forward(api: Path) -> None:
    """lab/agent.py's own handler (what the API server calls in the lab), behind the stand-in API
    server: its upgrade routing, then the relay connecting inside the "pod's" network namespace
    (here the test's own, where the echo server listens)."""
    from lab import agent

    runner = SimpleNamespace(namespace=NS, name=POD, netns=f"../../../proc/{os.getpid()}/ns/net")
    agent.KubeletHandler.agent = SimpleNamespace(lock=threading.Lock(), runners={"uid": runner})
    kubelet = ThreadingHTTPServer(("127.0.0.1", 0), agent.KubeletHandler)
    kubelet.daemon_threads = True
    threading.Thread(target=kubelet.serve_forever, daemon=True).start()
    FakeApiServer.kubelet = kubelet.server_address[1]
    echo = _echo_server()
    try:
        proc, local = _port_forward(api, echo.getsockname()[1])
        try:
            payload = os.urandom(256 << 10)
            assert _exchange(local, payload) == payload
            assert _exchange(local, b"again") == b"again"
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        assert "error" not in err.lower(), err
    finally:
        kubelet.shutdown()
        kubelet.server_close()
        echo.close()


# --- the framing, pure ---------------------------------------------------------------------


def test_the_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423 and zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def _client_frames(*frames: tuple[str, Any]) -> bytes:
    """Frames as a client writes them (an independent encoder: struct and zlib by hand)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    out = b""
    for kind, value in frames:
        if kind == "syn":
            stream_id, headers = value
            raw = struct.pack(">I", len(headers)) + b"".join(
                struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
                for k, v in headers.items()
            )
            block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
            body = struct.pack(">IIH", stream_id, 0, 0) + block
            out += struct.pack(">HHI", 0x8003, 1, len(body)) + body
        elif kind == "data":
            stream_id, payload, fin = value
            out += struct.pack(">II", stream_id, (int(fin) << 24) | len(payload)) + payload
        elif kind == "ping":
            out += struct.pack(">HHII", 0x8003, 6, 4, value)
    return out


def test_frames_split_anywhere_give_the_same_events() -> None:
    wire = _client_frames(
        ("syn", (1, {"streamType": "error", "port": "80", "requestID": "0"})),
        ("syn", (3, {"streamType": "data", "port": "80", "requestID": "0"})),
        ("data", (3, b"x" * 70000, False)),
        ("ping", 7),
        ("data", (3, b"", True)),
    )
    whole = spdy.ServerConnection().receive_data(wire)
    assert whole == [
        spdy.SynStream(1, {"streamtype": "error", "port": "80", "requestid": "0"}, False),
        spdy.SynStream(3, {"streamtype": "data", "port": "80", "requestid": "0"}, False),
        spdy.Data(3, b"x" * 70000, False),
        spdy.Ping(7),
        spdy.Data(3, b"", True),
    ]
    conn = spdy.ServerConnection()
    split = [e for i in range(0, len(wire), 13) for e in conn.receive_data(wire[i : i + 13])]
    assert split == whole


def test_the_servers_frames_decode_with_an_independent_reader() -> None:
    server = spdy.ServerConnection()
    wire = (
        server.syn_reply(1)
        + server.data(3, b"y" * 70000, fin=True)
        + server.ping(7)
        + server.rst_stream(5, 3)
    )
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    at, frames = 0, []
    while at < len(wire):
        first, flags_length = struct.unpack_from(">II", wire, at)
        body = wire[at + 8 : at + 8 + (flags_length & 0xFFFFFF)]
        at += 8 + len(body)
        frames.append((first, flags_length >> 24, body))
    (reply, _, reply_body), data1, data2, ping, rst = frames
    assert reply == 0x80030002 and struct.unpack_from(">I", reply_body)[0] == 1
    assert inflate.decompress(reply_body[4:]) == b"\0\0\0\0"  # no headers
    assert (data1[0], data1[1], len(data1[2]), data2[1], len(data2[2])) == (3, 0, 65536, 1, 70000 - 65536)
    assert ping == (0x80030006, 0, struct.pack(">I", 7))
    assert rst == (0x80030003, 0, struct.pack(">II", 5, 3))


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack(">HHI", 0x8002, 1, 10) + b"\0" * 10,  # SPDY/2
        struct.pack(">II", 3, 1 << 21),  # a 2 MiB frame announced
        struct.pack(">HHI", 0x8003, 1, 14) + struct.pack(">IIH", 1, 0, 0) + b"junk",  # not zlib
        _client_frames(("syn", (2, {"port": "1"}))),  # an even (server's) stream id
        _client_frames(("syn", (3, {"port": "1"})), ("syn", (1, {"port": "1"}))),  # ids going back
    ],
)
def test_protocol_errors_are_spdy_errors(wire: bytes) -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.ServerConnection().receive_data(wire)


def test_a_header_bomb_is_refused_before_it_is_inflated() -> None:
    raw = (
        struct.pack(">I", 1)
        + struct.pack(">I", 4)
        + b"port"
        + struct.pack(">I", 10 << 20)
        + b"9" * (10 << 20)
    )
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    block = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)  # ~10 KiB on the wire
    body = struct.pack(">IIH", 1, 0, 0) + block
    with pytest.raises(spdy.SpdyError, match="header block over"):
        spdy.ServerConnection().receive_data(struct.pack(">HHI", 0x8003, 1, len(body)) + body)
