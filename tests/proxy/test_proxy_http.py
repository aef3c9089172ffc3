"""The proxy over real sockets: a real HTTP app behind it, real clients in front of it."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.proxy_backends import AppServer, TcpServer
from tests.support.proxy_process import CLIENT_ID, SERVER_ID, ProxyProcess, raw_exchange, start_proxy

SERVER_IDENTITY = "/".join(SERVER_ID)


def _get(proxy: ProxyProcess, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.inbound, timeout=10)
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_forwards_request_and_sets_identity_header(server_proxy: ProxyProcess) -> None:
    status, headers, body = _get(server_proxy, "/headers", **{"X-Mesh-Src": "attacker/deployment/a/b"})
    seen = json.loads(body)["headers"]
    assert status == 200
    assert "x-mesh-src" not in seen, "the app must never see the mesh's request header"
    assert headers["x-mesh-dst"] == SERVER_IDENTITY, "the app's own x-mesh-dst must be replaced"
    # The client named itself (forged, but it is all an unmeshed proxy can know): labels follow the header.
    assert server_proxy.value("request_total", direction="inbound", src_namespace="attacker") == 1


def test_keep_alive_reuses_one_upstream_connection(server_proxy: ProxyProcess, app: AppServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
    ports = set()
    for _ in range(20):
        conn.request("GET", "/headers")
        r = conn.getresponse()
        ports.add(json.loads(r.read())["client"])
    conn.close()
    assert app.requests == 20
    assert len(ports) == 1, "20 requests on one client connection should use one upstream connection"
    assert server_proxy.value("tcp_open_total", direction="inbound", peer="dst") == 1
    assert server_proxy.value("tcp_open_total", direction="inbound", peer="src") == 1
    assert server_proxy.value("response_total", direction="inbound", classification="success") == 20


def test_pipelined_requests_answered_in_order(server_proxy: ProxyProcess) -> None:
    reqs = b"".join(b"GET /status?code=%d HTTP/1.1\r\nHost: web\r\n\r\n" % c for c in (200, 201, 202))
    reqs += b"GET /status?code=203 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    out = raw_exchange(server_proxy.inbound, reqs)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]
    assert statuses == [200, 201, 202, 203]


def test_chunked_response_passes_through(server_proxy: ProxyProcess) -> None:
    status, headers, body = _get(server_proxy, "/chunked?n=50")
    assert status == 200
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(f"chunk-{i};".encode() for i in range(50))


def test_large_chunked_response_is_relayed_intact(server_proxy: ProxyProcess) -> None:
    status, headers, body = _get(server_proxy, "/chunked?n=40&size=100000")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(f"chunk-{i};".encode() + b"p" * 100000 for i in range(40))


def test_chunked_request_body_streams_to_app(server_proxy: ProxyProcess) -> None:
    pieces = [os.urandom(1000 + i) for i in range(40)]
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
    conn.request("POST", "/count", body=iter(pieces), encode_chunked=True)
    result = json.loads(conn.getresponse().read())
    assert result == {"size": sum(map(len, pieces)), "sha256": hashlib.sha256(b"".join(pieces)).hexdigest()}


def test_close_delimited_response_reaches_http11_client_chunked_and_http10_client_closed(
    server_proxy: ProxyProcess,
) -> None:
    status, headers, body = _get(server_proxy, "/until-close")
    assert (status, body) == (200, b"no length, ends at close\n")
    assert headers.get("transfer-encoding") == "chunked", "keeps the HTTP/1.1 client's connection usable"
    out = raw_exchange(server_proxy.inbound, b"GET /chunked?n=2 HTTP/1.0\r\nHost: web\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower(), "an HTTP/1.0 client cannot read chunks"
    assert body == b"chunk-0;chunk-1;"


def test_head_response_has_no_body_and_connection_stays_usable(server_proxy: ProxyProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
    conn.request("HEAD", "/headers")
    r = conn.getresponse()
    assert r.status == 200 and int(r.headers["Content-Length"]) > 0
    assert r.read() == b""
    conn.request("GET", "/status?code=202")
    assert conn.getresponse().status == 202
    conn.close()


def test_expect_100_continue(server_proxy: ProxyProcess) -> None:
    body = b"y" * 5000
    with socket.create_connection(("127.0.0.1", server_proxy.inbound), timeout=10) as s:
        s.sendall(
            b"POST /count HTTP/1.1\r\nHost: web\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = s.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), "the app's 100 Continue reaches the client first"
        s.sendall(body)
        final = b""
        while b"}" not in final:
            final += s.recv(65536)
    assert b"HTTP/1.1 200" in final
    assert json.loads(final.split(b"\r\n\r\n", 1)[1])["size"] == 5000


def test_early_response_without_reading_body(server_proxy: ProxyProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
    conn.putrequest("POST", "/reject")
    conn.putheader("Content-Length", str(10 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"z" * 65536)  # far less than promised: the app answers early
    assert conn.getresponse().status == 413
    conn.close()
    assert _get(server_proxy, "/status?code=200")[0] == 200


def test_websocket_upgrade_switches_to_relay(server_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", server_proxy.inbound), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        for word in (b"hello\n", b"mesh\n"):
            s.sendall(word)
            echoed = b""
            while not echoed.endswith(b"\n"):
                echoed += s.recv(65536)
            assert echoed == word.upper()
    assert server_proxy.value("response_total", status_code="101") == 1


@pytest.mark.slow
def test_large_bodies_stream_with_flat_memory(server_proxy: ProxyProcess) -> None:
    _get(server_proxy, "/status?code=200")
    before = server_proxy.rss_kib()
    mib = 48
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=60)
    conn.request("GET", f"/big?mib={mib}")
    r = conn.getresponse()
    received = 0
    peak = before
    while piece := r.read(1 << 20):
        received += len(piece)
        if received % (8 << 20) < (1 << 20):
            peak = max(peak, server_proxy.rss_kib())
    assert received == mib << 20

    def upload() -> Iterator[bytes]:
        block = b"u" * (1 << 20)
        for i in range(mib):
            if i % 8 == 0:
                nonlocal peak
                peak = max(peak, server_proxy.rss_kib())
            yield block

    conn.request("PUT", "/count", body=upload(), headers={"Content-Length": str(mib << 20)})
    assert json.loads(conn.getresponse().read())["size"] == mib << 20
    conn.close()
    peak = max(peak, server_proxy.rss_kib())
    assert peak - before < 16 * 1024, f"proxy RSS grew {peak - before} KiB while streaming {mib} MiB each way"


def test_malformed_requests_get_400_and_close(server_proxy: ProxyProcess) -> None:
    for bad in (
        b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        out = raw_exchange(server_proxy.inbound, bad)
        assert out.startswith(b"HTTP/1.1 400"), (bad, out[:80])
        assert b"connection: close" in out.lower()
    assert _get(server_proxy, "/status?code=200")[0] == 200


def test_header_limits_answer_431(server_proxy: ProxyProcess) -> None:
    big = b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert raw_exchange(server_proxy.inbound, big).startswith(b"HTTP/1.1 431")
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n"
    assert raw_exchange(server_proxy.inbound, many).startswith(b"HTTP/1.1 431")
    assert _get(server_proxy, "/status?code=200")[0] == 200


def test_hop_by_hop_headers_do_not_cross(server_proxy: ProxyProcess) -> None:
    _, _, body = _get(
        server_proxy,
        "/headers",
        Connection="keep-alive, X-Secret-Hop",
        **{"X-Secret-Hop": "1", "Keep-Alive": "timeout=5", "TE": "x"},
        **{"Proxy-Authorization": "Basic Zm9vOmJhcg=="},
    )
    seen = json.loads(body)["headers"]
    for name in ("x-secret-hop", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen, name
    assert seen["host"] == f"127.0.0.1:{server_proxy.inbound}"


def test_upstream_down_is_502_counted_as_failure(tmp_path: Path) -> None:
    # A port held bound and not listening refuses connections for the whole test; a port merely
    # found free could be handed out again, even to this proxy's own listeners (CI once saw a 400).
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{down.getsockname()[1]}", identity=SERVER_ID
    )
    try:
        for _ in range(3):
            status, _, _ = _get(proxy, "/")
            assert status == 502
        assert proxy.value("response_total", classification="failure", error="connect_refused") == 3
        assert proxy.process.poll() is None
    finally:
        proxy.stop()
        down.close()


def test_slow_upstream_is_504_and_proxy_keeps_serving(server_proxy: ProxyProcess) -> None:
    start = time.monotonic()
    status, _, _ = _get(server_proxy, "/slow?s=4")
    assert status == 504
    assert time.monotonic() - start < 3.5, "the response timeout (2 s) bounds the wait"
    timeouts = server_proxy.value(
        "response_total", classification="failure", error="timeout", status_code="504"
    )
    assert timeouts == 1
    assert _get(server_proxy, "/status?code=200")[0] == 200


def test_5xx_from_app_is_failure_and_4xx_success(server_proxy: ProxyProcess) -> None:
    for code in (500, 503, 404):
        _get(server_proxy, f"/status?code={code}")
    assert server_proxy.value("response_total", classification="failure", status_code="500") == 1
    assert server_proxy.value("response_total", classification="failure", status_code="503") == 1
    assert server_proxy.value("response_total", classification="success", status_code="404") == 1


def test_opaque_tcp_and_server_speaks_first(tmp_path: Path) -> None:
    echo, banner = TcpServer(), TcpServer(banner=b"220 smtp ready\r\n")
    proxies = []
    try:
        p1 = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{echo.port}")
        p2 = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{banner.port}", "--detect-timeout", "0.3")
        proxies += [p1, p2]
        with socket.create_connection(("127.0.0.1", p1.inbound), timeout=5) as s:
            s.sendall(b"\x16\x03\x01 not http at all")
            assert s.recv(100) == b"echo:\x16\x03\x01 not http at all"
        with socket.create_connection(("127.0.0.1", p2.inbound), timeout=5) as s:
            assert s.recv(100) == b"220 smtp ready\r\n", "a silent client is relayed after the detect timeout"
            s.sendall(b"EHLO x\r\n")
            assert s.recv(100) == b"echo:EHLO x\r\n"
        time.sleep(0.2)
        assert p1.value("tcp_read_bytes_total", peer="dst") >= len(b"echo:") + 17
        assert p1.value("request_total") == 0
    finally:
        for p in proxies:
            p.stop()
        echo.stop()
        banner.stop()


def test_opaque_ports_skip_detection(tmp_path: Path) -> None:
    banner = TcpServer(banner=b"* OK imap\r\n")
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{banner.port}", "--opaque-ports", str(banner.port),
        "--detect-timeout", "5",
    )  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as s:
            start = time.monotonic()
            assert s.recv(100) == b"* OK imap\r\n"
            assert time.monotonic() - start < 2, "opaque ports are relayed at once, without waiting to detect"
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"echo:GET"), "even HTTP-looking bytes are relayed untouched"
    finally:
        proxy.stop()
        banner.stop()


def test_two_proxies_label_each_other(
    app: AppServer, server_proxy: ProxyProcess, client_proxy: ProxyProcess
) -> None:
    """client app → its proxy (http_proxy) → server proxy → server app, as in the demo."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{client_proxy.outbound}"})
    )
    for _ in range(3):
        with opener.open(f"http://127.0.0.1:{server_proxy.inbound}/headers", timeout=10) as r:
            seen = json.loads(r.read())["headers"]
            assert "x-mesh-dst" not in {k.lower() for k in r.headers}, "the client app never sees x-mesh-dst"
    assert "x-mesh-src" not in seen
    with pytest.raises(urllib.error.HTTPError) as failed:
        opener.open(f"http://127.0.0.1:{server_proxy.inbound}/status?code=500", timeout=10)
    assert failed.value.code == 500
    failed.value.read()  # the proxy counts a response once it has passed on all of it
    failed.value.close()
    ns, kind, name, pod = SERVER_ID
    cns, ckind, cname, cpod = CLIENT_ID
    authority = f"127.0.0.1:{server_proxy.inbound}"
    out = {s.labels.get("status_code"): s for s in client_proxy.samples("response_total")}
    assert out["200"].labels == {
        "direction": "outbound", "authority": authority, "dst_namespace": ns, f"dst_{kind}": name,
        "dst_pod": pod, "classification": "success", "status_code": "200",
    }  # fmt: skip
    assert out["200"].value == 3
    inbound = {s.labels.get("status_code"): s for s in server_proxy.samples("response_total")}
    assert inbound["200"].labels == {
        "direction": "inbound", "authority": authority, "src_namespace": cns, f"src_{ckind}": cname,
        "src_pod": cpod, "classification": "success", "status_code": "200",
    }  # fmt: skip
    assert inbound["500"].labels["classification"] == "failure"
    assert client_proxy.value("request_total", direction="outbound", dst_pod=pod) == 4


