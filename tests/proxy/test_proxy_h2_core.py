"""The proxy's faster pieces under h2, each against the python-hyper code it replaces as the oracle.

- `hpack_nghttp2`: nghttp2's HPACK must read what `hpack` writes and write what `hpack` reads,
  block after block (the dynamic tables stay in step), never-indexed fields included; and bound a
  decoded list as `hpack` does (HPACK bombs).
- `h2rules.check_received_fields`: accepts and refuses exactly the header lists h2's
  `validate_headers` does.
- `h2proxy._Connection`: h2's stream limit holds exactly, without walking every stream per new one;
  a GOAWAY received leaves the streams it names open (h2 closed the connection), at bounded cost.
- `h2proxy.Session`, `H2Upstream`: a stream's end is read off the event of the frame that carried
  it; h2 must name every StreamEnded there.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import hpack
import pytest
from h2.exceptions import ProtocolError
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import DataFrame, GoAwayFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import h2proxy, h2rules, hpack_nghttp2
from tests.support.h2wire import parse_frames

needs_nghttp2 = pytest.mark.skipif(not hpack_nghttp2.load(), reason="libnghttp2.so.14 is not installed")

NAMES = st.sampled_from(
    [b":method", b":path", b":scheme", b":authority", b":status", b":protocol", b":bogus", b":", b"",
     b"host", b"te", b"connection", b"keep-alive", b"content-type", b"x-mesh-src", b"Upper", b"a:b",
     b"a b", b"caf\xc3\xa9", b"x\x7f", b"grpc-status", b"cookie"]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from([b"", b"GET", b"CONNECT", b"/", b"http", b"web:80", b"trailers", b"TRAILERS", b"200",
                     b"gzip", b"websocket"]),
    st.binary(max_size=12).map(lambda b: b.translate(bytes.maketrans(b"\x01\x02\x03\x04", b"\x00\r\n\t"))),
)  # fmt: skip
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
FLAGS = st.builds(
    h2.utilities.HeaderValidationFlags,
    is_client=st.booleans(),
    is_trailer=st.booleans(),
    is_response_header=st.booleans(),
    is_push_promise=st.just(False),
)


def _h2_verdict(fields: list[tuple[bytes, bytes]], flags: h2.utilities.HeaderValidationFlags) -> object:
    try:
        return list(h2.utilities.validate_headers(fields, flags))
    except ProtocolError:
        return "refused"


def _our_verdict(fields: list[tuple[bytes, bytes]], flags: h2.utilities.HeaderValidationFlags) -> object:
    try:
        return list(h2rules.check_received_fields(list(fields), flags))
    except ProtocolError:
        return "refused"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=FIELDS, flags=FLAGS)
def test_the_one_pass_check_accepts_and_refuses_what_h2_does(
    fields: list[tuple[bytes, bytes]], flags: h2.utilities.HeaderValidationFlags
) -> None:
    assert _our_verdict(fields, flags) == _h2_verdict(fields, flags)


def test_the_one_pass_check_on_lists_h2_refuses_for_one_reason_each() -> None:
    request = h2.utilities.HeaderValidationFlags(False, False, False, False)
    good = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    bad = [
        [*good, (b"X-Up", b"1")], [*good, (b"x", b" lead")], [*good, (b"x", b"a\r\nb")],
        [*good, (b"connection", b"close")], [*good, (b"te", b"gzip")], [*good, (b"host", b"b")],
        [*good, (b":path", b"/again")], [(b"x", b"1"), *good], good[:2] + good[3:],
        [*good[:2], (b":path", b""), good[3]], [*good, (b"host", b"a"), (b"host", b"a")],
    ]  # fmt: skip
    assert _our_verdict(good, request) == _h2_verdict(good, request) == good
    for fields in bad:
        assert _h2_verdict(fields, request) == "refused", fields  # the oracle agrees it is bad
        assert _our_verdict(fields, request) == "refused", fields


def test_the_proxy_checks_received_fields_with_the_one_pass_check() -> None:
    import h2.stream

    assert h2.stream.validate_headers is h2rules.check_received_fields  # installed by h2proxy
    assert "validate_headers(headers, header_validation_flags)" in _source(
        h2.stream.H2Stream._process_received_headers
    )


def _source(function: object) -> str:
    import inspect

    return inspect.getsource(function)  # type: ignore[arg-type]


# HPACK: blocks of random lists, through nghttp2 one way and hpack the other, tables kept in step.
HPACK_FIELDS = st.lists(
    st.tuples(
        st.sampled_from([b":status", b"date", b"content-type", b"x-a", b"authorization", b"grpc-status"])
        | st.binary(min_size=1, max_size=20),
        st.binary(max_size=300),
        st.booleans(),  # never indexed
    ),
    max_size=12,
)


def _as_sent(fields: list[tuple[bytes, bytes, bool]]) -> list[object]:
    return [hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in fields]


def _never(fields: object) -> list[bool]:
    return [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in fields]  # type: ignore[attr-defined]


def _pairs(fields: object) -> list[tuple[bytes, bytes]]:
    return [(bytes(f[0]), bytes(f[1])) for f in fields]  # type: ignore[attr-defined]


@needs_nghttp2
@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(HPACK_FIELDS, min_size=1, max_size=8),
    table_sizes=st.lists(st.sampled_from([0, 256, 4096, 65536]), max_size=3),
)
def test_nghttp2_and_hpack_read_each_others_blocks(
    blocks: list[list[tuple[bytes, bytes, bool]]], table_sizes: list[int]
) -> None:
    """Ours → hpack: the fields as sent, a never-indexed one still never indexed (nghttp2 also
    keeps `authorization` and short cookies out of the tables by itself). hpack → ours: read as
    hpack's own decoder reads the same blocks."""
    ours_out, theirs_in = hpack_nghttp2.Encoder(), hpack.Decoder(max_header_list_size=1 << 20)
    theirs_out, ours_in, theirs_too = hpack.Encoder(), hpack_nghttp2.Decoder(), hpack.Decoder(1 << 20)
    ours_in.max_header_list_size = 1 << 20
    for i, fields in enumerate(blocks):
        if i < len(table_sizes):  # the peer's SETTINGS_HEADER_TABLE_SIZE changes between blocks
            ours_out.header_table_size = table_sizes[i]
        got = theirs_in.decode(ours_out.encode(_as_sent(fields)), raw=True)
        assert _pairs(got) == [(n, v) for n, v, _ in fields]
        assert all(kept or not sent for kept, (_, _, sent) in zip(_never(got), fields, strict=True))
        block = theirs_out.encode(_as_sent(fields))
        got, expected = ours_in.decode(block), theirs_too.decode(block, raw=True)
        assert _pairs(got) == _pairs(expected) and _never(got) == _never(expected)


