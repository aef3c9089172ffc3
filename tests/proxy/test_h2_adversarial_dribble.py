"""CVE-2019-9511, "data dribble", through a real proxy process: a peer that opens its window a
byte at a time, on a stream or on the connection, a client's on a download or an upstream's on
an upload, gets GOAWAY ENHANCE_YOUR_CALM within a bounded number of frames, counted
`data_dribble`; a slow reader whose windows open normally is never cut.

Oracles: the frames each peer got (their sizes, the GOAWAY code), the body byte for byte, what
the backend received (its stream's bytes, end or reset, the GOAWAY code), the proxy's counters.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

from proxy import h2rules
from tests.proxy import test_h2_adversarial_streams as streams
from tests.proxy.h2_backend import TICKS, Seen
from tests.proxy.test_h2_adversarial_streams import Backend
from tests.proxy.test_proxy_h2_deadlines import Client
from tests.support.h2wire import chunks_until_closed, send_until_goaway, split_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BIG = 1 << 20  # Backend's `/big` body
# The scripted h2 backend (`/big`, `/tick`, ...) and a proxy in front of it.
backend, proxy = streams.backend, streams.proxy


def _wait(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _errors(proxy: ProxyProcess) -> dict[str, float]:
    return {s.labels["error"]: s.value for s in proxy.samples("h2_connection_errors_total")}


def _ticked_whole(client: Client, sid: int) -> None:
    """A bystander's `/tick` download ends whole: each of its ticks, no reset."""
    client.run(10, until=lambda: client.got[sid].ended_at)
    got = client.got[sid]
    assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)


def _get_big(sock: socket.socket, port: int, stream_window: int) -> None:
    """The preface, SETTINGS with `stream_window` as every stream's window, and GET /big on stream 1."""
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/big"), (":authority", f"127.0.0.1:{port}")]
    )
    settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: stream_window})
    opening = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
    sock.sendall(PREFACE + settings.serialize() + opening.serialize())


def _read_until(sock: socket.socket, done: Any, seconds: float = 10.0) -> list[Frame]:
    """The proxy's frames until `done(frames)` holds at a frame boundary (or `seconds` pass)."""
    frames: list[Frame] = []
    tail = b""
    for chunk in chunks_until_closed(sock, seconds):
        whole, tail = split_frames(tail + chunk)
        frames += whole
        if not tail and done(frames):
            break
    return frames


def _data(frames: list[Frame]) -> list[int]:
    return [len(f.data) for f in frames if isinstance(f, DataFrame)]


# --- a client that dribbles a download's window ----------------------------------------------


