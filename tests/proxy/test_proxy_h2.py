"""HTTP/2 and gRPC through two real proxies in explicit mode (grpcio via `grpc_proxy` CONNECT).

Oracles: what the gRPC app received (messages, metadata: never an x-mesh-* field), what each
client got back, the proxies' metrics (counts per grpc_status, labels from the peer proxy), RSS
and time bounds where the issue states them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from tests.support.grpc_app import GrpcApp, methods
from tests.support.h2wire import bytes_until_closed, chunks_until_closed, parse_frames
from tests.support.proxy_process import CLIENT_ID, SERVER_ID, ProxyProcess, start_proxy

CLIENT_LABELS = {"src_namespace": CLIENT_ID[0], "src_deployment": CLIENT_ID[2], "src_pod": CLIENT_ID[3]}
SERVER_LABELS = {"dst_namespace": SERVER_ID[0], "dst_deployment": SERVER_ID[2], "dst_pod": SERVER_ID[3]}
FORGED = "evil/deployment/forged/forged-1"


@pytest.fixture
def grpc_app() -> Iterator[GrpcApp]:
    app = GrpcApp()
    yield app
    app.stop()


@pytest.fixture
def h2_server_proxy(grpc_app: GrpcApp, tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{grpc_app.port}", identity=SERVER_ID)
    yield proxy
    proxy.stop()


@pytest.fixture
def h2_client_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(tmp_path, "--inbound-forward", "127.0.0.1:9", identity=CLIENT_ID, name="client")
    yield proxy
    proxy.stop()


@pytest.fixture
def channel(
    h2_server_proxy: ProxyProcess, h2_client_proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[grpc.Channel]:
    """A gRPC channel to the server's sidecar through the client's sidecar (CONNECT)."""
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{h2_client_proxy.outbound}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    ch = grpc.insecure_channel(f"127.0.0.1:{h2_server_proxy.inbound}")
    yield ch
    ch.close()


def _no_mesh_fields(metadata: dict[str, str] | Any) -> bool:
    return not any(str(k).lower().startswith("x-mesh-") for k, _ in dict(metadata).items())


def test_grpc_unary_and_the_three_streaming_kinds_through_two_proxies(
    channel: grpc.Channel, grpc_app: GrpcApp, h2_server_proxy: ProxyProcess, h2_client_proxy: ProxyProcess
) -> None:
    _four_kinds_through_two_proxies(channel, grpc_app, h2_server_proxy, h2_client_proxy)


def test_a_proxy_without_libnghttp2_codes_headers_with_h2s_hpack_and_talks_to_one_with_it(
    grpc_app: GrpcApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's proxy has no libnghttp2 (`$MESH_NGHTTP2_LIBRARY` empty): h2's pure-Python
    HPACK; the client's has it. Headers coded by one are read by the other, both ways, with
    long, many and never-indexed fields. Oracles: the app's replies and the metadata it received,
    the client's trailing metadata, both proxies' counts, and each ready line naming its coder."""
    server = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{grpc_app.port}", identity=SERVER_ID,
        env={"MESH_NGHTTP2_LIBRARY": ""},
    )  # fmt: skip
    client = start_proxy(tmp_path, "--inbound-forward", "127.0.0.1:9", identity=CLIENT_ID, name="client")
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{client.outbound}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.inbound}")
    try:
        assert "hpack=python" in server.log()
        assert "hpack=nghttp2-" in client.log()
        _four_kinds_through_two_proxies(channel, grpc_app, server, client)
        extra = [(f"x-field-{i}", "v" * (30 * i)) for i in range(1, 13)] + [  # under grpcio's 8 KiB
            ("authorization", "Bearer s3cret")
        ]
        for round_ in range(3):  # the dynamic tables of both coders in use, block after block
            reply, _call = methods(channel)["unary"].with_call(b"m%d" % round_, metadata=extra, timeout=10)
            assert reply == b"echo:m%d" % round_
            received = dict(grpc_app.metadata[-1])
            assert all(received[k] == v for k, v in extra), "a field changed on the way"
    finally:
        channel.close()
        server.stop()
        client.stop()


