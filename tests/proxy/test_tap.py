"""The proxy's tap end to end (proxy/tap.py wired into real `mesh-proxy run` processes): what the
tap says about each request matches what the client sent and got, filters run in the proxy, the
listener is on loopback only, and the apps see nothing of it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubectl_mesh.tap.stream import TapTarget, direct_opener, read_stream
from tests.proxy.proxy_backends import AppServer
from tests.support.proxy_process import CLIENT_ID, SERVER_ID, ProxyProcess

SERVER = "/".join(SERVER_ID)
CLIENT = "/".join(CLIENT_ID)


class TapReader:
    """A tap stream read by a thread into a list (the CLI's own reader, kubectl_mesh.tap.stream)."""

    def __init__(self, proxy: ProxyProcess, query: str = "") -> None:
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.stream = direct_opener({"p": ("127.0.0.1", proxy.tap)})(TapTarget("ns", "p"))
        self.thread = threading.Thread(target=self._read, args=(query,), daemon=True)
        self.thread.start()
        self.wait(lambda: any(e["type"] == "hello" for e in self.events), "the tap's hello")

    def _read(self, query: str) -> None:
        try:
            for event in read_stream(self.stream, query):
                self.events.append(event)
        except BaseException as exc:  # surfaced by wait()
            self.error = exc

    def wait(self, done: Any, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.error is not None:
                raise AssertionError(f"tap stream failed: {self.error}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.events}")
            time.sleep(0.02)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)


@pytest.fixture
def tapped(server_proxy: ProxyProcess) -> Iterator[TapReader]:
    reader = TapReader(server_proxy)
    yield reader
    reader.close()


def _through_both(client_proxy: ProxyProcess, server_proxy: ProxyProcess, method: str, path: str,
                  body: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", client_proxy.outbound, timeout=10)
    conn.request(method, f"http://127.0.0.1:{server_proxy.inbound}{path}", body=body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_each_request_is_req_rsp_end_with_what_the_client_saw(
    app: AppServer, client_proxy: ProxyProcess, server_proxy: ProxyProcess, tapped: TapReader
) -> None:
    outbound = TapReader(client_proxy)
    try:
        results = [
            _through_both(client_proxy, server_proxy, "GET", "/status?code=503"),
            _through_both(client_proxy, server_proxy, "POST", "/upload", b"x" * 1000),
            _through_both(client_proxy, server_proxy, "GET", "/big?mib=1"),
        ]
        assert [status for status, _ in results] == [503, 200, 200]
        for reader in (tapped, outbound):
            reader.wait(lambda r=reader: len(r.of("end")) == 3, "three ends")
    finally:
        outbound.close()
    # The server side: src is the client's proxy's identity (it is meshed), dst this proxy.
    reqs, rsps, ends = tapped.of("req"), tapped.of("rsp"), tapped.of("end")
    assert [(r["proxy"], r["method"], r["path"], r["src"], r["dst"]) for r in reqs] == [
        ("in", "GET", "/status?code=503", CLIENT, SERVER),
        ("in", "POST", "/upload", CLIENT, SERVER),
        ("in", "GET", "/big?mib=1", CLIENT, SERVER),
    ]
    assert [r["id"] for r in reqs] == [r["id"] for r in rsps] == [e["id"] for e in ends]
    assert [r["status"] for r in rsps] == [503, 200, 200]
    assert [e["response_bytes"] for e in ends] == [len(body) for _, body in results]
    assert all(
        e["error"] is None and e["duration_us"] >= r["latency_us"] > 0
        for r, e in zip(rsps, ends, strict=True)
    )
    # The client side: the callee's identity comes with the response.
    out_rsps = outbound.of("rsp")
    assert {r["dst"] for r in out_rsps} == {SERVER} and outbound.of("req")[0]["src"] == CLIENT
    assert app.requests == 3  # tapping added no request


def test_filters_run_in_the_proxy(
    app: AppServer, client_proxy: ProxyProcess, server_proxy: ProxyProcess
) -> None:
    only_posts = TapReader(server_proxy, "method=POST&path=/up")
    budget = TapReader(server_proxy, "max_requests=2")
    try:
        for _ in range(3):
            _through_both(client_proxy, server_proxy, "GET", "/status?code=200")
        _through_both(client_proxy, server_proxy, "POST", "/upload", b"abc")
        only_posts.wait(lambda: len(only_posts.of("end")) == 1, "the POST's end")
        budget.thread.join(10)  # two requests shown and ended: the proxy closes that stream
        assert not budget.thread.is_alive()
    finally:
        only_posts.close()
        budget.close()
    assert [r["method"] for r in only_posts.of("req")] == ["POST"]
    assert len(budget.of("req")) == 2 and len(budget.of("end")) == 2


def test_to_filter_shows_only_requests_whose_response_names_that_workload(
    client_proxy: ProxyProcess, server_proxy: ProxyProcess, app: AppServer
) -> None:
    namespace, kind, name, _ = SERVER_ID
    to_server = TapReader(client_proxy, f"to={namespace}/{kind}/{name}")
    to_other = TapReader(client_proxy, "to=other/deployment/nope")
    into_server = TapReader(server_proxy, f"to={namespace}/{kind}/{name}")  # its own inbound requests
    try:
        _through_both(client_proxy, server_proxy, "GET", "/status?code=200")
        conn = http.client.HTTPConnection("127.0.0.1", client_proxy.outbound, timeout=10)
        conn.request("GET", f"http://127.0.0.1:{app.port}/status?code=200")  # straight to the app: unmeshed
        conn.getresponse().read()
        to_server.wait(lambda: len(to_server.of("end")) == 1, "one end")
        into_server.wait(lambda: len(into_server.of("end")) == 1, "the inbound end")
        time.sleep(0.3)
    finally:
        to_server.close()
        to_other.close()
        into_server.close()
    assert [(r["proxy"], r["dst"]) for r in into_server.of("req")] == [("in", SERVER)]
    assert [r["dst"] for r in to_server.of("req")] == [SERVER]
    assert to_other.of("req") == []


def test_bad_tap_requests_are_refused_and_the_tap_listens_on_loopback_only(
    server_proxy: ProxyProcess,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server_proxy.tap, timeout=5)
    conn.request("GET", "/tap?direction=sideways")
    response = conn.getresponse()
    assert (response.status, response.read()) == (400, b'direction must be "in" or "out", not \'sideways\'\n')
    from pathlib import Path

    listening = {line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]}
    assert f"0100007F:{server_proxy.tap:04X}" in listening  # 127.0.0.1 and nothing else
    assert f"00000000:{server_proxy.tap:04X}" not in listening


def test_no_mesh_header_or_tap_trace_reaches_the_app(
    app: AppServer, client_proxy: ProxyProcess, server_proxy: ProxyProcess, tapped: TapReader
) -> None:
    status, body = _through_both(client_proxy, server_proxy, "GET", "/headers")
    assert status == 200
    seen = json.loads(body)["headers"]
    assert not [h for h in seen if h.startswith("x-mesh")]
    tapped.wait(lambda: len(tapped.of("end")) == 1, "the end")


def test_more_than_eight_taps_are_refused_with_503(server_proxy: ProxyProcess) -> None:
    readers = [TapReader(server_proxy) for _ in range(8)]
    try:
        with socket.create_connection(("127.0.0.1", server_proxy.tap), timeout=5) as sock:
            sock.sendall(b"GET /tap HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"already 8 taps on this proxy\n")
    finally:
        for reader in readers:
            reader.close()
