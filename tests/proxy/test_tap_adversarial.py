"""The tap under hostile traffic (adversarial review of #14): requests that end in odd places each
give one `req`, one `rsp` and one `end` whose facts match what the client got, and the metrics
count the same whether or not someone taps."""

from __future__ import annotations

import http.client
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.proxy.proxy_backends import AppServer
from tests.proxy.test_proxy_adversarial import LoopbackServer
from tests.proxy.test_tap import TapReader
from tests.support.proxy_process import ProxyProcess


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class InterimThenFinal(LoopbackServer):
    """An app that answers `100 Continue` a moment after the request head, then the response."""

    def connected(self, sock: socket.socket, n: int) -> None:
        import threading

        def serve() -> None:
            _read_head(sock)
            time.sleep(0.3)
            try:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                time.sleep(0.3)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass

        threading.Thread(target=serve, daemon=True).start()


@pytest.fixture
def interim_app() -> Iterator[InterimThenFinal]:
    server = InterimThenFinal()
    yield server
    server.stop()


@pytest.fixture
def interim_proxy(interim_app: InterimThenFinal, tmp_path) -> Iterator[ProxyProcess]:  # type: ignore[no-untyped-def]
    from tests.support.proxy_process import SERVER_ID, start_proxy

    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{interim_app.port}", identity=SERVER_ID)
    yield proxy
    proxy.stop()


def test_a_client_gone_while_a_1xx_is_relayed_still_gets_rsp_end_and_is_counted(
    interim_proxy: ProxyProcess,
) -> None:
    """The client resets its connection while the app is slow; the proxy's relay of the app's
    `100 Continue` then fails. The request was shown (req): it must get its rsp and end, and the
    metrics must count it, as for any other client that leaves before the response."""
    tapped = TapReader(interim_proxy)
    try:
        sock = socket.create_connection(("127.0.0.1", interim_proxy.inbound))
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: the next send to it fails
        tapped.wait(lambda: len(tapped.of("req")) == 1, "the req")
        time.sleep(1.0)  # the app answers 100 at 0.3 s, 200 at 0.6 s
        assert len(tapped.of("rsp")) == 1 and len(tapped.of("end")) == 1, tapped.events
        assert tapped.of("end")[0]["error"] == "client_gone"
    finally:
        tapped.close()
    assert interim_proxy.value("request_total", direction="inbound") == 1


def test_chunked_responses_report_the_body_length_not_the_framing(
    app: AppServer, server_proxy: ProxyProcess, tapped: TapReader
) -> None:
    """`end`'s response_bytes (Linkerd's response-length) is the response body the client got
    (docs/architecture.md: "response body bytes"); chunk sizes and CRLFs are not body."""
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
    conn.request("GET", "/chunked?n=5&size=100")
    response = conn.getresponse()
    body = response.read()
    assert response.getheader("Transfer-Encoding") == "chunked"
    conn.close()
    tapped.wait(lambda: len(tapped.of("end")) == 1, "the end")
    assert tapped.of("end")[0]["response_bytes"] == len(body)


from tests.proxy.test_tap import tapped  # noqa: E402,F401  (the fixture)
