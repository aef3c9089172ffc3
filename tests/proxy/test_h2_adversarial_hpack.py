"""Attacks on wt-h2fast's HTTP/2 speed work: nghttp2's HPACK through cffi (C fed attacker bytes),
the one-pass header check, the trimmed memory of closed streams.

Oracles: python-hyper's `hpack` (h2's own coder, still installed) on the same bytes; through a
real proxy process, each client's own response and GOAWAY code, what the backend received, the
proxy's counters; the RSS of this process across 100k decodes. Every loop is bounded.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import h2rules, hpack_nghttp2
from tests.proxy.h2_backend import TICKS
from tests.proxy.test_h2_adversarial_streams import Backend
from tests.proxy.test_proxy_h2_deadlines import Client
from tests.support.h2wire import parse_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

pytestmark = pytest.mark.skipif(not hpack_nghttp2.load(), reason="libnghttp2.so.14 is not installed")


def _both(block: bytes, limit: int = h2rules.MAX_HEADER_LIST_SIZE) -> list[Any]:
    """What hpack and nghttp2 make of one block on fresh decoders: the fields (with the
    never-indexed flag), or the kind of refusal."""
    out: list[Any] = []
    for decoder in (hpack.Decoder(), hpack_nghttp2.Decoder()):
        decoder.max_header_list_size = limit
        try:
            fields = decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            out.append("oversized")
        except HPACKError:
            out.append("refused")
        else:
            out.append([(f[0], f[1], isinstance(f, hpack.NeverIndexedHeaderTuple)) for f in fields])
    return out


def _int(value: int, prefix: int, first: int) -> bytes:
    """RFC 7541 §5.1's integer on a `prefix`-bit prefix, `first` the first byte's high bits."""
    encoded = bytearray(hpack.hpack.encode_integer(value, prefix))
    encoded[0] |= first
    return bytes(encoded)


def _literal(name: bytes, value: bytes, first: int = 0x00) -> bytes:
    """A literal field with a new name, no Huffman (0x00 without indexing, 0x40 with)."""
    return bytes([first]) + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


# --- the decoder, against hpack ---------------------------------------------------------------

ADVERSARIAL = {
    # RFC 7541 §4.2/§6.3: a size update over SETTINGS_HEADER_TABLE_SIZE (4096) is a decoding error
    "table-size-over-settings": _int(5000, 5, 0x20) + b"\x82",
    "table-size-2**32": _int(2**32, 5, 0x20) + b"\x82",
    "table-size-not-at-start": b"\x82" + b"\x20",
    "index-0": b"\x80",
    "index-out-of-range": b"\xff\x00",
    "index-past-the-dynamic-table": b"\xbe",
    "huffman-eos": b"\x00\x81\xff" + b"\x01a",
    "huffman-padding-over-7-bits": b"\x00\x82\xff\xff\x01a",
    "huffman-padding-not-ones": b"\x00\x81\x00\x01a",
    "integer-overflow": b"\x00\x7f" + b"\xff" * 9 + b"\x7f",
    "length-2**64": b"\x00" + _int(2**64, 7, 0) + b"a",
    "string-longer-than-block": b"\x00\x05ab",
    "block-ends-mid-field": b"\x00\x01a\x05ab",
    "block-ends-mid-integer": b"\x00\x7f\xff",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_blocks_are_refused_by_nghttp2_as_by_hpack(name: str) -> None:
    """Malformed blocks (table-size updates over the limit or late, bad indexes, Huffman
    garbage, integer overflow, strings past the block's end): both coders refuse."""
    assert _both(ADVERSARIAL[name]) == ["refused", "refused"]


def test_a_hpack_bomb_is_refused_on_the_decoded_size_by_both() -> None:
    """A 4,000-byte entry indexed again and again: 4 KiB on the wire, 80 KiB decoded; both stop
    at the 32 KiB limit, and the list one under it decodes alike."""
    entry = _literal(b"x", b"v" * 4000, first=0x40)
    assert _both(entry + b"\xbe" * 20) == ["oversized", "oversized"]
    under = _both(entry + b"\xbe" * 6)
    assert under[0] == under[1] and len(under[0]) == 7


def test_a_block_over_64_kib_is_decoded_as_hpack_decodes_it_and_the_tables_stay_in_step() -> None:
    """nghttp2 refuses any string over 64 KiB (NGHTTP2_HD_MAX_NV) as a malformed block; hpack, and
    so h2 before, decode it within the list limit (1 MiB on upstream connections). A 70 KiB
    literal (it empties the dynamic table) among others, then an index into the table built
    around it: the same fields."""
    theirs_out = hpack.Encoder()
    blocks = [
        theirs_out.encode([(b"x-a", b"1"), (b"x-b", b"2" * 100)], huffman=False),
        theirs_out.encode([(b"x-c", b"3"), (b"x-big", b"h" * 70000), (b"x-d", b"4")], huffman=False),
        theirs_out.encode([(b"x-d", b"4")]),
    ]
    decoded = []
    for decoder in (hpack.Decoder(), hpack_nghttp2.Decoder()):
        decoder.max_header_list_size = 1024 * 1024
        decoded.append([[tuple(f) for f in decoder.decode(block, raw=True)] for block in blocks])
    assert decoded[0] == decoded[1]
    assert decoded[1][1][1] == (b"x-big", b"h" * 70000)
    assert blocks[2] == b"\xbe"  # index 62, the newest entry: read from the table nghttp2 took back


def test_a_block_over_64_kib_over_the_clients_limit_is_oversized_not_malformed() -> None:
    """On a client connection (32 KiB) the same block is a list too large, as hpack says."""
    block = _literal(b"x-big", b"h" * 70000)
    assert _both(block) == ["oversized", "oversized"]


def _mutated(data: st.DataObject) -> bytes:
    fields = data.draw(
        st.lists(
            st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=40), st.booleans()), max_size=6
        )
    )
    block = bytearray(hpack.Encoder().encode(fields, huffman=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(0, 3))):
        if block:
            block[data.draw(st.integers(0, len(block) - 1))] = data.draw(st.integers(0, 255))
    return bytes(block[: data.draw(st.integers(0, len(block)))] if data.draw(st.booleans()) else block)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_for_any_bytes_both_coders_agree_or_both_refuse(data: st.DataObject) -> None:
    """Random bytes and blocks of random lists with bytes changed or cut: nghttp2 decodes exactly
    what hpack decodes (names, values, the never-indexed flag), and refuses what hpack refuses."""
    block = data.draw(st.binary(max_size=64)) if data.draw(st.booleans()) else _mutated(data)
    theirs, ours = _both(block)
    assert ours == theirs


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4


