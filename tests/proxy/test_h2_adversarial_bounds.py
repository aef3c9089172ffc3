"""Issue #13's remaining HTTP/2 bounds, through a real proxy process: fields per header list,
WINDOW_UPDATE floods (and the real clients that send many), upstream header blocks past the
decode limit, an unexpected error on one stream of a shared upstream connection.

Oracles: each client's own response (status, body, the RST_STREAM or GOAWAY code it got), what
the backend received (streams, their ends and resets), the proxy's counters, RSS and
descriptors. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

from proxy import h2rules, hpack_nghttp2
from tests.proxy import test_h2_adversarial_streams as streams
from tests.proxy import test_proxy_h2
from tests.proxy.h2_backend import TICKS, Seen
from tests.proxy.test_h2_adversarial_streams import Backend, _channel
from tests.proxy.test_proxy_h2_deadlines import Client
from tests.support.grpc_app import GrpcApp, methods
from tests.support.h2wire import bytes_until_closed, parse_frames, send_until_goaway
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The fixtures of the files whose harnesses these tests reuse: the scripted h2 backend and a
# proxy in front of it; the grpcio app and its sidecar.
backend, proxy = streams.backend, streams.proxy
grpc_app, h2_server_proxy = test_proxy_h2.grpc_app, test_proxy_h2.h2_server_proxy


def _ticked_whole(client: Client, sid: int) -> None:
    """A bystander's `/tick` download ends whole: each of its ticks, no reset."""
    client.run(10, until=lambda: client.got[sid].ended_at)
    got = client.got[sid]
    assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)


def _fields(count: int, tag: bytes = b"f") -> list[tuple[bytes, bytes]]:
    return [(b"x-%s%d" % (tag, i), b"v") for i in range(count)]


