"""Bad HTTP/2 input against a real proxy: each attack ends its own connection with the right
GOAWAY code and is counted; a gRPC client on another connection is unaffected; memory stays
bounded. Plus a hypothesis fuzz test of frame sequences (bounded examples and time).

Frames are built with hyperframe and headers with hpack, so the attacks are exact bytes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.grpc_app import GrpcApp, methods
from tests.support.h2wire import bytes_until_closed, parse_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x6, 0xB


@pytest.fixture(scope="module")
def grpc_app() -> Iterator[GrpcApp]:
    app = GrpcApp()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def proxy(grpc_app: GrpcApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp: Path = tmp_path_factory.mktemp("h2adv")
    p = start_proxy(
        tmp, "--inbound-forward", f"127.0.0.1:{grpc_app.port}", identity=SERVER_ID, log_level="info"
    )
    yield p
    p.stop()


@pytest.fixture(scope="module")
def bystander(proxy: ProxyProcess) -> Iterator[grpc.Channel]:
    """A well-behaved client whose one connection lives through every attack."""
    ch = grpc.insecure_channel(f"127.0.0.1:{proxy.inbound}", options=[("grpc.enable_http_proxy", 0)])
    yield ch
    ch.close()


def _request_headers(port: int, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "http"), (":path", "/mesh.test.Echo/Unary"),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"),
        *(extra or []),
    ]  # fmt: skip


def _headers(stream_id: int, block: bytes, end_stream: bool = False) -> list[Frame]:
    """HEADERS (+ CONTINUATION) frames carrying an HPACK block, 16 KiB at a time."""
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)] or [b""]
    first = HeadersFrame(stream_id, pieces[0], flags=["END_STREAM"] if end_stream else [])
    frames: list[Frame] = [first]
    for piece in pieces[1:]:
        frames.append(ContinuationFrame(stream_id, piece))
    frames[-1].flags.add("END_HEADERS")
    return frames


def _raw(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes, whatever the rules say (hyperframe refuses to build invalid ones)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def _wire(frames: list[Frame | bytes]) -> bytes:
    return b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)


def _attack(port: int, frames: list[Frame | bytes], seconds: float = 5) -> list[Frame]:
    """Connect, send the preface, our SETTINGS and `frames`; the frames the proxy sent back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        payload = PREFACE + SettingsFrame(0).serialize() + _wire(frames)
        with contextlib.suppress(OSError):  # the proxy may close before it read everything
            sock.sendall(payload)
        return _read_frames(sock, seconds)
    finally:
        sock.close()


def _read_frames(sock: socket.socket, seconds: float) -> list[Frame]:
    return parse_frames(bytes_until_closed(sock, seconds))


def _goaway(frames: list[Frame]) -> GoAwayFrame:
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways, [type(f).__name__ for f in frames]
    return goaways[-1]


def _malformed(port: int) -> list[Frame | bytes]:
    return [_raw(0x0, 0, 0, b"data on stream zero")]  # DATA must name a stream


def _bad_frame_size(port: int) -> list[Frame | bytes]:
    return [_raw(0x6, 0, 0, b"1234567")]  # a PING of 7 bytes (it has 8)


def _header_list_too_large(port: int) -> list[Frame | bytes]:
    block = hpack.Encoder().encode(_request_headers(port, [("x-big", "a" * 40000)]))
    return _headers(1, block)


def _hpack_bomb(port: int) -> list[Frame | bytes]:
    """4 KB into the dynamic table once, then referenced by one-byte indexes: 20 × 4 KB decoded
    from a block of about 4 KB."""
    encoder = hpack.Encoder()
    block = encoder.encode(_request_headers(port, [("x-bomb", "b" * 4000)] * 20))
    assert len(block) < 4200
    return _headers(1, block)


def _too_many_streams(port: int) -> list[Frame | bytes]:
    encoder = hpack.Encoder()
    frames: list[Frame | bytes] = []
    for i in range(101):  # our SETTINGS allow 100 at once
        frames += _headers(1 + 2 * i, encoder.encode(_request_headers(port)))
    return frames


def _window_overflow(port: int) -> list[Frame | bytes]:
    return [WindowUpdateFrame(0, window_increment=2**31 - 1)]  # 65535 + that > 2^31 - 1


def _ping_flood(port: int) -> list[Frame | bytes]:
    return [PingFrame(0, b"%08d" % i) for i in range(1000)]


def _settings_flood(port: int) -> list[Frame | bytes]:
    return [SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}) for _ in range(1000)]


def _rapid_reset(port: int) -> list[Frame | bytes]:
    """CVE-2023-44487: open a stream and cancel it at once, again and again."""
    encoder = hpack.Encoder()
    frames: list[Frame | bytes] = []
    for i in range(500):
        frames += _headers(1 + 2 * i, encoder.encode(_request_headers(port)))
        frames.append(RstStreamFrame(1 + 2 * i, error_code=0x8))
    return frames


def _window_update_flood(port: int) -> list[Frame | bytes]:
    """Increments of 1 on the connection and on an open stream: acknowledgments of nothing sent."""
    frames: list[Frame | bytes] = [*_headers(1, hpack.Encoder().encode(_request_headers(port)))]
    for _ in range(1500):
        frames += [WindowUpdateFrame(0, window_increment=1), WindowUpdateFrame(1, window_increment=1)]
    return frames


