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
from tests.proxy.test_tap import TapReader, tapped  # noqa: F401  (tapped: the fixture)
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
    reader = TapReader(interim_proxy)
    try:
        sock = socket.create_connection(("127.0.0.1", interim_proxy.inbound))
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: the next send to it fails
        reader.wait(lambda: len(reader.of("req")) == 1, "the req")
        time.sleep(1.0)  # the app answers 100 at 0.3 s, 200 at 0.6 s
        assert len(reader.of("rsp")) == 1 and len(reader.of("end")) == 1, reader.events
        assert reader.of("end")[0]["error"] == "client_gone"
    finally:
        reader.close()
    assert interim_proxy.value("request_total", direction="inbound") == 1


def test_chunked_responses_report_the_body_length_not_the_framing(
    app: AppServer,
    server_proxy: ProxyProcess,
    tapped: TapReader,  # noqa: F811
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


def _odd_requests(proxy: ProxyProcess) -> None:
    """Requests that end in every odd place the inbound side has, each as the client sees it."""
    port = proxy.inbound

    def raw(data: bytes, read: int | None = None, reset: bool = False) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(data)
        got = b""
        try:
            while read is None or len(got) < read:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return got

    close = b"Connection: close\r\n"
    assert raw(b"GET /status?code=200 HTTP/1.1\r\nHost: a\r\n" + close + b"\r\n").startswith(b"HTTP/1.1 200")
    assert raw(b"GET /status?code=503 HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 503")
    assert b"chunk-2" in raw(b"GET /chunked HTTP/1.1\r\nHost: a\r\n" + close + b"\r\n")
    pipelined = raw(
        b"GET /status?code=201 HTTP/1.1\r\nHost: a\r\n\r\nGET /status?code=404 HTTP/1.1\r\nHost: a\r\n"
        + close + b"\r\n"
    )  # fmt: skip
    assert pipelined.count(b"HTTP/1.1 ") == 2
    assert raw(
        b"POST /reject HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
    ).startswith(b"HTTP/1.1 413")
    assert raw(b"GET /big?mib=16 HTTP/1.1\r\nHost: a\r\n\r\n", read=100_000, reset=True)  # client leaves
    assert raw(b"GET /slow?s=3 HTTP/1.1\r\nHost: a\r\n" + close + b"\r\n").startswith(b"HTTP/1.1 504")
    upgraded = raw(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello\n",
        read=len(b"HELLO"),
    )
    assert upgraded.startswith(b"HTTP/1.1 101")
    assert raw(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").startswith(b"HTTP/1.1 501")


def _counts(proxy: ProxyProcess) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for name in ("request_total", "response_total"):
        for sample in proxy.samples(name):
            key = (name, *sorted(f"{k}={v}" for k, v in sample.labels.items()))
            out[key] = sample.value
    return out


def test_every_odd_request_is_one_req_rsp_end_and_the_metrics_are_those_of_an_untapped_proxy(
    app: AppServer, server_proxy: ProxyProcess
) -> None:
    _odd_requests(server_proxy)
    time.sleep(0.5)
    untapped = _counts(server_proxy)
    reader = TapReader(server_proxy)
    try:
        _odd_requests(server_proxy)
        time.sleep(0.5)
        reader.wait(lambda: len(reader.of("end")) >= 10, "ten ends")
    finally:
        reader.close()
    both = _counts(server_proxy)
    assert {k: v - untapped.get(k, 0) for k, v in both.items()} == untapped  # the same counts again
    ids = {e["id"] for e in reader.of("req")}
    assert len(ids) == len(reader.of("req")) == 10
    for kind in ("rsp", "end"):
        assert sorted(e["id"] for e in reader.of(kind)) == sorted(ids), kind
    statuses = sorted(e["status"] for e in reader.of("rsp"))
    assert statuses == sorted([200, 503, 200, 201, 404, 413, 200, 504, 101, 501])
    errors = sorted(str(e["error"]) for e in reader.of("end"))
    assert errors.count("None") == 8 and "timeout" in errors


def _tap_subscribe_raw(proxy: ProxyProcess) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.tap))
    sock.sendall(b"GET /tap?max_rps=10000 HTTP/1.0\r\n\r\n")
    return sock


def test_a_subscriber_that_stops_reading_is_cut_and_its_place_freed(
    app: AppServer, server_proxy: ProxyProcess
) -> None:
    """Eight tap clients that never read hold every place (later taps get 503) and keep the tap
    active for every request. Once the proxy cannot write to one for TAP_WRITE_TIMEOUT (10 s), it
    is cut: its place is free again. Meanwhile the proxy's memory stays bounded and traffic flows."""
    from concurrent.futures import ThreadPoolExecutor

    from proxy.tap import TAP_WRITE_TIMEOUT

    stalled = [_tap_subscribe_raw(server_proxy) for _ in range(8)]
    rss_before = server_proxy.rss_kib()
    path = "/status?code=200&pad=" + "a" * 2000

    def get(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server_proxy.inbound, timeout=10)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(get, range(3000)))
    assert statuses == [200] * 3000 and time.monotonic() - start < 60  # traffic was never held up
    assert server_proxy.rss_kib() - rss_before < 96 * 1024  # 8 queues of 2048 events, bounded
    refused = _tap_subscribe_raw(server_proxy)
    assert _read_head(refused).startswith(b"HTTP/1.1 503")
    refused.close()
    deadline = time.monotonic() + TAP_WRITE_TIMEOUT + 10
    while True:  # the stalled ones' writes time out: a new tap is served again
        get(0)  # an event for each stalled subscriber: their blocked writes stay blocked
        fresh = _tap_subscribe_raw(server_proxy)
        head = _read_head(fresh)
        fresh.close()
        if head.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(1)
    for sock in stalled:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert "Traceback" not in server_proxy.log()