def _wait(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


# --- 1. 100 fields per header list ---------------------------------------------------------------


def test_a_request_over_100_fields_is_answered_431_and_never_reaches_the_backend(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """HTTP/1's bound of 100 fields, on HTTP/2: 4 pseudo-fields and 96 others (100, pseudo-fields
    counted as Envoy counts them) reach the backend whole; one more field is answered 431 and the
    backend never sees that stream. The client's next stream on the same connection and another
    client's download go on. (Before: 300 fields reached the backend.)"""
    client, bystander = Client(proxy.inbound), Client(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        at_limit = client.request("/echo-header", extra=_fields(96))
        over = client.request("/ok", extra=_fields(97))
        client.run(5, until=lambda: client.got[at_limit].ended_at and client.got[over].ended_at)
        after = client.request("/echo-header", extra=[(b"x-pad", b"after")])
        client.run(5, until=lambda: client.got[after].ended_at)
        bystander.run(10, until=lambda: bystander.got[tick].ended_at)
        assert (client.got[over].status, client.got[over].body, client.got[over].reset) == (431, b"", None)
        assert (client.got[at_limit].status, client.got[at_limit].body) == (200, b"ok")
        assert (client.got[after].status, client.got[after].headers.get(b"x-echo")) == (200, b"after")
        got = bystander.got[tick]
        assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)
        assert backend.by_path("/ok") == []
        seen = backend.by_path("/echo-header")
        assert len(seen) == 2 and seen[0].headers.get("x-f95") == "v"
        assert proxy.value("response_total", status_code="431") == 1
        assert not client.closed
    finally:
        client.close()
        bystander.close()


def test_a_request_trailer_section_over_100_fields_cancels_the_upstream_stream_and_is_answered_431(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """The same bound on a request's trailers: the stream already went upstream, so the backend
    sees it cancelled (never ended with those trailers), the client gets 431."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/sink", end=False)
        client.conn.send_data(sid, b"body")
        client.sock.sendall(client.conn.data_to_send())
        assert _wait(lambda: backend.by_path("/sink") and backend.by_path("/sink")[0].body == 4, 5)
        client.conn.send_headers(sid, _fields(101, b"t"), end_stream=True)
        client.sock.sendall(client.conn.data_to_send())
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].status == 431
        assert _wait(lambda: backend.by_path("/sink")[0].reset is not None, 5)
        (seen,) = backend.by_path("/sink")
        assert (seen.ended, seen.reset) == (False, ErrorCodes.CANCEL)
        assert proxy.value("response_total", status_code="431") == 1
    finally:
        client.close()


def test_a_grpc_call_with_over_100_metadata_fields_is_resource_exhausted_and_not_delivered(
    grpc_app: GrpcApp, h2_server_proxy: ProxyProcess
) -> None:
    """grpcio with 120 metadata entries: the app never sees the call, the client reads
    RESOURCE_EXHAUSTED (a 431 in gRPC's words: retrying the same call cannot help), and the next
    call on the same channel goes through."""
    channel = _channel(h2_server_proxy.inbound)
    try:
        unary = methods(channel)["unary"]
        metadata = [(f"x-m{i}", "v") for i in range(120)]
        with pytest.raises(grpc.RpcError) as failed:
            unary(b"many", timeout=5, metadata=metadata)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert unary(b"few", timeout=5, metadata=metadata[:40]) == b"echo:few"
        assert len(grpc_app.metadata) == 1 and grpc_app.metadata[0].get("x-m39") == "v"
    finally:
        channel.close()


# --- 2. WINDOW_UPDATE floods ------------------------------------------------------------------


def _request_block(port: int) -> bytes:
    return hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/sink"), (":authority", f"127.0.0.1:{port}")]
    )


def test_a_window_update_flood_gets_goaway_within_a_bounded_number_of_frames(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """WINDOW_UPDATEs of 1 on the connection and on an open stream, 20 at a time: the proxy sent
    nothing to acknowledge, so Envoy's budget (5 + 2 × (streams + 10 × DATA frames sent)) is
    soon spent: GOAWAY ENHANCE_YOUR_CALM before 100 frames, counted `window_update_flood`. A
    bystander's download on another connection goes on. (Before: 20,000 went by, unanswered.)"""
    bystander = Client(proxy.inbound)
    sock = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
    try:
        tick = bystander.request("/tick")
        opening = HeadersFrame(1, _request_block(proxy.inbound), flags=["END_HEADERS"])
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + opening.serialize())
        batch = b"".join(
            WindowUpdateFrame(0, window_increment=1).serialize()
            + WindowUpdateFrame(1, window_increment=1).serialize()
            for _ in range(10)
        )
        frames, sent = send_until_goaway(sock, batch, 20, 20_000)
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways and goaways[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM, sent
        assert sent <= 100
        assert proxy.value("h2_connection_errors_total", error="window_update_flood") == 1
        _ticked_whole(bystander, tick)
        assert proxy.process.poll() is None
    finally:
        sock.close()
        bystander.close()


def test_grpc_streaming_under_load_is_never_taken_for_a_window_update_flood(
    grpc_app: GrpcApp, h2_server_proxy: ProxyProcess
) -> None:
    """grpcio acknowledges what it reads with WINDOW_UPDATEs (and probes bandwidth): 64 MiB
    downloaded in 64 KiB messages, 300 bidirectional messages, a 300-message upload and 300
    one-message uploads through the proxy, for a bounded few seconds: every message arrives, no
    connection is cut."""
    channel = _channel(h2_server_proxy.inbound)
    try:
        rpc = methods(channel)
        started = time.monotonic()
        assert sum(len(m) for m in rpc["flood"](b"", timeout=60)) == 1000 * 64 * 1024
        replies = list(rpc["bidi"](iter([b"%d" % i for i in range(300)]), timeout=30))
        assert replies == [b"re:%d" % i for i in range(300)]
        joined = rpc["client_stream"](iter([b"u" * 1024] * 300), timeout=30)
        assert joined == b"|".join([b"u" * 1024] * 300)
        # 300 calls, each ended by the client's half-close: an empty DATA frame with END_STREAM,
        # which is no empty-frame flood whatever the rate.
        assert [rpc["client_stream"](iter([b"%d" % i]), timeout=10) for i in range(300)] == [
            b"%d" % i for i in range(300)
        ]
        assert time.monotonic() - started < 60
        errors = {s.labels["error"]: s.value for s in h2_server_proxy.samples("h2_connection_errors_total")}
        assert not any(errors.values()), errors
    finally:
        channel.close()


def test_h2load_downloads_and_uploads_are_never_taken_for_a_window_update_flood(
    backend: Backend, proxy: ProxyProcess, tmp_path: Path
) -> None:
    """nghttp2's h2load with 64 KiB windows (so it acknowledges every 32 KiB it reads): 24
    downloads of 1 MiB, then 48 uploads of 256 KiB (the backend acknowledges each DATA frame
    the proxy sends it): every request succeeds, nothing is counted as a flood."""
    upload = tmp_path / "upload"
    upload.write_bytes(b"u" * 256 * 1024)
    runs = [
        ["-n", "24", "-c", "2", "-m", "4", proxy.url("/big")],
        ["-n", "48", "-c", "2", "-m", "4", "-d", str(upload), proxy.url("/sink")],
    ]
    for args in runs:
        out = subprocess.run(
            ["h2load", "-w", "16", "-W", "16", *args],
            capture_output=True, text=True, timeout=120, check=False,
        ).stdout  # fmt: skip
        n = args[1]
        assert f"requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed" in out, out
    assert len(backend.by_path("/sink")) == 48 and {s.body for s in backend.by_path("/sink")} == {256 * 1024}
    errors = {s.labels["error"]: s.value for s in proxy.samples("h2_connection_errors_total")}
    assert not any(errors.values()), errors


# --- 3. an upstream's header block past the decode limit ----------------------------------------


class BigHeadBackend(Backend):
    """Backend, and two responses whose header list decodes to over 1 MiB (what ended the shared
    upstream connection before):

    - `/bomb-head`: a 4,000-byte field sent 300 times: once into the dynamic table, then 299
      one-byte indexes (a block of 4 KiB, nghttp2's to decode; 1.2 MB decoded).
    - `/long-head`: one value of 1.2 million "0"s, Huffman-coded in 5 bits each (a block of
      750 KB over 46 CONTINUATIONs: past nghttp2's 64 KiB, hpack's to decode).
    """

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Any], ticks: list[Any]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            path = dict(event.headers).get(":path")
            if path in ("/bomb-head", "/long-head"):
                seen[event.stream_id] = Seen(path, dict(event.headers))
                with self.lock:
                    self.streams.append(seen[event.stream_id])
                big = (
                    [("x-bomb", "b" * 4000)] * 300 if path == "/bomb-head" else [("x-long", "0" * 1_200_000)]
                )
                conn.send_headers(event.stream_id, [(":status", "200"), *big])
                conn.send_data(event.stream_id, b"abc", end_stream=True)
                return
        super()._on_event(conn, event, seen, ticks)


@pytest.fixture(params=["nghttp2", "python"])
def big_head(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[BigHeadBackend, ProxyProcess]]:
    """The backend and a proxy in front of it, with libnghttp2's HPACK and without (h2's hpack)."""
    server = BigHeadBackend()
    env = {} if request.param == "nghttp2" else {"MESH_NGHTTP2_LIBRARY": ""}
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{server.port}", identity=SERVER_ID,
        log_level="info", env=env,
    )  # fmt: skip
    assert ("hpack=python" in p.log()) == (request.param == "python")
    yield server, p
    p.stop()
    server.stop()


@pytest.mark.parametrize("path", ["/bomb-head", "/long-head"])
def test_an_upstream_header_list_over_1_mib_fails_its_stream_and_no_other(
    path: str, big_head: tuple[BigHeadBackend, ProxyProcess]
) -> None:
    """Two clients share one upstream connection; one stream's response head decodes to 1.2 MB.
    Its client gets a failure (502, or a reset) counted `bad_response`; the other's download
    ends whole, and its next response, coded against the dynamic table the big block changed,
    reads exactly as the backend sent it: the proxy's HPACK table stayed in step. (Before: the
    decoder gave up at 1 MiB mid-block and the upstream connection ended, the other download
    with it.)"""
    backend, proxy = big_head
    client, bystander = Client(proxy.inbound), Client(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        bystander.run(1, until=lambda: False)
        sid = client.request(path)
        client.run(20, until=lambda: client.got[sid].ended_at)
        got = client.got[sid]
        assert got.ended_at and (got.status == 502 or got.reset is not None), got
        assert b"x-bomb" not in got.headers and b"x-long" not in got.headers
        _ticked_whole(bystander, tick)
        after = bystander.request("/echo-header", extra=[(b"x-pad", b"b" * 4000)])
        bystander.run(10, until=lambda: bystander.got[after].ended_at)
        assert bystander.got[after].headers.get(b"x-echo") == b"b" * 4000
        assert backend.connections == 1 and len(backend.by_path(path)) == 1
        assert proxy.value("response_total", error="bad_response") == 1
        errors = {s.labels["error"]: s.value for s in proxy.samples("h2_connection_errors_total")}
        assert not any(errors.values()), errors
    finally:
        client.close()
        bystander.close()


@pytest.mark.parametrize("coder", ["nghttp2", "hpack"])
@pytest.mark.parametrize("long", [False, True], ids=["short-block", "block-over-64-kib"])
def test_a_list_past_the_limit_is_decoded_through_and_the_next_block_reads_right(
    coder: str, long: bool
) -> None:
    """The decoders an upstream connection uses (`decode_through`), nghttp2's and h2's hpack, on
    a block whose list passes 32 KiB: the fields up to the limit, then OVER_LIMIT; the table
    changes the block made (an entry added after the limit, one evicted) are all made, so the
    next block, indexed against them, decodes exactly as an unbounded hpack decodes it."""
    if coder == "nghttp2" and not hpack_nghttp2.load():
        pytest.skip("libnghttp2.so.14 is not installed")
    pad = [(b"x-long", b"{" * 70_000)] if long else []  # no Huffman gain: a block over 64 KiB
    first = [(b"x-a", b"1"), *pad, *[(b"x-bomb", b"b" * 4000)] * 10, (b"x-new", b"n")]
    encoder = hpack.Encoder()
    blocks = [encoder.encode(first), encoder.encode([(b"x-new", b"n"), (b"x-a", b"1")])]
    theirs = hpack.Decoder(max_header_list_size=1 << 30)
    expected = [[tuple(f) for f in theirs.decode(block, raw=True)] for block in blocks]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    if coder == "nghttp2":
        assert hpack_nghttp2.install(conn)
    hpack_nghttp2.decode_through(conn, h2rules.MAX_HEADER_LIST_SIZE)
    over = conn.decoder.decode(blocks[0], raw=True)
    assert over[-1] is hpack_nghttp2.OVER_LIMIT
    kept = [tuple(f) for f in over[:-1]]
    assert kept == expected[0][: len(kept)] and sum(32 + len(n) + len(v) for n, v in kept) <= 32 * 1024
    assert [tuple(f) for f in conn.decoder.decode(blocks[1], raw=True)] == expected[1]
    assert blocks[1][0] >= 0x80  # x-new came from the table: the decoders kept it in step


# --- 4. an unexpected error on one stream of a shared upstream connection -----------------------

# The proxy, with a fault injected where an upstream's trailers are read: trailers carrying
# `x-fault` raise, as a bug or an input no rule foresaw would.
FAULT_LAUNCHER = (
    "-c",
    "import sys\n"
    "from proxy import h2rules\n"
    "split = h2rules.split_trailers\n"
    "def faulty(headers):\n"
    "    if any(name == b'x-fault' for name, _ in headers):\n"
    "        raise RuntimeError('injected fault: x-fault secret-value')\n"
    "    return split(headers)\n"
    "h2rules.split_trailers = faulty\n"
    "from proxy.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n",
)


class FaultBackend(Backend):
    """Backend, and `/fault`: 200, b"abc", then trailers with `x-fault` (the injected fault)."""

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Any], ticks: list[Any]) -> None:
        if isinstance(event, h2.events.RequestReceived) and dict(event.headers).get(":path") == "/fault":
            seen[event.stream_id] = Seen("/fault", dict(event.headers))
            with self.lock:
                self.streams.append(seen[event.stream_id])
            conn.send_headers(event.stream_id, [(":status", "200")])
            conn.send_data(event.stream_id, b"abc")
            conn.send_headers(event.stream_id, [("grpc-status", "0"), ("x-fault", "1")], end_stream=True)
            return
        super()._on_event(conn, event, seen, ticks)


def test_an_unexpected_error_on_one_upstream_stream_fails_that_stream_alone(tmp_path: Path) -> None:
    """A handler of one stream's event raises (an injected fault): that stream fails (its client
    is reset, counted `error="proxy_error"`, one line at level error that names the exception's
    type only), while another client's download on the same upstream connection ends whole and
    the next stream takes the same connection. (Before: the exception ended the upstream
    connection's reader, and every client's streams on it.)"""
    backend = FaultBackend()
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", identity=SERVER_ID, log_level="info",
        launcher=FAULT_LAUNCHER,
    )  # fmt: skip
    client, bystander = Client(proxy.inbound), Client(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        bystander.run(1, until=lambda: False)
        sid = client.request("/fault")
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].reset == ErrorCodes.INTERNAL_ERROR  # its head had gone: reset
        _ticked_whole(bystander, tick)
        after = client.request("/echo-header", extra=[(b"x-pad", b"after")])
        client.run(5, until=lambda: client.got[after].ended_at)
        assert client.got[after].headers.get(b"x-echo") == b"after"
        assert backend.connections == 1
        assert proxy.value("response_total", error="proxy_error") == 1
        lines = [line for line in proxy.log().splitlines() if "h2_stream_error" in line]
        assert len(lines) == 1 and "level=error" in lines[0] and "error=RuntimeError" in lines[0], lines
        assert "secret-value" not in proxy.log() and "/fault" not in lines[0]
        assert proxy.process.poll() is None
    finally:
        client.close()
        bystander.close()
        proxy.stop()
        backend.stop()


