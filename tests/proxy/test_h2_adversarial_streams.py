"""HTTP/2 attacks on what streams of different clients share: the proxy's upstream connections
(their windows, stream IDs, the backend's refusals) and its per-connection state (HPACK tables,
queues of frames). A sidecar does no harm: each client gets what it would get without the mesh.

Oracles: each client's own response (its body, its headers, the RST_STREAM code it got), what
the backend received (streams, DATA frames, attempts), the proxy's RSS, and `h2_open_streams`
(the streams the proxy holds open, on each side). Every loop is bounded.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

from kubectl_mesh.log import Logger
from proxy import h2proxy, h2rules
from proxy.config import ProxyConfig
from proxy.server import Proxy
from tests.proxy.h2_backend import TICK, TICKS, H2Backend, Seen, _Tick
from tests.proxy.test_proxy_adversarial import Relay
from tests.proxy.test_proxy_h2_deadlines import Client, Got
from tests.support.grpc_app import GrpcApp
from tests.support.h2wire import bytes_until_closed, parse_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

GRPC_FIELDS = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


MALFORMED = {
    "/connection-field": ([(":status", "200"), ("connection", "keep-alive")], [("grpc-status", "0")]),
    "/uppercase": ([(":status", "200"), ("X-Upper", "1")], [("grpc-status", "0")]),
    "/bad-trailers": ([(":status", "200")], [(":status", "200")]),
    "/huge-head": ([(":status", "200"), ("x-big", "h" * 40000)], [("grpc-status", "0")]),
    # over 100 fields (the bound of an HTTP/1 head): in the head, in the trailers
    "/many-fields": ([(":status", "200"), *((f"x-f{i}", "v") for i in range(150))], [("grpc-status", "0")]),
    "/many-trailers": ([(":status", "200")], [("grpc-status", "0"), *((f"x-t{i}", "v") for i in range(150))]),
    "/short-then-trailers": ([(":status", "200"), ("content-length", "10")], [("grpc-status", "0")]),
}


PATHS = {
    "/early",
    "/big",
    "/echo-header",
    "/noread",
    "/sink",
    "/refuse",
    "/goaway",
    "/tick-goaway",
    "/badlen",
    "/longlen",
    *MALFORMED,
}


class Backend(H2Backend):
    """H2Backend with the paths these attacks need (the others are H2Backend's):

    - `/big`: 200 and 1 MiB, sent as the windows allow.
    - `/early`: while the request is still open, 200 and 100 KiB, whole, then RST_STREAM
      NO_ERROR: "stop sending, I answered" (RFC 9113 §8.1, as gRPC servers and upload limits do).
    - `/echo-header`: 200 carrying the request's `x-pad` back as `x-echo`, body b"ok".
    - `/noread`: never answers and never acknowledges the request's DATA (its window closes).
    - `/sink`: reads the whole request, then answers the number of DATA frames and bytes it got.
    - `/refuse`: the first `refusals` streams get RST_STREAM(REFUSED_STREAM), as from a server
      at its limit; later ones 200 b"ok".
    - `/goaway`: GOAWAY naming the stream before this one: this one was never processed.
    - `/tick-goaway`: a graceful GOAWAY naming this stream, then `/tick`'s body (10 bytes, one
      every 0.3 s): the stream it took finishes (RFC 9113 §6.8), as nginx's and Go's do on
      reload. Raw, since h2 would close its own side on sending GOAWAY.
    - `/badlen`: 200 with content-length 10 and a body of 3 bytes (malformed).
    - `/longlen`: 200 with content-length 2 and a body of 3 bytes (malformed).
    - `/connection-field`, `/uppercase`, `/bad-trailers`, `/huge-head`, `/many-fields`,
      `/many-trailers`: 200 with a `connection` field, with a field name in capitals, with a
      pseudo-header in its trailers (malformed), with a header list over the 32 KiB the proxy
      announced, with 150 fields in its head, in its trailers (over the proxy's 100);
      `/short-then-trailers`: content-length 10, 3 bytes, then trailers end it (malformed).
    """

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.attempts = 0  # `/refuse` streams that arrived, refused or not
        self.frames: dict[int, int] = {}  # DATA frames per Seen (by id)
        self.big_sent = 0  # bytes of `/big` bodies sent, all streams
        self.pending: dict[tuple[int, int], int] = {}  # (connection, stream) → `/big` bytes left
        self.early: set[tuple[int, int]] = set()  # (connection, stream) of `/early`: reset once sent
        super().__init__(max_streams=1000)  # as a gRPC server: many clients' streams on one connection

    def _send_more(self, conn: Any) -> None:
        """Each waiting body as far as the windows allow (the end, and `/early`'s reset, with it)."""
        for key in [k for k in self.pending if k[0] == id(conn)]:
            sid = key[1]
            while (left := self.pending.get(key, 0)) > 0:
                try:
                    size = min(left, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if size <= 0:
                        break
                    conn.send_data(sid, b"b" * size, end_stream=size == left)
                except h2.exceptions.StreamClosedError:
                    size = left  # reset by the proxy
                self.pending[key] = left - size
                with self.lock:
                    self.big_sent += size
            if self.pending.get(key) == 0:
                del self.pending[key]
                if key in self.early:
                    conn.reset_stream(sid, ErrorCodes.NO_ERROR)

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Seen], ticks: list[Any]) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.RequestReceived):
            path = dict(event.headers).get(":path", "")
            if path in PATHS:
                headers = dict(event.headers)
                stream = Seen(path, headers)
                with self.lock:
                    self.streams.append(stream)
                seen[sid] = stream
                if path in ("/big", "/early"):
                    conn.send_headers(sid, [(":status", "200")])
                    self.pending[(id(conn), sid)] = 1 << 20 if path == "/big" else 100 * 1024
                    if path == "/early":
                        self.early.add((id(conn), sid))
                elif path == "/echo-header":
                    conn.send_headers(sid, [(":status", "200"), ("x-echo", headers.get("x-pad", ""))])
                    conn.send_data(sid, b"ok", end_stream=True)
                elif path == "/refuse":
                    with self.lock:
                        self.attempts += 1
                        refuse = self.attempts <= self.refusals
                    if refuse:
                        conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                    else:
                        conn.send_headers(sid, [(":status", "200")])
                        conn.send_data(sid, b"ok", end_stream=True)
                elif path in ("/badlen", "/longlen"):
                    conn.send_headers(
                        sid, [(":status", "200"), ("content-length", "10" if path == "/badlen" else "2")]
                    )
                    conn.send_data(sid, b"abc", end_stream=True)
                elif path in MALFORMED:
                    conn.config.validate_outbound_headers = conn.config.normalize_outbound_headers = False
                    head, trailers = MALFORMED[path]
                    conn.send_headers(sid, head)
                    conn.send_data(sid, b"abc")
                    conn.send_headers(sid, trailers, end_stream=True)
                    conn.config.validate_outbound_headers = conn.config.normalize_outbound_headers = True
                elif path == "/goaway":
                    conn.close_connection(last_stream_id=max(sid - 2, 0))
                elif path == "/tick-goaway":
                    conn.send_headers(sid, [(":status", "200")])
                    conn._data_to_send += GoAwayFrame(0, last_stream_id=sid, error_code=0).serialize()
                    ticks.append(_Tick(sid, TICKS, time.monotonic() + TICK))
                return
        stream = seen.get(sid)
        if stream is None or stream.path not in ("/noread", "/sink"):
            super()._on_event(conn, event, seen, ticks)
            return
        if isinstance(event, h2.events.DataReceived):
            stream.body += len(event.data)
            with self.lock:
                self.frames[id(stream)] = self.frames.get(id(stream), 0) + 1
            if stream.path != "/noread":
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
            if stream.path == "/sink":
                frames = self.frames.get(id(stream), 0)
                conn.send_headers(sid, [(":status", "200")])
                conn.send_data(sid, b"%d frames, %d bytes" % (frames, stream.body), end_stream=True)
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = int(event.error_code)


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend(refusals=1)
    yield server
    server.stop()