@needs_nghttp2
@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=64))
def test_a_block_nghttp2_accepts_is_read_as_hpack_reads_it(data: bytes) -> None:
    """Random bytes: nghttp2 may refuse more (it is stricter on Huffman padding), never read otherwise."""
    ours, theirs = hpack_nghttp2.Decoder(), hpack.Decoder()
    ours.max_header_list_size = theirs.max_header_list_size = 1 << 16
    try:
        got = ours.decode(data)
    except HPACKDecodingError:
        return
    assert [tuple(f) for f in got] == [tuple(f) for f in theirs.decode(data, raw=True)]


@needs_nghttp2
def test_nghttp2_refuses_a_header_list_over_the_limit_as_hpack_does() -> None:
    """An HPACK bomb (one 4 KiB entry indexed again and again) and one plain oversized list."""
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-bomb", b"a" * 4000)])
    bomb = encoder.encode([(b"x-bomb", b"a" * 4000)] * 20)  # 20 one-byte references
    assert len(bomb) < 100
    for decoder in (hpack.Decoder(), hpack_nghttp2.Decoder()):
        decoder.max_header_list_size = 32 * 1024
        decoder.decode(first)
        with pytest.raises(OversizedHeaderListError):
            decoder.decode(bomb)
    big = hpack.Encoder().encode([(b"x-big", b"a" * 40000)])
    huge = hpack.Encoder().encode([(b"x-big", bytes(range(256)) * 400)])  # a literal past nghttp2's 64 KiB
    for block in (big, huge):
        decoder = hpack_nghttp2.Decoder()
        decoder.max_header_list_size = 32 * 1024
        with pytest.raises(OversizedHeaderListError):
            decoder.decode(block)


@needs_nghttp2
def test_nghttp2_refuses_malformed_blocks() -> None:
    for block in (b"\xff\xff\xff\xff\xff\xff", b"\xbe", b"\x40\x05ab", b"\x82\x3f\xe1\x1f"):
        decoder = hpack_nghttp2.Decoder()
        with pytest.raises(HPACKDecodingError):
            decoder.decode(block)
        with pytest.raises(HPACKDecodingError):
            hpack.Decoder().decode(block)  # the oracle refuses each too


def test_without_the_library_h2_keeps_its_own_coders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hpack_nghttp2, "_lib", None)
    monkeypatch.setenv(hpack_nghttp2.LIBRARY_ENV, "")
    conn = h2.connection.H2Connection()
    assert not hpack_nghttp2.install(conn)
    assert isinstance(conn.encoder, hpack.Encoder) and isinstance(conn.decoder, hpack.Decoder)
    assert h2proxy.hpack_in_use() == "python"
    monkeypatch.setenv(hpack_nghttp2.LIBRARY_ENV, "/nonexistent/libnghttp2.so.14")
    assert hpack_nghttp2.load() == ""


