"""Throw random and half-valid bytes at the proxy: it answers or closes, never dies, keeps serving."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_backends import AppServer
from proxy_harness import start_proxy

METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"])
TOKENS = st.sampled_from(
    [
        b"Host: web", b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Connection: close",
        b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue", b"X-Mesh-Src: a/pod/b/c",
        b"X-Mesh-Src: ../../..", b": empty-name", b"Bad Name: x", b"X: \x00\x01", b"X:" + b"v" * 5000,
    ]
)  # fmt: skip


@st.composite
def http_like(draw: st.DrawFn) -> bytes:
    """A request line and headers drawn from valid and invalid pieces, then an arbitrary body."""
    target = draw(st.sampled_from([b"/", b"/status?code=200", b"*", b"http://127.0.0.1:1/", b"/%00", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]))
    lines = [draw(METHODS) + b" " + target + b" " + version]
    lines += draw(st.lists(TOKENS, max_size=8))
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    return sep.join(lines) + sep + sep + draw(st.binary(max_size=256))


def _throw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass  # a reset is a fine answer to garbage


def test_random_input_never_breaks_the_proxy(app: AppServer, tmp_path: Path) -> None:
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward",
        f"127.0.0.1:{app.port}",
        "--detect-timeout",
        "0.2",
        "--response-timeout",
        "2",
    )
    try:

        @settings(
            max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
        @given(data=st.one_of(st.binary(max_size=512), http_like()))
        def throw(data: bytes) -> None:
            _throw(proxy.inbound, data)
            assert proxy.process.poll() is None, "the proxy died"

        throw()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=10)
        conn.request("GET", "/status?code=200")
        assert conn.getresponse().status == 200
        conn.close()
        assert proxy.admin_get("/metrics")[0] == 200
        assert "event=connection_error" not in proxy.log(), "an unexpected exception escaped a handler"
    finally:
        proxy.stop()