@pytest.fixture
def proxy(backend: Backend, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", identity=SERVER_ID, log_level="info"
    )
    yield p
    p.stop()


@pytest.fixture
def grpc_app() -> Iterator[GrpcApp]:
    app = GrpcApp()
    yield app
    app.stop()


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])


def _wait(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _settle(count: Any, seconds: float) -> None:
    """Wait until `count()` stops changing for a second (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    last = count()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = count()
        if now == last:
            return
        last = now


# --- the shared upstream connection -----------------------------------------------------------


def test_a_client_that_never_reads_does_not_stall_other_clients_of_the_same_backend(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """100 downloads (the most one connection may open) whose client reads nothing: each holds
    its stream's window of the backend's data in the proxy. They must not take the window of the
    upstream connection that other clients' streams share: without the mesh each client has a
    connection (and a window) of its own to the backend."""
    bystander = Client(proxy.inbound)
    attacker = Client(proxy.inbound)
    try:
        sid = bystander.request("/ok")
        bystander.run(5, until=lambda: bystander.got[sid].ended_at)
        rss_before = proxy.rss_kib()
        for _ in range(h2rules.MAX_CONCURRENT_STREAMS):
            attacker.request("/big")
        _settle(lambda: backend.big_sent, 10)  # the backend sends until the windows close
        assert backend.big_sent < h2rules.MAX_CONCURRENT_STREAMS * (1 << 20)  # the attacker reads nothing
        for _ in range(3):  # the bystander's own answers, each at once
            started = time.monotonic()
            sid = bystander.request("/ok")
            bystander.run(5, until=lambda sid=sid: bystander.got[sid].ended_at)
            assert (bystander.got[sid].status, bystander.got[sid].body) == (200, b"ok")
            assert time.monotonic() - started < 2
        # What the proxy holds for the stalled streams is bounded by their windows (100 × 64 KiB
        # in the proxy, as much again sent to the attacker's socket).
        assert proxy.rss_kib() - rss_before < 24 * 1024
        assert backend.connections == 1  # one upstream connection carried both clients
        # Exactly the attacker's 100 streams are open, on each side: every bystander's ended.
        proxy.assert_h2_open_streams(inbound_src=100, inbound_dst=100)
        attacker.close()
        proxy.assert_h2_open_streams()  # its connection gone, its streams with it, on both sides
    finally:
        attacker.close()
        bystander.close()


def test_a_client_resetting_its_stream_cancels_that_stream_alone_on_the_shared_connection(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Two clients' downloads share one upstream connection; one client resets its stream: the
    backend sees CANCEL on that stream only, and the other download ends whole."""
    one, two = Client(proxy.inbound), Client(proxy.inbound)
    try:
        first, second = one.request("/tick"), two.request("/tick")
        one.run(1, until=lambda: False)
        one.conn.reset_stream(first, ErrorCodes.CANCEL)
        one.sock.sendall(one.conn.data_to_send())
        two.run(10, until=lambda: two.got[second].ended_at)
        assert (two.got[second].status, two.got[second].body, two.got[second].reset) == (
            200,
            b"t" * TICKS,
            None,
        )
        ticks = backend.by_path("/tick")
        assert backend.connections == 1 and len(ticks) == 2
        assert sorted(str(t.reset) for t in ticks) == ["8", "None"]  # CANCEL, and the other untouched
        proxy.assert_h2_open_streams()  # the reset stream is out on both sides, and the ended one
    finally:
        one.close()
        two.close()


def test_an_upstream_connection_out_of_stream_ids_takes_no_new_stream() -> None:
    """Stream IDs are 31 bits and never reused: a shared upstream connection that lived long
    enough runs out. It must then make way for a new connection (h2 would raise on the next
    stream: every stream to that destination would kill its client's connection)."""
    proxy = Proxy(ProxyConfig(), Logger("error", "logfmt"))
    upstream = h2proxy.H2Upstream(proxy, proxy.h2pool, ("inbound", ("127.0.0.1", 9)))
    upstream.conn.initiate_connection()
    upstream.ready = True
    assert upstream.has_room()
    upstream.conn.highest_outbound_stream_id = 2**31 - 3  # the last client-side ID is 2^31 - 1
    assert upstream.has_room()
    upstream.conn.highest_outbound_stream_id = 2**31 - 1
    assert not upstream.has_room()


def test_a_stream_the_backend_refuses_is_refused_to_the_client_who_may_retry_it(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """REFUSED_STREAM means "not processed: safe to retry" (RFC 9113 §8.7): clients such as curl
    and Go's retry such a stream. Through the mesh, too: not a 502 that reads as a failed call."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/refuse")
        client.run(5, until=lambda: client.got[sid].reset is not None or client.got[sid].status)
        assert client.got[sid].status == 0  # no response head: the stream was refused
        assert client.got[sid].reset == ErrorCodes.REFUSED_STREAM
    finally:
        client.close()
    backend.attempts = 0
    curl = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-m", "10", proxy.url("/refuse")],
        capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert (curl.returncode, curl.stdout) == (0, b"ok"), curl.stderr
    assert backend.attempts == 2  # refused once, sent again by curl itself (never by the proxy)


def test_a_stream_a_backend_goaway_did_not_take_is_refused_and_the_next_goes_on_a_new_connection(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """GOAWAY's last stream ID says which streams the backend never processed: the client is
    told so (REFUSED_STREAM, never a response that reads as failed, never sent twice by the
    proxy), and its next stream goes to a new upstream connection."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/goaway")
        client.run(5, until=lambda: client.got[sid].reset is not None or client.got[sid].status)
        assert client.got[sid].status == 0
        assert client.got[sid].reset == ErrorCodes.REFUSED_STREAM
        assert len(backend.by_path("/goaway")) == 1  # the proxy did not replay it
        sid = client.request("/ok")
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert (client.got[sid].status, client.got[sid].body) == (200, b"ok")
        assert backend.connections == 2
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/badlen", "/longlen", *MALFORMED])
def test_a_malformed_response_resets_that_stream_alone(
    path: str, backend: Backend, proxy: ProxyProcess
) -> None:
    """A malformed response (a body that disagrees with its content-length, ended by DATA or by
    trailers; a connection field,
    a name in capitals, a pseudo-header in trailers; or a header list over the proxy's limit) is
    a stream error (RFC 9113 §8.1.1). h2
    makes it a connection error: on the upstream connection every client shares, one app
    response reset the others' streams (a bystander's download, cut after 3 of its 10 ticks)."""
    bystander = Client(proxy.inbound)
    client = Client(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        bystander.run(1, until=lambda: False)
        sid = client.request(path)
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].ended_at
        assert client.got[sid].status != 200 or client.got[sid].reset is not None  # never taken as whole
        bystander.run(10, until=lambda: bystander.got[tick].ended_at)
        got = bystander.got[tick]
        assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)
        assert backend.connections == 1
        assert proxy.value("response_total", error="bad_response") == 1
    finally:
        client.close()
        bystander.close()