@pytest.mark.parametrize("window", ["stream", "connection"])
def test_a_client_dribbling_its_window_a_byte_at_a_time_gets_goaway_within_a_bounded_number_of_frames(
    backend: Backend, proxy: ProxyProcess, window: str
) -> None:
    """GET /big (1 MiB), then WINDOW_UPDATEs of 1, one a round trip: on the stream (its window
    starts at 0), or on the connection (the stream's window is 1 MiB; the connection's first
    65,535 bytes come in full frames first). Each update makes the proxy send a 1-byte DATA
    frame: a second's budget of them is served, then GOAWAY ENHANCE_YOUR_CALM, counted
    `data_dribble` once, before 2,000 updates went. The backend's stream is cancelled, having
    sent no more than the proxy's windows took; a bystander's download on another connection
    ends whole, and no other error is counted. (Before: each of 1 MiB of updates was answered
    by a frame of 1 byte, within the WINDOW_UPDATE allowance.)"""
    bystander = Client(proxy.inbound)
    sock = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
    try:
        tick = bystander.request("/tick")
        _get_big(sock, proxy.inbound, 0 if window == "stream" else BIG)
        if window == "stream":
            before = _read_until(sock, lambda fs: any(isinstance(f, HeadersFrame) for f in fs))
            assert _data(before) == []  # a closed window: not a byte yet
            update = WindowUpdateFrame(1, window_increment=1)
        else:
            before = _read_until(sock, lambda fs: sum(_data(fs)) >= 65535)
            assert sum(_data(before)) == 65535 and min(_data(before)) > h2rules.DRIBBLE_FRAME_BYTES
            update = WindowUpdateFrame(0, window_increment=1)
        # One update a round trip, as each frame arrives: well within the WINDOW_UPDATE
        # allowance (10 per DATA frame sent), which a batch of them before any frame is not.
        frames, sent = send_until_goaway(sock, update.serialize(), 1, 2_000)
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways and goaways[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM, sent
        tiny = _data(frames)
        assert set(tiny) == {1}, tiny  # one byte per update, never more
        assert h2rules.DRIBBLE_BUDGET <= len(tiny) <= sent < 2_000, (len(tiny), sent)
        assert proxy.value("h2_connection_errors_total", direction="inbound", error="data_dribble") == 1
        assert _wait(lambda: backend.by_path("/big") and backend.by_path("/big")[0].reset is not None, 5)
        assert backend.by_path("/big")[0].reset == ErrorCodes.CANCEL
        assert backend.big_sent < BIG  # the proxy took what its windows allowed, never the whole body
        _ticked_whole(bystander, tick)
        assert _errors(proxy) == {"data_dribble": 1}
        assert proxy.process.poll() is None
    finally:
        sock.close()
        bystander.close()


@pytest.mark.parametrize("step", [16384, 5000])
def test_a_slow_reader_with_normal_windows_gets_every_byte_and_is_never_cut(
    backend: Backend, proxy: ProxyProcess, step: int
) -> None:
    """A reader with a 16 KiB stream window that reopens both windows by `step` bytes only once
    it has read that many, pausing 5 ms before each (a slow consumer, as gRPC's and Go's
    updates of a quarter window or 4 KiB and more): the 1 MiB body arrives byte for byte, with
    no GOAWAY, and nothing is counted. A window's remainder may still go as a small frame after
    bigger ones of the same turn (a 16,383-byte frame, then 1 byte): never a dribble."""
    sock = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
    body = bytearray()
    ended = goaway = False
    sizes: list[int] = []
    try:
        _get_big(sock, proxy.inbound, 16384)
        unacked = 0
        tail = b""
        deadline = time.monotonic() + 60
        updates = 0
        while not ended and not goaway and time.monotonic() < deadline and updates < 2 * BIG // step:
            sock.settimeout(1.0)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            frames, tail = split_frames(tail + chunk)
            for frame in frames:
                goaway = goaway or isinstance(frame, GoAwayFrame)
                if isinstance(frame, DataFrame) and frame.stream_id == 1:
                    body += frame.data
                    sizes.append(len(frame.data))
                    unacked += len(frame.data)
                    ended = "END_STREAM" in frame.flags
            while unacked >= step and not ended:
                time.sleep(0.005)
                sock.sendall(
                    WindowUpdateFrame(1, window_increment=step).serialize()
                    + WindowUpdateFrame(0, window_increment=step).serialize()
                )
                unacked -= step
                updates += 1
        assert ended and not goaway
        assert bytes(body) == b"b" * BIG
        small = [size for size in sizes if size < h2rules.DRIBBLE_FRAME_BYTES]
        assert not any(_errors(proxy).values()), (_errors(proxy), small)
    finally:
        sock.close()


# --- an upstream that dribbles an upload's window ------------------------------------------------


class DribblingBackend(Backend):
    """Backend, and `/dribble-sink`: reads a request body without acknowledging it; for each
    DATA frame it reopens the stream's and the connection's windows by 1 byte only. The GOAWAY
    codes its connections got are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.goaways: list[int] = []

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Seen], ticks: list[Any]) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ConnectionTerminated):
            with self.lock:
                self.goaways.append(int(event.error_code))
            return
        head = dict(getattr(event, "headers", None) or ())
        if isinstance(event, h2.events.RequestReceived) and head.get(":path") == "/dribble-sink":
            stream = Seen("/dribble-sink", head)
            with self.lock:
                self.streams.append(stream)
            seen[sid] = stream
            return
        stream = seen.get(sid)
        if stream is None or stream.path != "/dribble-sink":
            super()._on_event(conn, event, seen, ticks)
        elif isinstance(event, h2.events.DataReceived):
            stream.body += len(event.data)
            with self.lock:
                self.frames[id(stream)] = self.frames.get(id(stream), 0) + 1
            conn.increment_flow_control_window(1, sid)
            conn.increment_flow_control_window(1)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = int(event.error_code)


@pytest.fixture
def dribbling() -> Iterator[DribblingBackend]:
    server = DribblingBackend()
    yield server
    server.stop()


@pytest.fixture
def dribbling_proxy(dribbling: DribblingBackend, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{dribbling.port}", identity=SERVER_ID, log_level="info"
    )
    yield p
    p.stop()


def test_an_upstream_dribbling_an_uploads_window_gets_goaway_and_the_client_is_answered(
    dribbling: DribblingBackend, dribbling_proxy: ProxyProcess
) -> None:
    """A 1 MiB upload to an upstream that reopens its windows a byte per frame it reads: past
    the first 65,535 bytes (its windows at the start, in full frames) the proxy could only send
    1-byte frames. A second's budget of them, then the upstream connection gets GOAWAY
    ENHANCE_YOUR_CALM, counted `data_dribble` inbound (an upstream's connection ends like a
    client's); the client is answered 502 (no response head had come; counted `reset`), its own
    connection goes on, and its next request opens a new upstream connection."""
    backend, proxy = dribbling, dribbling_proxy
    client = Client(proxy.inbound)
    try:
        sid = client.request("/dribble-sink", end=False)
        left = BIG
        deadline = time.monotonic() + 30
        while left and not client.got[sid].ended_at and not client.closed and time.monotonic() < deadline:
            room = min(client.conn.local_flow_control_window(sid), left, 16384)
            if room > 0:
                client.conn.send_data(sid, b"u" * room)
                client.sock.sendall(client.conn.data_to_send())
                left -= room
            client.run(0.05, until=lambda: client.got[sid].ended_at)
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert not client.closed and client.got[sid].status == 502, client.got[sid]
        assert _wait(lambda: backend.goaways, 5) and backend.goaways == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert proxy.value("h2_connection_errors_total", direction="inbound", error="data_dribble") == 1
        assert proxy.value("response_total", error="reset") == 1
        (seen,) = backend.by_path("/dribble-sink")
        assert not seen.ended and seen.reset is None
        # The windows' 65,535 bytes in full frames, then a byte a frame: a second's budget at
        # least, far from the 1 MiB the updates would have drawn out one byte at a time.
        assert 65535 + h2rules.DRIBBLE_BUDGET <= seen.body < 65535 + 2_000, seen.body
        after = client.request("/echo-header", extra=[(b"x-pad", b"after")])
        client.run(5, until=lambda: client.got[after].ended_at)
        assert client.got[after].headers.get(b"x-echo") == b"after" and backend.connections == 2
        assert _errors(proxy) == {"data_dribble": 1}
    finally:
        with contextlib.suppress(OSError):
            client.close()