# --- CONTINUATION floods (CVE-2024-27316) ------------------------------------------------------


def test_continuations_of_a_block_too_big_to_be_under_32_kib_end_the_connection_at_once(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """40 clients each send HEADERS and 60 full CONTINUATIONs (16 KiB each) without END_HEADERS:
    under h2's 64-frame limit, each held ~1 MiB until the 10 s header timeout (40 MiB for 40
    clients; 4 GiB at the connection cap). A block over 4 × 32 KiB cannot decode under the
    32 KiB limit (Huffman's longest code is under 4 bytes a byte): each connection gets GOAWAY
    ENHANCE_YOUR_CALM within 2 s, counted `header_list_too_large`, with little memory held, and
    the backend never sees a stream. A bystander's download goes on."""
    bystander = Client(proxy.inbound)
    socks = [socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) for _ in range(40)]
    try:
        tick = bystander.request("/tick")
        bystander.run(0.5, until=lambda: False)
        rss_before = proxy.rss_kib()
        started = time.monotonic()
        block = _request_block(proxy.inbound)
        flood = HeadersFrame(1, block).serialize() + ContinuationFrame(1, b"\x00" * 16384).serialize() * 60
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(PREFACE + SettingsFrame(0).serialize() + flood)
        time.sleep(0.5)  # the proxy has read what it takes
        held = proxy.rss_kib() - rss_before
        codes = []
        for sock in socks:
            frames = parse_frames(bytes_until_closed(sock, 3))
            codes.append([f.error_code for f in frames if isinstance(f, GoAwayFrame)])
        assert codes == [[ErrorCodes.ENHANCE_YOUR_CALM]] * 40
        assert time.monotonic() - started < 4  # not the 10 s header timeout
        assert held < 16 * 1024, held
        assert proxy.value("h2_connection_errors_total", error="header_list_too_large") == 40
        assert backend.by_path("/sink") == []
        _ticked_whole(bystander, tick)
    finally:
        for sock in socks:
            sock.close()
        bystander.close()