def test_the_h2_stream_hooks_the_proxy_replaces_still_exist() -> None:
    """`_body_length_per_stream` replaces two methods of h2's stream: should a new h2 rename
    them, h2 would check lengths again per connection, and this says so."""
    assert callable(h2.stream.H2Stream._initialize_content_length)
    assert callable(h2.stream.H2Stream._track_content_length)


def test_a_complete_response_then_rst_no_error_reaches_the_client_whole(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """RFC 9113 §8.1: a server may answer before the request ended, then RST_STREAM(NO_ERROR) to
    stop the upload. The response it sent whole reaches a client that reads slowly whole (it was
    cut with INTERNAL_ERROR, the part still queued in the proxy lost, and counted a failure), and
    the client is told to stop sending in the same words."""
    client = Client(proxy.inbound)
    try:
        # A window of 16 KiB: the proxy holds the rest of the stream's 64 KiB when the end and
        # the reset come.
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})
        sid = client.request("/early", end=False)
        client.conn.send_data(sid, b"upload")
        client.sock.sendall(client.conn.data_to_send())
        client.run(5, until=lambda: client.got[sid].reset is not None)
        got = client.got[sid]
        assert (got.status, len(got.body), bool(got.ended_at)) == (200, 100 * 1024, True)
        assert got.reset == ErrorCodes.NO_ERROR
        assert proxy.value("response_total", classification="success", status_code="200") == 1
    finally:
        client.close()