def test_100k_decodes_with_and_without_errors_free_what_nghttp2_allocates() -> None:
    """100k blocks through one decoder, then 100k malformed blocks each on a decoder of its own
    (an inflater allocated and refused, as a connection that ends): RSS grows by < 2 MiB."""
    block = hpack.Encoder().encode([(b":status", b"200"), (b"x-r", b"v" * 200), (b"server", b"nginx")])
    bad = ADVERSARIAL["huffman-eos"]
    decoder = hpack_nghttp2.Decoder()
    for _ in range(5000):  # warm
        decoder.decode(block)
        with pytest.raises(HPACKError):
            hpack_nghttp2.Decoder().decode(bad)
    before = _rss_kib()
    deadline = time.monotonic() + 120
    for i in range(100_000):
        assert len(decoder.decode(block)) == 3 or i < 0
        with pytest.raises(HPACKError):
            hpack_nghttp2.Decoder().decode(bad)
        assert i % 4096 or time.monotonic() < deadline
    assert _rss_kib() - before < 2048


# --- the encoder --------------------------------------------------------------------------------


def test_authorization_and_short_cookies_go_out_never_indexed_through_h2() -> None:
    """h2 marks `authorization` and cookies under 20 bytes sensitive; nghttp2's encoder, plugged
    into h2's connection, sends them never-indexed and keeps them out of every table (RFC 7541
    §7.1.3), as hpack's did. Oracle: hpack decoding the HEADERS frame h2 wrote."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    assert hpack_nghttp2.install(conn)
    conn.initiate_connection()
    conn.data_to_send()
    fields = [
        (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"),
        (b"authorization", b"Bearer secret-token"), (b"cookie", b"s=1"), (b"cookie", b"x" * 40),
    ]  # fmt: skip
    conn.send_headers(1, fields, end_stream=True)
    (frame,) = parse_frames(conn.data_to_send())
    assert isinstance(frame, HeadersFrame)
    theirs = hpack.Decoder()
    decoded = theirs.decode(frame.data, raw=True)
    assert [tuple(f) for f in decoded] == fields
    never = {
        bytes(f[0]) + b"=" + bytes(f[1]) for f in decoded if isinstance(f, hpack.NeverIndexedHeaderTuple)
    }
    assert never == {b"authorization=Bearer secret-token", b"cookie=s=1"}
    kept = {bytes(name) for name, _ in theirs.header_table.dynamic_entries}
    assert b"authorization" not in kept


def test_the_encoders_table_stays_at_4_kib_whatever_the_peer_allows() -> None:
    """wt-advh2's cap (merged in main) with nghttp2's deflater: a peer's 2^31 table size, then
    the proxy's own reset of it to 4 KiB (Side.on_events), and 300 distinct 1 KiB fields: the
    peer's mirror of the table (hpack's decoder) never holds more than 4 KiB."""
    encoder = hpack_nghttp2.Encoder()
    encoder.header_table_size = 2**31 - 1  # what h2 does on the peer's SETTINGS
    if encoder.header_table_size > h2rules.HEADER_TABLE_SIZE:  # what the proxy then does
        encoder.header_table_size = h2rules.HEADER_TABLE_SIZE
    theirs = hpack.Decoder()
    theirs.max_allowed_table_size = 2**31 - 1
    for i in range(300):
        field = (b"x-pad", b"%05d" % i + b"p" * 1024)
        assert [tuple(f) for f in theirs.decode(encoder.encode([field]), raw=True)] == [field]
        assert sum(32 + len(n) + len(v) for n, v in theirs.header_table.dynamic_entries) <= 4096


def test_a_library_without_the_functions_the_coders_need_leaves_h2s_own_coders() -> None:
    """An older or other libnghttp2 (here: a library with none of its functions, libz) is
    refused when it loads, not mid-connection: `install` leaves h2's hpack coders in place."""
    script = (
        "import h2.config, h2.connection, hpack.hpack\n"
        "from proxy import hpack_nghttp2\n"
        "conn = h2.connection.H2Connection(h2.config.H2Configuration())\n"
        "print(repr(hpack_nghttp2.load()), hpack_nghttp2.install(conn), type(conn.decoder).__module__)\n"
    )
    for library, expected in (
        ("libz.so.1", "'' False hpack.hpack"),
        ("libnghttp2.so.14", "True proxy.hpack_nghttp2"),
    ):
        env = {"PATH": "/usr/bin:/bin", hpack_nghttp2.LIBRARY_ENV: library}
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()  # fmt: skip
        assert out.endswith(expected), (library, out)


