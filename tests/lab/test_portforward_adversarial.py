"""Port-forward against hostile or stalled peers (adversarial review of #14), without the lab: the
lab's relay (lab/portforward.py) with a client that stops reading, and the CLI's client
(kubectl_mesh/portforward.py) against a WebSocket server that fragments, pings and sends text."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from kubectl_mesh.kube import KubeClient, KubeConfig, KubeError
from kubectl_mesh.portforward import PortForward as MeshPortForward
from tests.lab.test_portforward import kubelet  # noqa: F401  (the fixture: a relay on loopback)


class Flood:
    """A port whose server writes as fast as it is allowed to, counting what the kernel took."""

    LIMIT = 512 * 1024 * 1024  # bounded: stops here whatever happens

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(0.2)
        block = b"x" * 65536
        with conn:
            while not self.stop.is_set() and self.sent < self.LIMIT:
                try:
                    self.sent += conn.send(block)
                except TimeoutError:
                    continue
                except OSError:
                    return


def test_the_relay_stops_reading_a_port_when_its_client_stops_reading(kubelet: int) -> None:  # noqa: F811
    """A tap client (or the API server) that stalls must not make the node agent buffer
    everything the port sends: the relay holds a bounded amount and the port's writer blocks."""
    flood = Flood()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{kubelet}/portForward/ns/pod?ports={flood.port}",
        subprotocols=["v4.channel.k8s.io"],
        timeout=10,
    )
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        time.sleep(3.0)  # the client reads nothing
        first = flood.sent
        time.sleep(1.0)
        assert flood.sent < 64 * 1024 * 1024, f"the port got rid of {flood.sent >> 20} MiB"
        assert flood.sent == first  # blocked: nothing more is taken while the client stalls
    finally:
        flood.stop.set()
        ws.close()
        flood.server.close()


class HostileWebSocket:
    """A port-forward endpoint that speaks WebSocket in the legal but awkward ways: the data in
    fragments with a ping between them, a text frame, the port number split over two frames."""

    def __init__(self, script: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.script = script
        self.pongs = 0
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from wsproto.connection import Connection, ConnectionType
        from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

        from lab.portforward import handshake_response

        conn, _ = self.server.accept()
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        if self.script == "close-in-handshake":
            conn.close()
            return
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        ws = Connection(ConnectionType.SERVER)
        if self.script == "refused-in-one-segment":  # the 101, the channels' ports, the error, close
            conn.sendall(
                handshake_response(key, "v4.channel.k8s.io")
                + ws.send(BytesMessage(data=b"\x00\x10\x27"))
                + ws.send(BytesMessage(data=b"\x01\x10\x27"))
                + ws.send(BytesMessage(data=b"\x01error forwarding port 10000 to pod: refused"))
                + ws.send(CloseConnection(code=1000))
            )
            conn.close()
            self.done.set()
            return
        conn.sendall(handshake_response(key, "v4.channel.k8s.io"))
        out = b""
        out += ws.send(BytesMessage(data=b"\x00\x10", message_finished=False))  # port, in two frames
        out += ws.send(Ping(payload=b"are you there"))
        out += ws.send(BytesMessage(data=b"\x27", message_finished=True))
        out += ws.send(BytesMessage(data=b"\x01\x10\x27"))
        big = bytes(range(256)) * 8192  # 2 MiB in one message, then in 3 fragments
        out += ws.send(BytesMessage(data=b"\x00" + big))
        out += ws.send(BytesMessage(data=b"\x00" + big[:1000], message_finished=False))
        out += ws.send(Ping(payload=b"again"))
        out += ws.send(BytesMessage(data=big[1000:2_000_000], message_finished=False))
        out += ws.send(BytesMessage(data=big[2_000_000:], message_finished=True))
        out += ws.send(TextMessage(data="\x00 and text\n"))
        out += ws.send(CloseConnection(code=1000))
        conn.sendall(out)
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            ws.receive_data(chunk)
            for event in ws.events():
                if isinstance(event, Pong):
                    self.pongs += 1
        conn.close()
        self.done.set()


@pytest.fixture
def hostile() -> Iterator[Any]:
    servers: list[HostileWebSocket] = []

    def make(script: str) -> HostileWebSocket:
        servers.append(HostileWebSocket(script))
        return servers[-1]

    yield make
    for server in servers:
        server.server.close()


def test_the_clis_client_joins_fragments_answers_pings_and_takes_text_frames(hostile: Any) -> None:
    server = hostile("awkward")
    api = KubeClient(KubeConfig(server=f"http://127.0.0.1:{server.port}", context="test"))
    stream = MeshPortForward(api, "ns", "pod", 10000)
    got = b""
    while chunk := stream.recv():
        got += chunk
    stream.close()
    big = bytes(range(256)) * 8192
    assert got == big + big + b" and text\n"
    assert server.done.wait(5) and server.pongs == 2


def test_a_server_that_hangs_up_in_the_handshake_is_a_one_line_error(hostile: Any) -> None:
    server = hostile("close-in-handshake")
    api = KubeClient(KubeConfig(server=f"http://127.0.0.1:{server.port}", context="test"))
    with pytest.raises(KubeError, match="the API server closed the connection"):
        MeshPortForward(api, "ns", "pod", 10000)


def test_frames_that_come_with_the_handshakes_answer_are_not_lost(hostile: Any) -> None:
    """A port that refuses: the kubelet's 101, its error and its close can arrive in one read.
    The error must reach the user (not "closed"): frames read with the 101 are handled first."""
    server = hostile("refused-in-one-segment")
    api = KubeClient(KubeConfig(server=f"http://127.0.0.1:{server.port}", context="test"))
    stream = MeshPortForward(api, "ns", "pod", 10000)
    assert server.done.wait(5)
    time.sleep(0.2)  # the close is there too before the first recv()
    with pytest.raises(KubeError, match="port-forward to port 10000: error forwarding port 10000"):
        stream.recv()
    stream.close()