def _four_kinds_through_two_proxies(
    channel: grpc.Channel, grpc_app: GrpcApp, h2_server_proxy: ProxyProcess, h2_client_proxy: ProxyProcess
) -> None:
    rpc = methods(channel)
    forged = [("x-mesh-src", FORGED), ("x-mesh-dst", FORGED), ("x-mesh-via", "abc")]
    reply, call = rpc["unary"].with_call(b"hi", metadata=forged, timeout=10)
    assert reply == b"echo:hi"
    assert _no_mesh_fields(call.initial_metadata()) and _no_mesh_fields(call.trailing_metadata())
    assert list(rpc["server_stream"](b"5", metadata=forged, timeout=10)) == [b"0", b"1", b"2", b"3", b"4"]
    assert rpc["client_stream"](iter([b"a", b"b", b"c"]), metadata=forged, timeout=10) == b"a|b|c"
    assert list(rpc["bidi"](iter([b"x", b"y"]), metadata=forged, timeout=10)) == [b"re:x", b"re:y"]

    assert len(grpc_app.metadata) == 4
    for seen in grpc_app.metadata:  # the app never sees a mesh field, forged or real
        assert _no_mesh_fields(seen), seen
    # Counted under the client proxy's identity, never the forged one, on both sides.
    inbound = h2_server_proxy.samples("response_total")
    assert sum(s.value for s in inbound if s.labels.get("grpc_status") == "0") == 4
    for s in inbound:
        assert s.labels["direction"] == "inbound"
        assert {k: s.labels.get(k) for k in CLIENT_LABELS} == CLIENT_LABELS
        assert s.labels["classification"] == "success" and s.labels["status_code"] == "200"
    outbound = h2_client_proxy.samples("response_total")
    assert sum(s.value for s in outbound if s.labels.get("grpc_status") == "0") == 4
    for s in outbound:
        assert {k: s.labels.get(k) for k in SERVER_LABELS} == SERVER_LABELS
    assert h2_server_proxy.value("request_total", direction="inbound", **CLIENT_LABELS) == 4
    # Latency is recorded per stream (to the response headers).
    assert h2_server_proxy.value("response_latency_ms_count", direction="inbound") == 4
    # One h2 connection between the proxies carried every stream (the CONNECT tunnel's own
    # connection, made before its first bytes were judged, was closed unused and names no peer).
    assert h2_client_proxy.value("tcp_open_total", direction="outbound", peer="dst", **SERVER_LABELS) == 1
    assert h2_client_proxy.value("tcp_open_connections", direction="outbound", peer="dst") == 1


def test_grpc_status_classifies_success_and_failure(
    channel: grpc.Channel, h2_server_proxy: ProxyProcess, h2_client_proxy: ProxyProcess
) -> None:
    unary = methods(channel)["unary"]
    for _ in range(6):
        assert unary(b"ok", timeout=10) == b"echo:ok"
    codes = []
    for code in (5, 5, 13, 14):
        with pytest.raises(grpc.RpcError) as failed:
            unary(b"fail:%d" % code, timeout=10)
        codes.append(failed.value.code().value[0])
    assert codes == [5, 5, 13, 14]  # each client saw the status its server sent
    for proxy, direction in ((h2_server_proxy, "inbound"), (h2_client_proxy, "outbound")):
        by_status = {
            s.labels["grpc_status"]: (s.labels["classification"], s.value)
            for s in proxy.samples("response_total")
            if s.labels["direction"] == direction
        }
        assert by_status == {
            "0": ("success", 6), "5": ("failure", 2), "13": ("failure", 1), "14": ("failure", 1),
        }  # fmt: skip


def test_a_stalled_stream_holds_a_window_not_the_stream_and_blocks_no_other(
    channel: grpc.Channel, grpc_app: GrpcApp, h2_server_proxy: ProxyProcess, h2_client_proxy: ProxyProcess
) -> None:
    rpc = methods(channel)
    assert rpc["unary"](b"warm", timeout=10) == b"echo:warm"
    proxies = (h2_server_proxy, h2_client_proxy)
    rss_before = [p.rss_kib() for p in proxies]
    flood = rpc["flood"](b"", timeout=60)
    next(flood)  # the stream is open; now its reader stalls
    time.sleep(1.5)
    sent_while_stalled = grpc_app.flood_sent
    # Other streams on the same connections go on meanwhile.
    started = time.monotonic()
    for i in range(20):
        assert rpc["unary"](b"%d" % i, timeout=5) == b"echo:%d" % i
    assert time.monotonic() - started < 5
    time.sleep(0.5)
    # Flow control reached the server: it could not push its 1000 × 64 KiB (64 MiB) into the
    # proxies, and they hold no more than windows and socket buffers of it.
    assert sent_while_stalled < 700, sent_while_stalled
    assert grpc_app.flood_sent - sent_while_stalled < 10
    rss_stalled = [p.rss_kib() for p in proxies]
    assert all(after - before < 16 * 1024 for before, after in zip(rss_before, rss_stalled, strict=True))
    received = 1 + sum(1 for _ in flood)  # once read again, the stream completes whole
    assert received == 1000
    flood.cancel()