# --- per-connection state -------------------------------------------------------------------


def test_a_huge_header_table_setting_does_not_make_the_proxy_keep_every_header_it_sent(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """A client may announce SETTINGS_HEADER_TABLE_SIZE of 2^31: an HPACK encoder that follows
    keeps every distinct field it sends that client, for the connection's lifetime. The proxy's
    encoder stays at 4 KiB, as nghttp2's and Envoy's do."""
    client = Client(proxy.inbound)
    try:
        client.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1})
        client.sock.sendall(client.conn.data_to_send())
        client.run(1, until=lambda: False)
        sid = client.request("/echo-header", extra=[(b"x-pad", b"w" * 100)])
        client.run(5, until=lambda: client.got[sid].ended_at)
        rss_before = 0
        # 640 responses, each with a distinct 4 KiB field: 2.5 MiB kept by an encoder that follows
        # the client's setting (each field costs a Python HPACK coder 8 Huffman passes).
        for batch in range(20):
            sids = {}
            for i in range(32):
                pad = b"%05d" % (batch * 32 + i) + b"p" * 4096
                sids[client.request("/echo-header", extra=[(b"x-pad", pad)])] = pad
            client.run(10, until=lambda sids=sids: all(client.got[s].ended_at for s in sids))
            for s, pad in sids.items():  # each stream got its own field back
                assert client.got[s].headers.get(b"x-echo") == pad, s
                del client.got[s]
            if batch == 0:
                rss_before = proxy.rss_kib()  # the paths are warm
        assert not client.closed
        # The client's decoder mirrors the proxy's encoder table, entry for entry (HPACK).
        table = client.conn.decoder.header_table.dynamic_entries
        assert sum(32 + len(name) + len(value) for name, value in table) <= 4096  # nghttp2, Envoy
        assert proxy.rss_kib() - rss_before < 2048
    finally:
        client.close()