def test_unmeshed_peers_get_authority_only(app: AppServer, client_proxy: ProxyProcess) -> None:
    """Outbound straight to an app without a proxy: the series has direction and authority only."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{client_proxy.outbound}"})
    )
    with opener.open(f"http://127.0.0.1:{app.port}/headers?x=1", timeout=10) as r:
        seen = json.loads(r.read())
        assert "x-mesh-dst" not in {k.lower() for k in r.headers}
    assert seen["target"] == "/headers?x=1", "absolute-form targets reach the app in origin form"
    assert seen["headers"]["x-mesh-src"] == "/".join(CLIENT_ID), "the client proxy names its workload"
    with opener.open(f"http://127.0.0.1:{app.port}/status?code=200", timeout=10) as r:
        assert (r.status, r.read()) == (200, b"status\n")
    series = {s.labels["authority"]: s.labels for s in client_proxy.samples("request_total")}
    assert series[f"127.0.0.1:{app.port}"] in (
        {"direction": "outbound", "authority": f"127.0.0.1:{app.port}"},
        # /headers answers with a well-formed x-mesh-dst of its own; without mTLS a proxy cannot tell
        # that from a peer proxy's header (documented in docs/architecture.md, "Proxy").
        {"direction": "outbound", "authority": f"127.0.0.1:{app.port}", "dst_namespace": "evil",
         "dst_deployment": "x", "dst_pod": "y"},
    )  # fmt: skip
    plain = [s for s in client_proxy.samples("response_total") if s.labels.get("status_code") == "200"]
    assert any(set(s.labels) == {"direction", "authority", "classification", "status_code"} for s in plain)


def test_forward_proxy_rejects_what_it_cannot_route(client_proxy: ProxyProcess) -> None:
    out = raw_exchange(client_proxy.outbound, b"GET /no-host HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    https = b"GET https://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n"
    out = raw_exchange(client_proxy.outbound, https)
    assert out.startswith(b"HTTP/1.1 400"), "no TLS origination: https goes through CONNECT"
    loop = b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % client_proxy.outbound
    assert raw_exchange(client_proxy.outbound, loop).startswith(b"HTTP/1.1 400"), (
        "a loop is the request's fault: 400"
    )
    assert client_proxy.value("response_total", error="loop") == 1


def test_connect_tunnel(client_proxy: ProxyProcess) -> None:
    echo = TcpServer()
    try:
        with socket.create_connection(("127.0.0.1", client_proxy.outbound), timeout=5) as s:
            s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (echo.port, echo.port))
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
            s.sendall(b"tunnelled")
            assert s.recv(100) == b"echo:tunnelled"
    finally:
        echo.stop()


class _ScriptedUpstream:
    """A raw TCP 'server' that answers every connection with fixed bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", 200, "reset"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", 502, "bad_response"),
        (b"", 502, "reset"),
    ],
)
def test_upstream_failures_mid_exchange(tmp_path: Path, answer: bytes, status: int, error: str) -> None:
    upstream = _ScriptedUpstream(answer)
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{upstream.port}")
    try:
        out = raw_exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 %d" % status), out
        if status == 200:  # headers already went out: the client sees a short body and a close
            assert out.endswith(b"only ten..")
        assert proxy.value("response_total", classification="failure", error=error) == 1
        assert proxy.process.poll() is None
    finally:
        proxy.stop()
        upstream.close()