# The stream count.
def _pair(limit: int) -> tuple[h2.connection.H2Connection, h2proxy._Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2proxy._Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit}
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def test_the_stream_limit_holds_exactly_and_closed_streams_still_leave() -> None:
    client, server = _pair(limit=100)
    client.remote_settings = h2.settings.Settings(  # a client that ignores the server's limit
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    )
    walks = 0
    walk = h2.connection.H2Connection._open_streams

    def counting_walk(self: h2.connection.H2Connection, remainder: int) -> int:
        nonlocal walks
        walks += self is server
        return walk(self, remainder)

    h2.connection.H2Connection._open_streams = counting_walk  # type: ignore[method-assign]
    try:
        # 5,000 streams one after another: each answered and ended, so at most one is open.
        for _ in range(5000):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(sid, [(b":status", b"200")], end_stream=True)
            client.receive_data(server.data_to_send())
        assert walks <= 5000 // h2proxy._Connection.WALK_EVERY + 2  # h2 alone walks once per stream
        assert len(server.streams) <= h2proxy._Connection.WALK_EVERY + 1  # closed ones still leave
        # Then 100 held open: all taken; the 101st is refused, as h2 refuses it.
        for _ in range(100):
            client.send_headers(client.get_next_available_stream_id(), REQUEST)
        events = server.receive_data(client.data_to_send())
        assert sum(isinstance(e, h2.events.RequestReceived) for e in events) == 100
        client.send_headers(client.get_next_available_stream_id(), REQUEST)
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            server.receive_data(client.data_to_send())
    finally:
        h2.connection.H2Connection._open_streams = walk  # type: ignore[method-assign]


def _goaway(last: int) -> bytes:
    return GoAwayFrame(0, last_stream_id=last, error_code=0).serialize()


def test_a_goaway_received_leaves_the_stream_it_names_to_finish() -> None:
    """h2 closed its connection on any GOAWAY received: the response to a stream the peer had
    named could not be sent (RFC 9113 §6.8). The proxy's connection reports it and stays open."""
    client, server = _pair(limit=100)
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    (event,) = server.receive_data(_goaway(0))  # a client's "no more from me", its stream 1 open
    assert isinstance(event, h2.events.ConnectionTerminated) and event.last_stream_id == 0
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"whole", end_stream=True)
    events = client.receive_data(server.data_to_send())
    kinds = [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert [type(e) for e in events] == kinds
    assert events[1].data == b"whole"


def test_goaways_that_name_nothing_new_cost_nothing_and_few_take_effect() -> None:
    """Each GOAWAY that takes effect makes an upstream connection walk its streams: a repeat, or
    a raised last stream id (forbidden), is dropped without an event; a graceful two-step
    shutdown (2^31-1, then the last taken) takes effect; past GOAWAYS_HONOURED lowering ones,
    h2's own rule closes the connection, so a peer cannot make the proxy walk forever."""
    client, server = _pair(limit=100)
    client.send_headers(1, REQUEST, end_stream=True)  # before any stream (IDLE), h2's rule stands
    server.receive_data(client.data_to_send())
    lasts = [h2rules.MAX_STREAM_ID, 99]
    assert [len(server.receive_data(_goaway(last))) for last in lasts] == [1, 1]
    assert [len(server.receive_data(_goaway(last))) for last in (99, 101, 2**31 - 1) * 300] == [0] * 900
    for last in range(97, 97 - 2 * (h2rules.GOAWAYS_HONOURED - 2), -2):
        (event,) = server.receive_data(_goaway(last))
        assert event.last_stream_id == last
    server.send_headers(1, [(b":status", b"200")])  # still open
    (event,) = server.receive_data(_goaway(1))  # one lowering more: h2's rule, closed
    assert isinstance(event, h2.events.ConnectionTerminated)
    with pytest.raises(ProtocolError):
        server.send_data(1, b"late", end_stream=True)


def test_closed_streams_leave_no_memory_but_a_reset_one_is_remembered() -> None:
    """h2 kept how each of a connection's last 65,536 streams closed (6 MiB per long-lived
    connection); the proxy's connection keeps the reset ones only, which is all h2 reads it for:
    a late frame on a reset stream still gets RST_STREAM, and the connection goes on."""
    client, server = _pair(limit=100)
    late = client.get_next_available_stream_id()
    client.send_headers(late, REQUEST)  # a request with a body under way...
    server.receive_data(client.data_to_send())
    server.reset_stream(late, h2.errors.ErrorCodes.CANCEL)  # ...that the proxy cancels
    client.receive_data(server.data_to_send())
    for _ in range(3000):  # then streams that end normally
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        client.receive_data(server.data_to_send())
    assert len(server.streams) <= h2proxy._Connection.WALK_EVERY + 1
    assert dict(server._closed_streams) == {late: h2.stream.StreamClosedBy.SEND_RST_STREAM}
    # The client's DATA, sent before it saw the reset, arrives now.
    frame = DataFrame(late, data=b"x" * 100)
    assert server.receive_data(frame.serialize()) == []  # no error: the connection lives
    answer = parse_frames(server.data_to_send())
    assert [(type(f).__name__, f.stream_id) for f in answer if f.stream_id] == [("RstStreamFrame", late)]
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.RequestReceived) and e.stream_id == sid for e in events)