def _empty_data(client: Client, sid: int, count: int) -> None:
    """`count` empty DATA frames (not ending the stream), 1000 at a time, until the proxy closes."""
    frame = (0).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big")
    with contextlib.suppress(OSError):  # past the budget the proxy ends the connection
        for sent in range(0, count, 1000):
            client.sock.sendall(frame * min(1000, count - sent))


def test_empty_data_frames_are_not_queued_behind_a_closed_window(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Empty DATA frames cost no flow-control window: queued for a backend that reads nothing,
    each was kept (CVE-2019-9518, "empty frames flood"), 200,000 of them without bound (now the
    connection also ends past a budget of them: test_h2_adversarial_bounds)."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/noread", end=False)
        for _ in range(2):  # the backend's window for the stream, then what the proxy holds
            while window := min(client.conn.local_flow_control_window(sid), 16384):
                client.conn.send_data(sid, b"d" * window)
            client.sock.sendall(client.conn.data_to_send())
            client.run(1, until=lambda: False)
        assert _wait(lambda: backend.by_path("/noread") and backend.by_path("/noread")[0].body == 65535, 5)
        rss_before = proxy.rss_kib()
        _empty_data(client, sid, 200_000)
        with contextlib.suppress(OSError):  # past 100 a second the connection ends (a budget)
            client.run(2, until=lambda: False)
        assert proxy.rss_kib() - rss_before < 4 * 1024
        assert backend.by_path("/noread")[0].body == 65535
    finally:
        client.close()