def test_idle_keep_alive_clients_are_closed(app: AppServer, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", "--idle-timeout", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as s:
            s.sendall(b"GET /status?code=200 HTTP/1.1\r\nHost: web\r\n\r\n")
            start = time.monotonic()
            received = b""
            while chunk := s.recv(65536):  # head and body may arrive in separate segments
                received += chunk
            # recv returned b"" (not a timeout): the proxy closed the idle connection
            assert received.startswith(b"HTTP/1.1 200"), received
            assert received.endswith(b"status\n"), received
            assert time.monotonic() - start < 3, "an idle client connection is closed by the proxy"
        deadline = time.monotonic() + 5  # the handler's bookkeeping runs just after the close the client saw
        while (
            proxy.value("tcp_open_connections", direction="inbound", peer="src")
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert proxy.value("tcp_open_connections", direction="inbound", peer="src") == 0
    finally:
        proxy.stop()


def test_large_chunked_upload_is_relayed_intact(server_proxy: ProxyProcess) -> None:
    pieces = [bytes([i]) * 150_000 for i in range(20)]
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=30)
    conn.request("POST", "/count", body=iter(pieces), encode_chunked=True)
    result = json.loads(conn.getresponse().read())
    conn.close()
    assert result == {"size": 3_000_000, "sha256": hashlib.sha256(b"".join(pieces)).hexdigest()}


def test_forward_proxy_waits_for_a_slow_client(app: AppServer, tmp_path: Path) -> None:
    """The outbound forward proxy has no opaque fallback: a client that pauses is still served."""
    proxy = start_proxy(tmp_path, "--inbound-forward", "127.0.0.1:9", "--detect-timeout", "0.2")
    try:
        with socket.create_connection(("127.0.0.1", proxy.outbound), timeout=5) as s:
            time.sleep(0.6)
            s.sendall(b"GET http://127.0.0.1:%d/status?code=204 HTTP/1.1\r\nHost: x\r\n\r\n" % app.port)
            assert s.recv(65536).startswith(b"HTTP/1.1 204")
    finally:
        proxy.stop()


def test_websocket_through_both_proxies(server_proxy: ProxyProcess, client_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", client_proxy.outbound), timeout=10) as s:
        s.sendall(
            b"GET http://127.0.0.1:%d/ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n" % server_proxy.inbound
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 101") and b"x-mesh-dst" not in head.lower()
        s.sendall(b"through two proxies\n")
        echoed = b""
        while not echoed.endswith(b"\n"):
            echoed += s.recv(65536)
        assert echoed == b"THROUGH TWO PROXIES\n"
    assert client_proxy.value("response_total", status_code="101", dst_deployment="web") == 1


def test_http10_keep_alive_client(server_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", server_proxy.inbound), timeout=10) as s:
        for code in (200, 201):
            s.sendall(b"GET /status?code=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % code)
            out = b""
            while b"status\n" not in out:
                out += s.recv(65536)
            assert out.startswith(b"HTTP/1.1 %d" % code)
            assert b"connection: keep-alive" in out.lower(), "HTTP/1.0 keep-alive is confirmed explicitly"


def test_tcp_metrics_name_the_peer_workload(server_proxy: ProxyProcess, client_proxy: ProxyProcess) -> None:
    """`stat --from/--to` count open connections per peer: TCP series carry src_*/dst_* like HTTP."""
    request = b"GET http://127.0.0.1:%d/status?code=200 HTTP/1.1\r\nHost: web\r\n\r\n" % server_proxy.inbound
    with socket.create_connection(("127.0.0.1", client_proxy.outbound), timeout=10) as s:
        s.sendall(request)
        out = b""
        while b"status\n" not in out:
            out += s.recv(65536)
        dst = {"direction": "outbound", "peer": "dst", "dst_namespace": SERVER_ID[0], "dst_deployment": "web"}
        assert client_proxy.value("tcp_open_connections", **dst) == 1, client_proxy.exposition()
        # The head was read before the labels were known, and it counts (with the x-mesh-dst it had).
        assert client_proxy.value("tcp_read_bytes_total", **dst) > len(out)
        src = {"direction": "inbound", "peer": "src", "src_namespace": CLIENT_ID[0], "src_pod": CLIENT_ID[3]}
        assert server_proxy.value("tcp_open_connections", **src) == 1, server_proxy.exposition()
        # The request and the x-mesh-src the client proxy added to it.
        assert server_proxy.value("tcp_read_bytes_total", **src) > len(request)
    # A client that never sends a request is counted without peer labels once it leaves.
    with socket.create_connection(("127.0.0.1", server_proxy.inbound), timeout=10) as s:
        s.sendall(b"\x16\x03\x01 not http")
        s.shutdown(socket.SHUT_WR)
        s.recv(100)
    deadline = time.monotonic() + 5
    closed = {"direction": "inbound", "peer": "src"}
    while server_proxy.value("tcp_close_total", **closed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    unlabelled = [
        s for s in server_proxy.samples("tcp_open_total")
        if s.labels.get("peer") == "src" and "src_namespace" not in s.labels
    ]  # fmt: skip
    assert [s.value for s in unlabelled] == [1.0]
    open_now = [
        s for s in server_proxy.samples("tcp_open_connections") if s.labels.get("peer") == "src" and s.value
    ]
    # Only the client proxy's pooled keep-alive connection is still open, under its workload.
    assert [s.labels.get("src_deployment") for s in open_now] == ["vote"]


def test_chunked_trailers_pass_both_ways(tmp_path: Path) -> None:
    """Trailer fields after a chunked body reach the other side (RFC 9112 §7.1.2); hop-by-hop ones do not."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while not re.search(rb"\r\n0\r\n(.*\r\n)*\r\n$", data):
                data += conn.recv(65536)
            received.append(data)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402a\r\nConnection: close\r\n\r\n"
            )

    threading.Thread(target=serve, daemon=True).start()
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{listener.getsockname()[1]}")
    try:
        with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=10) as s:
            s.sendall(
                b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: x-digest\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Digest: sha-256=abc\r\nKeep-Alive: timeout=5\r\n\r\n"
            )
            out = b""
            while not out.endswith(b"\r\n0\r\nX-Checksum: 5d41402a\r\n\r\n") and len(out) < 4096:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        assert out.startswith(b"HTTP/1.1 200"), out
        assert out.endswith(b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402a\r\n\r\n"), out
        (request,) = received
        assert request.endswith(b"3\r\nabc\r\n0\r\nX-Digest: sha-256=abc\r\n\r\n"), request
    finally:
        proxy.stop()
        listener.close()
