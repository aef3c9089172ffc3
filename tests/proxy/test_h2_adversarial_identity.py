"""HTTP/2 attacks on the mesh's identity fields: x-mesh-* smuggled past the proxy that strips them.

Oracles: the header lists the backend received (never an x-mesh-* field the client wrote), the
response each client got, and the labels the proxy counted.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import SettingsFrame

from proxy import http1
from tests.support.proxy_process import SERVER_ID, start_proxy

FORGED = b"evil/deployment/forged/forged-1"


class H2cUpgradeBackend:
    """An HTTP/1.1 server that switches to h2c when the Upgrade list offers it anywhere (as Go's
    `x/net/http2/h2c`) and an HTTP2-Settings field came, whatever `Connection` lists (more lenient
    than Go); it records every request's fields (HTTP/1.1 or HTTP/2) it got."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict[bytes, bytes]] = []
        self.upgraded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        with sock:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            self.requests.append(fields)
            offers = [t.strip().lower() for t in fields.get(b"upgrade", b"").split(b",")]
            if b"h2c" not in offers or b"http2-settings" not in fields:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
                return
            self.upgraded += 1
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
            conn.initiate_upgrade_connection(fields[b"http2-settings"])
            conn.send_headers(1, [(b":status", b"200")])
            conn.send_data(1, b"upgraded", end_stream=True)
            sock.sendall(conn.data_to_send())
            self._h2(sock, conn, rest)

    def _h2(self, sock: socket.socket, conn: h2.connection.H2Connection, data: bytes) -> None:
        while True:
            for event in conn.receive_data(data) if data else []:
                if isinstance(event, h2.events.RequestReceived):
                    self.requests.append(dict(event.headers))
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, b"h2", end_stream=True)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return


@pytest.fixture
def upgrader() -> Iterator[H2cUpgradeBackend]:
    server = H2cUpgradeBackend()
    yield server
    server.stop()


@pytest.mark.parametrize("offer", [b"h2c", b"websocket, h2c", b"H2C ,foo", b"foo, h2c/1"])
def test_an_h2c_upgrade_offered_in_a_list_is_declined_so_no_stream_passes_unparsed(
    offer: bytes, upgrader: H2cUpgradeBackend, tmp_path: Path
) -> None:
    """A server may pick any protocol of the Upgrade list (Go's h2c does, if h2c is among them).
    Switched, the connection is relayed as opaque bytes: the client's later HTTP/2 streams reach
    the app with whatever x-mesh-* fields it wrote. The proxy declines h2c wherever it is offered.
    (HTTP2-Settings is not named in `Connection`, so the proxy forwards it as any field.)"""
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{upgrader.port}", identity=SERVER_ID)
    try:
        settings = base64.urlsafe_b64encode(SettingsFrame(0).serialize_body()).rstrip(b"=")
        request = (
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\n"
            b"Upgrade: %b\r\nHTTP2-Settings: %b\r\nx-mesh-src: %b\r\n\r\n" % (offer, settings, FORGED)
        )
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_upgrade_connection()
        conn.send_headers(
            3,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/after"), (b":authority", b"web"),
             (b"x-mesh-src", FORGED)],
            end_stream=True,
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as sock:
            sock.sendall(request)
            first = sock.recv(65536)
            if first.startswith(b"HTTP/1.1 101"):  # switched: the client goes on in HTTP/2
                sock.sendall(conn.data_to_send())
                sock.settimeout(1)
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        assert first.startswith(b"HTTP/1.1 200"), first[:100]  # the request was served, as HTTP/1.1
        assert upgrader.upgraded == 0
        for fields in upgrader.requests:  # no request reached the app with a mesh field
            assert not [n for n in fields if n.lower().startswith(b"x-mesh-")], fields
            assert b"upgrade" not in fields
    finally:
        proxy.stop()


def test_offers_h2c_reads_every_token_of_the_list() -> None:
    assert http1.offers_h2c(b"h2c") and http1.offers_h2c(b"websocket, H2C") and http1.offers_h2c(b"h2c/1.0")
    assert (
        not http1.offers_h2c(b"websocket") and not http1.offers_h2c(b"h2") and not http1.offers_h2c(b"xh2c")
    )