# --- empty DATA frames (CVE-2019-9518) ------------------------------------------------------------


def test_an_empty_data_frame_flood_ends_its_connection_and_no_other(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Empty DATA frames that do not end their stream cost no window, only CPU: past 100 in a
    second the connection gets GOAWAY ENHANCE_YOUR_CALM, counted `empty_frame_flood`, before
    the sender could send 20,000; the backend got the stream's one byte only, and a bystander's
    download goes on. (Before: all 20,000 were read, acknowledged and dropped, unbudgeted.)"""
    client, bystander = Client(proxy.inbound), Client(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        sid = client.request("/sink", end=False)
        client.conn.send_data(sid, b"a")
        client.sock.sendall(client.conn.data_to_send())
        empty = (0).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big")
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 20_000 and not client.closed:
                client.sock.sendall(empty * 100)
                sent += 100
                client.run(0.05, until=lambda: False)
        client.run(2, until=lambda: False)
        assert client.closed and sent < 20_000, sent
        assert proxy.value("h2_connection_errors_total", error="empty_frame_flood") == 1
        assert _wait(lambda: backend.by_path("/sink") and backend.by_path("/sink")[0].reset is not None, 5)
        (seen,) = backend.by_path("/sink")
        assert (seen.body, seen.ended, seen.reset) == (1, False, ErrorCodes.CANCEL)
        _ticked_whole(bystander, tick)
    finally:
        client.close()
        bystander.close()