# --- through a proxy: what each client and the backend see ---------------------------------------


class HugeHeadBackend(Backend):
    """test_h2_adversarial_streams' Backend, and `/huger-head`: 200 with a 70 KiB field (over
    nghttp2's 64 KiB string bound, under the 1 MiB the proxy decodes from an upstream)."""

    def __init__(self) -> None:
        self.huge: set[tuple[int, int]] = set()  # (connection, stream) answered here
        super().__init__()

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Any], ticks: list[Any]) -> None:
        key = (id(conn), getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.RequestReceived) and dict(event.headers).get(":path") == "/huger-head":
            self.huge.add(key)
            conn.send_headers(
                event.stream_id, [(":status", "200"), ("x-big", "{" * 70000)]
            )  # no Huffman: 15 bits a "{"
            conn.send_data(event.stream_id, b"abc", end_stream=True)
        if key not in self.huge:
            super()._on_event(conn, event, seen, ticks)


class Peer(Client):
    """Client, and the GOAWAY it got (its error code), and raw frames written on its socket."""

    goaway: int | None = None

    def _on(self, event: Any) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code)
        super()._on(event)

    def raw(self, frame: Any) -> None:
        self.sock.sendall(frame.serialize())


@pytest.fixture
def backend() -> Iterator[HugeHeadBackend]:
    server = HugeHeadBackend()
    yield server
    server.stop()


