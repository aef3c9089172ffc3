"""HTTP/2 streams' deadlines and 1xx heads, through one real proxy to a scripted h2 server.

Oracles: what the client received on each stream (status, body, the RST_STREAM code), what the
backend saw of each stream (the proxy's RST_STREAM code, the request body), the proxy's metrics,
and that the slots of expired streams are free again on both connections.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, SettingsFrame

from tests.proxy.h2_backend import TICK, TICKS, H2Backend
from tests.support.grpc_app import GrpcApp, methods
from tests.support.h2wire import bytes_until_closed, parse_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

CANCEL, INTERNAL_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x2, 0xB
DEADLINES = ("--response-timeout", "1", "--idle-timeout", "2", "--header-timeout", "1")


@pytest.fixture
def backend() -> Iterator[H2Backend]:
    server = H2Backend()
    yield server
    server.stop()


@pytest.fixture
def proxy(backend: H2Backend, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", *DEADLINES, identity=SERVER_ID
    )
    yield p
    p.stop()


@dataclass
class Got:
    """One stream as the client saw it."""

    informational: list[dict[bytes, bytes]] = field(default_factory=list)
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended_at: float = 0.0  # seconds after the client started
    reset: int | None = None


class Client:
    """A raw h2 client on one connection: streams are opened at chosen times, events recorded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.got: dict[int, Got] = {}
        self.started = time.monotonic()
        self.closed = False

    def request(self, path: str, end: bool = True, extra: list[tuple[bytes, bytes]] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [
            (b":method", b"GET" if end else b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"127.0.0.1:%d" % self.port), *(extra or []),
        ]  # fmt: skip
        self.conn.send_headers(sid, head, end_stream=end)
        self.got[sid] = Got()
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def send(self, sid: int, data: bytes) -> None:
        self.conn.send_data(sid, data, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())

    def run(self, seconds: float, until: Any = None) -> None:
        """Read and answer for `seconds`, or until `until()` is true."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed and not (until and until()):
            self.sock.settimeout(max(0.01, min(0.05, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                break
            for event in self.conn.receive_data(data):
                self._on(event)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def _on(self, event: Any) -> None:
        got = self.got.get(getattr(event, "stream_id", 0))
        if got is None:
            return
        now = time.monotonic() - self.started
        if isinstance(event, h2.events.InformationalResponseReceived):
            got.informational.append(dict(event.headers))
        elif isinstance(event, h2.events.ResponseReceived):
            got.headers = dict(event.headers)
            got.status = int(got.headers[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            got.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            got.ended_at = now
        elif isinstance(event, h2.events.StreamReset):
            got.reset = int(event.error_code)
            got.ended_at = now

    def close(self) -> None:
        self.sock.close()


def test_stalled_streams_are_cut_at_their_deadlines_and_the_others_go_on(
    proxy: ProxyProcess, backend: H2Backend
) -> None:
    """--response-timeout 1, --idle-timeout 2: a stream whose head never comes gets 504 at ~1 s,
    one whose body stalls is reset at ~2 s; a stream that trickles for 3 s and the streams opened
    meanwhile on the same connection are untouched."""
    client = Client(proxy.inbound)
    try:
        stall_head = client.request("/stall-head")
        stall_body = client.request("/stall-body")
        tick = client.request("/tick")
        early = client.request("/ok")
        client.run(1.5)
        late = [client.request("/ok") for _ in range(3)]  # after the first deadline fired
        client.run(6, until=lambda: all(g.ended_at for g in client.got.values()))
    finally:
        client.close()
    got = client.got
    # The client: 504 for the missing head, RST_STREAM INTERNAL_ERROR mid-body, each on time.
    assert got[stall_head].status == 504 and got[stall_head].reset is None
    assert 0.9 <= got[stall_head].ended_at < 2.0, got[stall_head]
    assert got[stall_body].status == 200 and got[stall_body].body == b"first"
    assert got[stall_body].reset == INTERNAL_ERROR
    assert 1.9 <= got[stall_body].ended_at < 3.5, got[stall_body]
    # The stream that makes progress outlives both timeouts, whole.
    assert got[tick].status == 200 and got[tick].body == b"t" * TICKS and got[tick].reset is None
    assert got[tick].ended_at > TICK * TICKS - 0.2
    for sid in (early, *late):
        assert got[sid].status == 200 and got[sid].body == b"ok" and got[sid].reset is None
    # The backend: the proxy cancelled the two stalled streams, and only those.
    assert [s.reset for s in backend.by_path("/stall-head")] == [CANCEL]
    assert [s.reset for s in backend.by_path("/stall-body")] == [CANCEL]
    assert [s.reset for s in backend.by_path("/tick")] == [None]
    assert [s.reset for s in backend.by_path("/ok")] == [None] * 4
    # The metrics: two failures labelled timeout (the 504, and the 200 cut short), five successes.
    timeouts = {
        s.labels["status_code"]: s.value for s in proxy.samples("response_total") if s.labels.get("error")
    }
    assert timeouts == {"504": 1, "200": 1}
    assert proxy.value("response_total", error="timeout", classification="failure") == 2
    assert proxy.value("response_total", classification="success") == 5


def test_expired_streams_free_their_slots_on_both_connections(
    proxy: ProxyProcess, backend: H2Backend
) -> None:
    """100 streams (the proxy's limit per client connection, and the backend's per connection)
    stall and expire; 100 more on the same client connection then all get through, over the same
    upstream connection: every slot was given back on both sides."""
    client = Client(proxy.inbound)
    try:
        stalled = [client.request("/stall-head") for _ in range(100)]
        client.run(5, until=lambda: all(client.got[s].ended_at for s in stalled))
        fresh = [client.request("/ok") for _ in range(100)]
        client.run(5, until=lambda: all(client.got[s].ended_at for s in fresh))
    finally:
        client.close()
    assert [client.got[s].status for s in stalled] == [504] * 100
    assert [(client.got[s].status, client.got[s].body) for s in fresh] == [(200, b"ok")] * 100
    assert [s.reset for s in backend.by_path("/stall-head")] == [CANCEL] * 100
    assert backend.connections == 1
    assert proxy.value("response_total", error="timeout") == 100
    assert proxy.value("response_total", status_code="200") == 100


def test_a_header_block_left_unfinished_ends_its_connection_after_the_header_timeout(
    proxy: ProxyProcess,
) -> None:
    """HEADERS without END_HEADERS, then silence (slowloris over h2): GOAWAY ENHANCE_YOUR_CALM
    after --header-timeout (1 s), counted; a connection alongside is served meanwhile."""
    encoder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)).encoder
    block = encoder.encode([(":method", "GET"), (":scheme", "http"), (":path", "/ok"), (":authority", "x")])
    headers = HeadersFrame(1, data=block[:4])  # no END_HEADERS: a CONTINUATION must follow
    headers.flags.add("END_STREAM")
    slow = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
    bystander = Client(proxy.inbound)
    try:
        slow.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize() + headers.serialize())
        started = time.monotonic()
        ok = bystander.request("/ok")
        bystander.run(3, until=lambda: bystander.got[ok].ended_at)
        raw = bytes_until_closed(slow, 4)
        closed_after = time.monotonic() - started
    finally:
        slow.close()
        bystander.close()
    assert bystander.got[ok].status == 200 and bystander.got[ok].body == b"ok"
    goaways = [f for f in parse_frames(raw) if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [ENHANCE_YOUR_CALM]
    assert 0.9 <= closed_after < 3.5
    assert proxy.value("h2_connection_errors_total", error="header_timeout") == 1


def test_1xx_heads_reach_the_client_as_informational_and_the_final_response_is_counted(
    proxy: ProxyProcess, backend: H2Backend
) -> None:
    """103 early hints and 100-continue are relayed as informational HEADERS, before the final
    response; only the final one is counted (its status, its latency)."""
    client = Client(proxy.inbound)
    try:
        hinted = client.request("/early-hints")
        expecting = client.request("/continue", end=False, extra=[(b"expect", b"100-continue")])
        client.run(3, until=lambda: client.got[hinted].ended_at and client.got[expecting].informational)
        assert client.got[expecting].status == 0  # the 100 is no final response: the body goes now
        client.send(expecting, b"x" * 1000)
        client.run(3, until=lambda: client.got[expecting].ended_at)
    finally:
        client.close()
    early = client.got[hinted]
    assert [h[b":status"] for h in early.informational] == [b"103"]
    assert early.informational[0][b"link"] == b"</style.css>; rel=preload"
    assert early.status == 200 and early.body == b"hinted"
    cont = client.got[expecting]
    assert [h[b":status"] for h in cont.informational] == [b"100"]
    assert cont.status == 200 and cont.body == b"1000"
    # The backend got the expectation and then the whole body.
    (seen,) = backend.by_path("/continue")
    assert seen.headers.get("expect") == "100-continue" and seen.body == 1000 and seen.ended
    codes = {s.labels.get("status_code") for s in proxy.samples("response_total")}
    assert codes == {"200"}
    assert proxy.value("response_total", status_code="200", classification="success") == 2
    assert proxy.value("response_latency_ms_count") == 2


def test_streaming_rpcs_that_make_progress_outlive_the_deadlines(tmp_path: Path) -> None:
    """grpcio through one proxy with --response-timeout 1 and --idle-timeout 2: a bidi stream that
    talks for 3.2 s, and a server stream whose first message comes after 1.5 s under a client
    deadline of 10 s, both complete; without a deadline that one is answered UNAVAILABLE at ~1 s."""
    app = GrpcApp()
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", *DEADLINES, identity=SERVER_ID
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.inbound}", options=[("grpc.enable_http_proxy", 0)])
    try:
        rpc = methods(channel)

        def slow_messages() -> Iterator[bytes]:
            for i in range(8):
                time.sleep(0.4)
                yield b"%d" % i

        started = time.monotonic()
        assert list(rpc["bidi"](slow_messages(), timeout=20)) == [b"re:%d" % i for i in range(8)]
        assert time.monotonic() - started > 3.0
        assert list(rpc["server_stream"](b"3:1.5", timeout=10)) == [b"0", b"1", b"2"]
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as cut:
            list(rpc["server_stream"](b"3:1.5"))
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE and "timeout" in (cut.value.details() or "")
        assert time.monotonic() - started < 1.45
        assert proxy.value("response_total", classification="success", grpc_status="0") == 2
        assert proxy.value("response_total", error="timeout", classification="failure") == 1
    finally:
        channel.close()
        proxy.stop()
        app.stop()


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(
    proxy: ProxyProcess, backend: H2Backend
) -> None:
    """A client that grants a stream one byte of window and never more: the backend's 10 ticks
    (3 s) wait in the proxy; 2 s (--idle-timeout) after the last, the stream is reset toward the
    client and counted as `client_timeout` (judged by its status, as HTTP/1's client stalls)."""
    client = Client(proxy.inbound)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    client.sock.sendall(client.conn.data_to_send())
    try:
        sid = client.request("/tick")
        started = time.monotonic()
        raw = b""
        client.sock.settimeout(0.1)
        resets: list[tuple[float, int]] = []
        while time.monotonic() - started < 8 and not resets:
            try:
                data = client.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            raw += data  # read, but never acknowledged: no WINDOW_UPDATE goes back
            resets = [(time.monotonic() - started, f.error_code) for f in parse_frames(raw) if f.type == 0x3]
    finally:
        client.close()
    assert sid == 1
    assert [code for _, code in resets] == [INTERNAL_ERROR]
    assert TICK * TICKS + 1.8 <= resets[0][0] < TICK * TICKS + 3.5, resets
    (seen,) = backend.by_path("/tick")
    assert seen.reset is None  # the backend had finished: nothing of its side was left to cancel
    assert (
        proxy.value("response_total", error="client_timeout", status_code="200", classification="success")
        == 1
    )