ATTACKS: list[tuple[Callable[[int], list[Frame | bytes]], int, str]] = [
    (_malformed, PROTOCOL_ERROR, "protocol_error"),
    (_bad_frame_size, FRAME_SIZE_ERROR, "frame_size_error"),
    (_header_list_too_large, ENHANCE_YOUR_CALM, "header_list_too_large"),
    (_hpack_bomb, ENHANCE_YOUR_CALM, "header_list_too_large"),
    (_too_many_streams, PROTOCOL_ERROR, "too_many_streams"),
    (_window_overflow, FLOW_CONTROL_ERROR, "flow_control_error"),
    (_ping_flood, ENHANCE_YOUR_CALM, "ping_flood"),
    (_settings_flood, ENHANCE_YOUR_CALM, "settings_flood"),
    (_rapid_reset, ENHANCE_YOUR_CALM, "rapid_reset"),
    (_window_update_flood, ENHANCE_YOUR_CALM, "window_update_flood"),
]


@pytest.mark.parametrize(
    ("attack", "code", "label"), ATTACKS, ids=[a[0].__name__.strip("_") for a in ATTACKS]
)
def test_bad_input_ends_its_connection_with_the_right_goaway_and_is_counted(
    attack: Callable[[int], list[Frame | bytes]],
    code: int,
    label: str,
    proxy: ProxyProcess,
    bystander: grpc.Channel,
) -> None:
    unary = methods(bystander)["unary"]
    assert unary(b"before", timeout=5) == b"echo:before"
    counted = proxy.value("h2_connection_errors_total", direction="inbound", error=label)
    frames = _attack(proxy.inbound, attack(proxy.inbound))
    goaway = _goaway(frames)
    assert goaway.error_code == code
    assert proxy.value("h2_connection_errors_total", direction="inbound", error=label) == counted + 1
    # The bystander's connection (opened before the attack) carries on.
    assert unary(b"after", timeout=5) == b"echo:after"
    assert proxy.process.poll() is None
    proxy.assert_h2_open_streams()  # the attack's streams ended with its connection: none leaked


def test_memory_and_descriptors_stay_bounded_after_many_attacks(
    proxy: ProxyProcess, bystander: grpc.Channel
) -> None:
    unary = methods(bystander)["unary"]
    assert unary(b"warm", timeout=5) == b"echo:warm"
    for attack, _, _ in ATTACKS:  # warm every path once
        _attack(proxy.inbound, attack(proxy.inbound), seconds=2)
    rss_before, fds_before = proxy.rss_kib(), proxy.fd_count()
    for _ in range(3):
        for attack in (_hpack_bomb, _rapid_reset, _ping_flood, _too_many_streams):
            _goaway(_attack(proxy.inbound, attack(proxy.inbound), seconds=2))
    time.sleep(0.5)
    assert proxy.rss_kib() - rss_before < 8 * 1024
    assert proxy.rss_kib() < 60 * 1024
    assert proxy.fd_count() <= fds_before + 2
    assert unary(b"after", timeout=5) == b"echo:after"
    proxy.assert_h2_open_streams()  # not one of the attacks' streams left counted open


_VALID_HEADERS = hpack.Encoder().encode(_request_headers(1))
_frame = st.one_of(
    # any frame type (0-9 are HTTP/2's, 10+ unknown), any flags, a few streams, any payload
    st.builds(_raw, st.integers(0, 12), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=64)),
    # and well-formed openings, so that sequences reach streams, windows and resets
    st.builds(lambda sid, end: _raw(0x1, 0x4 | (0x1 if end else 0), sid, _VALID_HEADERS),
              st.sampled_from([1, 3, 5, 7]), st.booleans()),
    st.builds(lambda sid, data: _raw(0x0, 0, sid, data), st.sampled_from([1, 3, 5]), st.binary(max_size=64)),
    st.builds(lambda sid, inc: _raw(0x8, 0, sid, inc.to_bytes(4, "big")),
              st.integers(0, 5), st.integers(0, 2**31)),
    st.builds(lambda sid, code: _raw(0x3, 0, sid, code.to_bytes(4, "big")),
              st.integers(1, 7), st.integers(0, 20)),
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(sequence=st.lists(_frame, min_size=1, max_size=12), garbage=st.binary(max_size=16))
def test_fuzzed_frame_sequences_never_hurt_the_proxy_or_other_clients(
    sequence: list[bytes], garbage: bytes, proxy: ProxyProcess, bystander: grpc.Channel
) -> None:
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
    try:
        payload = PREFACE + SettingsFrame(0).serialize() + b"".join(sequence) + garbage
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # What came back parses as whole HTTP/2 frames (never a traceback or junk), and the
        # proxy ends the connection rather than hanging on it.
        for frame in _read_frames(sock, 3):
            assert frame.type is not None
    finally:
        sock.close()
    assert time.monotonic() - started < 3.5
    assert proxy.process.poll() is None
    assert methods(bystander)["unary"](b"ok", timeout=5) == b"echo:ok"
    assert "event=connection_error" not in proxy.log()  # no unexpected exception in a handler
    proxy.assert_h2_open_streams()  # whatever the sequence opened ended with its connection