@pytest.fixture
def proxy(backend: HugeHeadBackend, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", identity=SERVER_ID, log_level="info"
    )
    assert "hpack=nghttp2-" in p.log()
    yield p
    p.stop()


def test_an_upstream_field_over_64_kib_resets_its_stream_alone(
    backend: HugeHeadBackend, proxy: ProxyProcess
) -> None:
    """One app answers with a 70 KiB field: its stream is malformed for the proxy (over 32 KiB)
    and is reset alone, as with h2's hpack. nghttp2 refused the block as malformed: a
    COMPRESSION_ERROR that ended the upstream connection, and the bystander's download with it."""
    bystander, client = Peer(proxy.inbound), Peer(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        bystander.run(1, until=lambda: False)
        sid = client.request("/huger-head")
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert client.got[sid].ended_at and (
            client.got[sid].status != 200 or client.got[sid].reset is not None
        )
        bystander.run(10, until=lambda: bystander.got[tick].ended_at)
        got = bystander.got[tick]
        assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)
        assert backend.connections == 1
        assert proxy.value("response_total", error="bad_response") == 1
        assert proxy.value("h2_connection_errors_total", direction="inbound", error="compression_error") == 0
    finally:
        client.close()
        bystander.close()


MALFORMED_BLOCKS = ["table-size-over-settings", "index-out-of-range", "huffman-eos", "integer-overflow"]


@pytest.mark.parametrize("name", MALFORMED_BLOCKS)
def test_a_malformed_hpack_block_ends_its_connection_with_compression_error_and_no_other(
    name: str, backend: HugeHeadBackend, proxy: ProxyProcess
) -> None:
    """A client's malformed block: that connection gets GOAWAY(COMPRESSION_ERROR) and is
    counted; the backend never sees a stream from it; another client's download goes on whole."""
    bystander, attacker = Peer(proxy.inbound), Peer(proxy.inbound)
    try:
        tick = bystander.request("/tick")
        bystander.run(1, until=lambda: False)
        attacker.run(1, until=lambda: False)  # the SETTINGS exchange
        frame = HeadersFrame(1, data=ADVERSARIAL[name], flags=["END_HEADERS", "END_STREAM"])
        attacker.raw(frame)
        attacker.run(5, until=lambda: attacker.goaway is not None)
        assert attacker.goaway == ErrorCodes.COMPRESSION_ERROR
        bystander.run(10, until=lambda: bystander.got[tick].ended_at)
        got = bystander.got[tick]
        assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)
        assert [s.path for s in backend.streams] == ["/tick"]
        assert proxy.value("h2_connection_errors_total", direction="inbound", error="compression_error") == 1
    finally:
        attacker.close()
        bystander.close()


def _frames_after(client: Peer, seconds: float) -> list[Any]:
    """The frames the proxy sends next, raw (the client's h2 would itself choke on some)."""
    raw = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        raw += chunk
    return parse_frames(raw)