# How each stream ends: with its HEADERS, with its last DATA (maybe empty), or with trailers.
STREAM_PLANS = st.lists(
    st.tuples(st.sampled_from(["headers", "data", "trailers"]), st.lists(st.integers(0, 40), max_size=3)),
    min_size=1,
    max_size=6,
)


def _ends_named_by_their_frames(events: list[h2.events.Event]) -> list[bool]:
    """For each StreamEnded in one batch of h2's events: whether the event of the frame that
    carried END_STREAM came before it and names it (`stream_ended`)."""
    named = {id(e.stream_ended) for e in events if getattr(e, "stream_ended", None) is not None}
    return [id(e) in named for e in events if isinstance(e, h2.events.StreamEnded)]


def _send_stream(
    conn: h2.connection.H2Connection,
    sid: int,
    head: list[tuple[bytes, bytes]],
    how: str,
    chunks: list[int],
    trailers: list[tuple[bytes, bytes]],
) -> None:
    """One side of a stream: its head, then DATA of these sizes, ended as `how` says."""
    conn.send_headers(sid, head, end_stream=how == "headers")
    if how == "headers":
        return
    sizes = chunks or [0]
    for i, size in enumerate(sizes):
        conn.send_data(sid, b"d" * size, end_stream=how == "data" and i == len(sizes) - 1)
    if how == "trailers":
        conn.send_headers(sid, trailers, end_stream=True)


@settings(max_examples=300, deadline=None)
@given(plans=STREAM_PLANS, cut=st.integers(1, 200))
def test_every_stream_end_is_named_by_the_event_of_its_frame(
    plans: list[tuple[str, list[int]]], cut: int
) -> None:
    """Session and H2Upstream queue a stream's end with the frame that carried it (h2's
    `stream_ended` on RequestReceived, ResponseReceived, DataReceived, TrailersReceived) and
    ignore h2's StreamEnded: that is right only while h2 emits StreamEnded solely after the event
    that names it, in the same batch. Requests into a proxy's client connection, responses into
    its upstream connection, fed in pieces of `cut` bytes."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    backend = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    session = h2proxy.Side(None, client_side=False, direction=h2proxy.INBOUND).conn  # type: ignore[arg-type]
    upstream = h2proxy.Side(None, client_side=True, direction=h2proxy.INBOUND).conn  # type: ignore[arg-type]
    for peer, ours in ((client, session), (backend, upstream)):
        peer.initiate_connection()
        ours.initiate_connection()
    ends = {"session": 0, "upstream": 0}
    checks: list[bool] = []

    def deliver(data: bytes, into: h2.connection.H2Connection, side: str) -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        for at in range(0, len(data), cut):
            batch = into.receive_data(data[at : at + cut])
            checks.extend(_ends_named_by_their_frames(batch))
            ends[side] += sum(isinstance(e, h2.events.StreamEnded) for e in batch)
            events += batch
        return events

    deliver(client.data_to_send(), session, "session")
    deliver(backend.data_to_send(), upstream, "upstream")
    client.receive_data(session.data_to_send())
    backend.receive_data(upstream.data_to_send())
    deliver(client.data_to_send(), session, "session")
    deliver(backend.data_to_send(), upstream, "upstream")
    for how, chunks in plans:
        # The request, client → the proxy's client connection.
        sid = client.get_next_available_stream_id()
        head = REQUEST if how == "headers" else [(b":method", b"POST"), *REQUEST[1:]]
        _send_stream(client, sid, head, how, chunks, [(b"x-trailer", b"1")])
        deliver(client.data_to_send(), session, "session")
        # The response, backend → the proxy's upstream connection (the same stream plan).
        uid = upstream.get_next_available_stream_id()
        upstream.send_headers(uid, REQUEST, end_stream=True)
        backend.receive_data(upstream.data_to_send())
        _send_stream(backend, uid, [(b":status", b"200")], how, chunks, [(b"grpc-status", b"0")])
        deliver(backend.data_to_send(), upstream, "upstream")
    assert ends == {"session": len(plans), "upstream": len(plans)}  # every stream ended, once
    assert checks and all(checks)