def _raw_h2(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _events_until_closed(sock: socket.socket, conn: h2.connection.H2Connection, seconds: float) -> list[Any]:
    events: list[Any] = []
    for data in chunks_until_closed(sock, seconds):
        try:
            events += conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                break
    return events


def _grpc_request(sid: int, port: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/mesh.test.Echo/Unary"),
        (b":authority", b"127.0.0.1:%d" % port), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]  # fmt: skip


def test_drain_sends_goaway_and_lets_streams_in_flight_finish(grpc_app: GrpcApp, tmp_path: Path) -> None:
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward",
        f"127.0.0.1:{grpc_app.port}",
        "--shutdown-grace",
        "5",
        identity=SERVER_ID,
    )
    try:
        sock, conn = _raw_h2(proxy.inbound)
        message = b"sleep:1.5"
        conn.send_headers(1, _grpc_request(1, proxy.inbound))
        conn.send_data(1, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(0.3)  # the stream is in flight at the app
        started = time.monotonic()
        proxy.process.terminate()
        raw = bytes_until_closed(sock, 6)
        closed_after = time.monotonic() - started
        exit_code = proxy.process.wait(timeout=10)
    finally:
        proxy.stop()
    frames = parse_frames(raw)
    kinds = [type(f).__name__ for f in frames]
    goaway = kinds.index("GoAwayFrame")
    assert frames[goaway].error_code == 0 and frames[goaway].last_stream_id == 1
    after = frames[goaway + 1 :]  # the stream in flight finishes after the GOAWAY
    data = b"".join(f.data for f in after if isinstance(f, DataFrame) and f.stream_id == 1)
    assert data == b"\x00\x00\x00\x00\x0e" + b"echo:sleep:1.5"
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 and "END_STREAM" in f.flags for f in after)
    assert 1.0 < closed_after < 5.0  # the stream finished, then the connection closed
    assert exit_code == 0


def test_a_slow_rpc_does_not_hold_back_the_others_on_its_connection(channel: grpc.Channel) -> None:
    """One call the app answers in 2 s; ten more on the same h2 connections meanwhile."""
    rpc = methods(channel)
    done = threading.Event()

    def slow() -> None:
        rpc["unary"](b"sleep:2", timeout=10)
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    for i in range(10):
        assert rpc["unary"](b"q%d" % i, timeout=5) == b"echo:q%d" % i
    assert time.monotonic() - started < 1.5 and not done.is_set()
    thread.join(10)
    assert done.is_set()


def test_streams_cut_short_give_their_window_back_to_the_shared_connection(
    channel: grpc.Channel, grpc_app: GrpcApp, h2_server_proxy: ProxyProcess
) -> None:
    """150 streams each cancelled with up to a window of data queued in the proxies (150 × 64 KiB
    is more than a connection's window): the connections they shared still carry a stream."""
    rpc = methods(channel)
    for _ in range(150):
        flood = rpc["flood"](b"", timeout=10)
        next(flood)
        time.sleep(0.002)  # let the windows fill
        flood.cancel()
    assert rpc["unary"](b"still", timeout=5) == b"echo:still"
    received = sum(len(m) for m in rpc["flood"](b"", timeout=30))
    assert received == 1000 * 64 * 1024
    assert h2_server_proxy.value("response_total", direction="inbound", error="client_gone") == 150
    # Cancelling streaming RPCs whose responses were under way is no rapid reset: the connection
    # between the proxies, carrying them all, was never ended.
    assert h2_server_proxy.value("h2_connection_errors_total") == 0