@pytest.mark.parametrize("late", ["headers", "data"])
def test_a_late_frame_on_a_stream_that_ended_is_answered_as_rfc_9113_says(
    late: str, proxy: ProxyProcess
) -> None:
    """RFC 9113 §5.1: a frame after END_STREAM both ways is a connection error STREAM_CLOSED;
    §6.1: DATA there, a stream error STREAM_CLOSED (h2 does both). With h2's memory of closed
    streams trimmed to the reset ones, a stream forgotten (after h2's cleanup, 16+ streams
    later) was taken for one never opened: late HEADERS got GOAWAY(PROTOCOL_ERROR)."""
    client = Peer(proxy.inbound)
    try:
        first = client.request("/echo-header")
        client.run(10, until=lambda: client.got[first].ended_at)
        for _ in range(40):  # past WALK_EVERY: h2 walks its streams and drops the closed ones
            sid = client.request("/echo-header")
            client.run(10, until=lambda sid=sid: client.got[sid].ended_at)
            assert client.got[sid].status == 200
        if late == "headers":
            client.raw(
                HeadersFrame(first, data=_literal(b"x-late", b"1"), flags=["END_HEADERS", "END_STREAM"])
            )
        else:
            client.raw(DataFrame(first, data=b"late", flags=["END_STREAM"]))
        frames = [(type(f).__name__, f.stream_id, int(f.error_code)) for f in _frames_after(client, 2)
                  if isinstance(f, (GoAwayFrame, RstStreamFrame))]  # fmt: skip
        if late == "headers":
            assert frames == [("GoAwayFrame", 0, ErrorCodes.STREAM_CLOSED)]
        else:
            assert frames == [("RstStreamFrame", first, ErrorCodes.STREAM_CLOSED)]
    finally:
        client.close()


def test_a_late_frame_on_a_reset_stream_gets_rst_stream_closed_and_the_connection_goes_on(
    proxy: ProxyProcess,
) -> None:
    """A frame on a stream the client reset is a stream error (RST_STREAM STREAM_CLOSED, §5.1),
    even 40 streams later: the connection and a new stream on it go on."""
    client = Peer(proxy.inbound)
    try:
        first = client.request("/tick")
        client.run(1, until=lambda: client.got[first].status)
        client.conn.reset_stream(first, ErrorCodes.CANCEL)
        client.sock.sendall(client.conn.data_to_send())
        for _ in range(40):
            sid = client.request("/echo-header")
            client.run(10, until=lambda sid=sid: client.got[sid].ended_at)
        client.raw(DataFrame(first, data=b"late", flags=["END_STREAM"]))
        after = client.request("/echo-header")
        client.run(10, until=lambda: client.got[after].ended_at)
        assert (client.goaway, client.got[after].status, client.got[after].body) == (None, 200, b"ok")
    finally:
        client.close()


@pytest.mark.parametrize("cuts", [(1, 2), (5, 37), (40, 41)])
def test_a_block_split_across_headers_and_continuations_anywhere_reaches_the_backend_whole(
    cuts: tuple[int, int], backend: HugeHeadBackend, proxy: ProxyProcess
) -> None:
    """A request's block cut into HEADERS + 2 CONTINUATION frames at any byte (mid-integer,
    mid-Huffman string): nghttp2 gets it whole from h2, the backend receives the field as sent
    and the client gets it echoed back."""
    client = Peer(proxy.inbound)
    try:
        client.run(1, until=lambda: False)  # the SETTINGS exchange
        pad = b"split-" + bytes(range(0x21, 0x7F)) * 3
        head = [
            (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo-header"),
            (b":authority", b"127.0.0.1:%d" % proxy.inbound), (b"x-pad", pad),
        ]  # fmt: skip
        block = hpack.Encoder().encode(head)  # the client's own encoder has sent nothing yet
        first, second = cuts
        client.raw(HeadersFrame(1, data=block[:first], flags=["END_STREAM"]))
        client.raw(ContinuationFrame(1, data=block[first:second]))
        client.raw(ContinuationFrame(1, data=block[second:], flags=["END_HEADERS"]))
        frames = _frames_after(client, 2)
        decoder = hpack.Decoder()
        heads = [dict(decoder.decode(f.data, raw=True)) for f in frames if isinstance(f, HeadersFrame)]
        assert heads and heads[0][b":status"] == b"200" and heads[0][b"x-echo"] == pad
        assert [(s.path, s.headers.get("x-pad")) for s in backend.streams] == [("/echo-header", pad.decode())]
    finally:
        client.close()
