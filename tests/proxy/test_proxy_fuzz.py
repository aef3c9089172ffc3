"""Throw random and half-valid bytes at the proxy: it answers or closes, never dies, keeps serving,
and never makes the app behind it see a request that it did not count (the desync oracle)."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.proxy.desync_backend import DesyncBackend
from tests.support.proxy_process import start_proxy

METHOD_NAMES = [b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"]
METHODS = st.sampled_from(METHOD_NAMES)
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Mesh-Src: evil/deployment/evil/evil-pod\r\n\r\n"
TOKENS = st.sampled_from(
    [
        b"Host: web", b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Connection: close",
        b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue", b"X-Mesh-Src: a/pod/b/c",
        b"X-Mesh-Src: ../../..", b": empty-name", b"Bad Name: x", b"X: \x00\x01", b"X:" + b"v" * 5000,
        # Connection tokens naming framing headers, and a body that is itself a request (issue #10).
        b"Connection: content-length", b"Connection: transfer-encoding", b"Connection: host",
        b"Content-Length: %d" % len(SMUGGLED),
    ]
)  # fmt: skip


@st.composite
def http_like(draw: st.DrawFn) -> bytes:
    """A request line and headers drawn from valid and invalid pieces, then a body."""
    target = draw(st.sampled_from([b"/", b"/status?code=200", b"*", b"http://127.0.0.1:1/", b"/%00", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]))
    lines = [draw(METHODS) + b" " + target + b" " + version]
    lines += draw(st.lists(TOKENS, max_size=8))
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    body = draw(st.one_of(st.binary(max_size=256), st.just(SMUGGLED)))
    return sep.join(lines) + sep + sep + body


@st.composite
def smuggling(draw: st.DrawFn) -> bytes:
    """A well-formed request whose body is a request, with a Connection token naming a framing header."""
    token = draw(
        st.sampled_from([b"content-length", b"Content-Length", b"transfer-encoding", b"host", b"te"])
    )
    method = draw(st.sampled_from([b"POST", b"PUT", b"GET"]))
    if draw(st.booleans()):
        framing = b"Content-Length: %d\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED)
    else:
        framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    return method + b" / HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, " + token + b"\r\n" + framing


CANONICAL_SMUGGLE = (
    b"POST / HTTP/1.1\r\nHost: web\r\nConnection: content-length\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    + SMUGGLED
)

# llhttp reads this as an HTTP/0.9 CONNECT to "HTTP/1.0"; forwarded as HTTP/1.1, the app sees a
# request line the client never sent.
HTTP09_CONNECT = b"CONNECT  HTTP/1.0\r\nConnection: close\r\n\r\n"


def _throw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass  # a reset is a fine answer to garbage


@pytest.mark.timeout(45)
def test_random_input_never_breaks_the_proxy_nor_desyncs_the_app(tmp_path: Path) -> None:
    backend = DesyncBackend()
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward",
        f"127.0.0.1:{backend.port}",
        "--detect-timeout",
        "0.2",
        "--response-timeout",
        "2",
    )
    try:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
            phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: it takes minutes here
        )
        @given(data=st.one_of(st.binary(max_size=512), http_like(), smuggling()))
        @example(data=CANONICAL_SMUGGLE)
        @example(data=HTTP09_CONNECT)
        def throw(data: bytes) -> None:
            seen_before, errors_before = len(backend.seen()), len(backend.errors)
            counted_before = proxy.value("request_total")
            _throw(proxy.inbound, data)
            assert proxy.process.poll() is None, "the proxy died"
            if not any(data.startswith(m + b" ") for m in METHOD_NAMES):
                return  # not HTTP to the proxy: relayed as bytes, nothing to count
            # The oracle: every request the app parsed was counted, is one the client sent, and
            # carries no mesh header. A request count is settled once the responses are out.
            new = backend.settled(quiet=0.05, limit=1.0)[seen_before:]
            deadline = time.monotonic() + 1.0
            counted = proxy.value("request_total") - counted_before
            while len(new) > counted and time.monotonic() < deadline:
                time.sleep(0.05)
                counted = proxy.value("request_total") - counted_before
            assert len(new) <= counted, f"the app parsed {len(new)} requests, the proxy counted {counted}"
            for request in new:
                line = f"{request.method} {request.target}".encode("latin-1")
                sent = any(line + end in data for end in (b" ", b"\r", b"\n"))
                assert sent, f"the app saw {line!r}, which the client never sent"
                assert request.mesh_headers() == [], request.headers
            assert backend.errors[errors_before:] == [], "the proxy forwarded what no HTTP parser accepts"

        throw()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=10)
        conn.request("GET", "/status?code=200")
        assert conn.getresponse().status == 200
        conn.close()
        assert proxy.admin_get("/metrics")[0] == 200
        assert "event=connection_error" not in proxy.log(), "an unexpected exception escaped a handler"
    finally:
        proxy.stop()
        backend.stop()