def test_empty_data_frames_are_not_passed_on_to_the_backend(backend: Backend, proxy: ProxyProcess) -> None:
    """The backend gets the body's bytes, not a flood of empty frames it may count as an attack
    on the connection that every client shares (80: under the budget of empty frames)."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/sink", end=False)
        client.conn.send_data(sid, b"a")
        client.sock.sendall(client.conn.data_to_send())
        _empty_data(client, sid, 80)
        client.send(sid, b"b")
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].status == 200
        frames, _, rest = client.got[sid].body.partition(b" frames, ")
        assert rest == b"2 bytes" and int(frames) <= 3, client.got[sid].body
    finally:
        client.close()


def test_a_stream_end_goes_on_in_the_frame_that_carried_it(backend: Backend, proxy: ProxyProcess) -> None:
    """END_STREAM is passed on with the frame that carried it, both ways: a GET's HEADERS reach
    the backend ending the stream (not HEADERS, then an empty DATA, which nginx answered with a
    RST_STREAM of its own), the last DATA of a body reaches the backend and the client with the
    end (not DATA, then an empty DATA). Three frames fewer per stream, the same bytes."""
    client = Client(proxy.inbound)
    try:
        warm = client.request("/echo-header")  # the upstream connection is up: streams go at once
        client.run(5, until=lambda: client.got[warm].ended_at)
        get = client.request("/sink")
        client.run(5, until=lambda: client.got[get].ended_at)
        post = client.request("/sink", end=False)
        client.conn.send_data(post, b"a")
        client.send(post, b"b")  # DATA with END_STREAM
        client.run(5, until=lambda: client.got[post].ended_at)
        assert (client.got[get].status, client.got[get].body) == (200, b"0 frames, 0 bytes")
        assert (client.got[post].status, client.got[post].body) == (200, b"2 frames, 2 bytes")
        # The client's side, frame by frame: the backend's HEADERS, then DATA b"ok" ending it.
        sid = client.request("/echo-header")
        raw = b""
        while b"ok" not in raw or not [f for f in parse_frames(raw) if "END_STREAM" in f.flags]:
            client.sock.settimeout(5)
            data = client.sock.recv(65536)
            assert data, "the proxy closed the connection"
            raw += data
        mine = [f for f in parse_frames(raw) if f.stream_id == sid]
        assert [(type(f).__name__, sorted(f.flags)) for f in mine] == [
            ("HeadersFrame", ["END_HEADERS"]), ("DataFrame", ["END_STREAM"])
        ]  # fmt: skip
        assert [f.data for f in mine if isinstance(f, DataFrame)] == [b"ok"]
    finally:
        client.close()


def test_a_continuation_flood_ends_the_connection_before_the_backend_sees_a_stream(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """CVE-2024-27316: HEADERS without END_HEADERS, then CONTINUATION frames without end. The
    proxy holds a bounded number of them (h2: 64) and ends the connection."""
    client = Client(proxy.inbound)
    try:
        block = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok")])
        wire = HeadersFrame(1, block).serialize() + ContinuationFrame(1, b"\x40\x01a\x01b").serialize() * 1000
        rss_before = proxy.rss_kib()
        with contextlib.suppress(OSError):
            for _ in range(20):  # up to 20,000 frames, until the proxy closes
                client.sock.sendall(wire)
        frames = parse_frames(bytes_until_closed(client.sock, 5))
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways and goaways[-1].error_code != 0
        assert backend.by_path("/ok") == []
        assert proxy.rss_kib() - rss_before < 4 * 1024
    finally:
        client.close()


# --- drain ------------------------------------------------------------------------------------


def test_drain_with_a_stream_that_never_ends_exits_at_the_grace_and_refuses_new_streams(
    backend: Backend, tmp_path: Path
) -> None:
    """SIGTERM while a response never ends: GOAWAY(NO_ERROR) naming it, a stream opened after
    it refused (REFUSED_STREAM: never sent to the backend), the stalled one left to run until
    `--shutdown-grace`, then the process exits 0 and the backend sees its connection end."""
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", "--shutdown-grace", "2",
        identity=SERVER_ID, log_level="info",
    )  # fmt: skip
    client = Client(proxy.inbound)
    try:
        stalled = client.request("/stall-body")
        client.run(5, until=lambda: client.got[stalled].body == b"first")
        assert client.got[stalled].status == 200
        started = time.monotonic()
        proxy.process.terminate()
        time.sleep(0.5)  # the GOAWAY is on its way: a stream opened now crosses it
        block = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok"),
                                        (b":authority", b"web")])  # fmt: skip
        client.sock.sendall(HeadersFrame(stalled + 2, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        frames = parse_frames(bytes_until_closed(client.sock, 8))
        exited_after = time.monotonic() - started
        exit_code = proxy.process.wait(timeout=10)
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert [(g.error_code, g.last_stream_id) for g in goaways] == [(0, stalled)]
        resets = {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)}
        assert resets.get(stalled + 2) == ErrorCodes.REFUSED_STREAM
        assert not [f for f in frames if f.stream_id == stalled and "END_STREAM" in f.flags]
        assert backend.by_path("/ok") == []  # the refused stream never reached the backend
        assert exit_code == 0 and 1.5 < exited_after < 5  # the grace, not the stream, ended it
    finally:
        client.close()
        proxy.stop()


# --- loops ------------------------------------------------------------------------------------


def test_an_h2_loop_through_another_address_stops_on_its_second_visit(tmp_path: Path) -> None:
    """x-mesh-via on HTTP/2: a stream whose :authority leads back to the proxy's own outbound
    listener (through a relay, so the port check cannot see it) is refused on its second visit,
    once; the descriptors come back."""
    forward = start_proxy(
        tmp_path, "--inbound-forward", "127.0.0.1:9", identity=SERVER_ID, rlimit_nofile=1024
    )
    relay = Relay(forward.outbound)
    try:
        fds = forward.fd_count()
        client = Client(forward.outbound)
        sid = client.conn.get_next_available_stream_id()
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                (b":authority", b"127.0.0.1:%d" % relay.port)]  # fmt: skip
        client.conn.send_headers(sid, head, end_stream=True)
        client.sock.sendall(client.conn.data_to_send())
        client.got[sid] = Got()
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].status == 400
        assert relay.connections <= 2, f"the loop went round {relay.connections} times"
        # Counted once, by the first visit (the 400 it passed on), as HTTP/1 counts a loop.
        assert forward.value("response_total") == forward.value("response_total", status_code="400") == 1
        client.close()
        assert _wait(lambda: forward.fd_count() <= fds + 3, 35)  # the idle upstream h2 connection: 30 s
    finally:
        relay.stop()
        forward.stop()
