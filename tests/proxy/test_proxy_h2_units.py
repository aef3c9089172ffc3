"""Pure HTTP/2 rules: detection of the preface, mesh fields on streams, gRPC classification."""

from __future__ import annotations

import pytest

from proxy import h2rules
from proxy.detect import H2_PREFACE, Protocol, detect
from proxy.metrics import MeshMetrics, classify, grpc_status_label

APP = [
    (b":method", b"POST"),
    (b":path", b"/svc/M"),
    (b":authority", b"web:8080"),
    (b"content-type", b"application/grpc"),
]
FORGED = [(b"x-mesh-src", b"evil/deployment/x/x-1"), (b"x-mesh-dst", b"evil/deployment/y/y-1")]


def test_the_preface_is_http2_and_every_prefix_of_it_waits_for_more() -> None:
    assert detect(H2_PREFACE) is Protocol.HTTP2
    assert detect(H2_PREFACE + b"\x00\x00\x00\x04") is Protocol.HTTP2
    for i in range(1, len(H2_PREFACE)):
        assert detect(H2_PREFACE[:i]) is Protocol.NEED_MORE, H2_PREFACE[:i]


@pytest.mark.parametrize(
    "first",
    [b"PRI * HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", b"PRIX", b"\x16\x03\x01\x02\x00"],
)
def test_near_misses_of_the_preface_are_opaque(first: bytes) -> None:
    assert detect(first) is Protocol.OPAQUE


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"PATCH", b"PROPFIND", b"PROPPATCH", b"PURGE"])
def test_http1_methods_starting_with_p_are_still_http1(method: bytes) -> None:
    assert detect(method + b" / HTTP/1.1\r\n") is Protocol.HTTP1


def test_an_app_cannot_forge_identity_on_a_stream_outbound() -> None:
    head = h2rules.split_request(APP + FORGED + [(b"x-mesh-via", b"aaa")])
    assert head.authority == b"web:8080" and head.grpc
    fields = h2rules.request_fields(head, True, b"ns/deployment/me/me-1", b"hop1")
    mesh = [(n, v) for n, v in fields if n.startswith(b"x-mesh-")]
    # The proxy's own identity, and the hop marker with this proxy appended (loops are caught).
    assert mesh == [(b"x-mesh-src", b"ns/deployment/me/me-1"), (b"x-mesh-via", b"aaa,hop1")]
    assert [f for f in fields if not f[0].startswith(b"x-mesh-")] == APP


def test_inbound_streams_reach_the_app_without_mesh_fields() -> None:
    head = h2rules.split_request(APP + FORGED)
    assert head.mesh[b"x-mesh-src"] == b"evil/deployment/x/x-1"  # read for labels, never forwarded
    assert h2rules.request_fields(head, False, b"ns/deployment/me/me-1", b"hop1") == APP


def test_no_identity_sends_only_the_hop_marker() -> None:
    fields = h2rules.request_fields(h2rules.split_request(APP), True, None, b"hop1")
    assert [n for n, _ in fields if n.startswith(b"x-mesh-")] == [b"x-mesh-via"]


def test_a_trailers_only_response_is_classified_by_its_headers() -> None:
    response = h2rules.split_response(
        [(b":status", b"200"), (b"grpc-status", b"5"), (b"x-mesh-dst", b"a/deployment/b/c")]
    )
    assert (response.status, response.grpc_status) == (200, "5")
    assert response.mesh == {b"x-mesh-dst": b"a/deployment/b/c"}
    assert all(not n.startswith(b"x-mesh-") for n, _ in response.fields)
    trailers, grpc_status = h2rules.split_trailers([(b"grpc-status", b"0"), (b"x-mesh-dst", b"x")])
    assert (trailers, grpc_status) == ([(b"grpc-status", b"0")], "0")


def test_grpc_status_labels_are_bounded() -> None:
    assert [grpc_status_label(str(c).encode()) for c in range(17)] == [str(c) for c in range(17)]
    assert {grpc_status_label(v) for v in (b"17", b"-1", b"abc", b"", b"0" * 300)} == {"other"}
    assert grpc_status_label(None) == ""


def test_grpc_classification() -> None:
    assert classify(200, "", "0") == "success"
    assert classify(200, "", "5") == "failure"
    assert classify(200, "reset", "0") == "failure"
    assert classify(200, "client_gone", "14") == "success"  # the client's doing: judged by status
    assert classify(200, "", "") == "success"


def test_grpc_status_is_a_label_of_response_total() -> None:
    metrics = MeshMetrics()
    metrics.response("inbound", "web:8080", (), 200, "", 1.0, "0")
    metrics.response("inbound", "web:8080", (), 200, "", 1.0, "5")
    metrics.response("inbound", "web:8080", (), 200, "", 1.0, "5")
    text = metrics.render()
    assert 'classification="success",status_code="200",grpc_status="0"} 1' in text
    assert 'classification="failure",status_code="200",grpc_status="5"} 2' in text
    assert 'response_latency_ms_count{direction="inbound",authority="web:8080",status_code="200"} 3' in text


def test_a_stream_the_proxy_fails_answers_grpc_clients_in_grpc() -> None:
    fields = dict(h2rules.failure_response(502, True, "connect_refused"))
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"14"
    assert dict(h2rules.failure_response(504, False, "timeout"))[b":status"] == b"504"


def test_the_flood_budget_restarts_each_second() -> None:
    budget = h2rules.Budget(3)
    assert [budget.spend(10.0) for _ in range(4)] == [True, True, True, False]
    assert budget.spend(11.0)


def test_data_dribble_is_small_frames_making_up_most_of_a_connections_data() -> None:
    """CVE-2019-9511: a peer whose every frame was cut small is dribbling from its first frames;
    a real reader gets at most one small remainder per window it opens, after that window's
    other frames (at most one in two), and is never taken for it, however long it reads."""
    assert h2rules.dribbling(1, 0) and h2rules.dribbling(101, 100)
    assert h2rules.dribbling(101, 4 + 100)  # 4 full frames, then a byte a frame
    for opened in (2, 10, 1_000_000):  # one small frame after each normal one, the last not yet sent
        assert not h2rules.dribbling(opened, 2 * opened - 1)
    assert not h2rules.dribbling(3, 4) and h2rules.dribbling(4, 4)
    assert h2rules.DRIBBLE_FRAME_BYTES < 1023  # h2load's `-w 10` windows are a real client's


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"10S", 10.0),
        (b"2M", 120.0),
        (b"1H", 3600.0),
        (b"1500m", 1.5),
        (b"99999999u", 99.999999),
        (b"5n", 5e-9),
    ],
)
def test_grpc_timeout_values_are_read_as_grpc_writes_them(value: bytes, seconds: float) -> None:
    assert h2rules.grpc_timeout(value) == pytest.approx(seconds)
    head = h2rules.split_request([*APP, (b"grpc-timeout", value)])
    assert head.grpc_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"10s", b"123456789S", b"-1S", b"1.5S", b"10 S"])
def test_malformed_grpc_timeouts_are_ignored(value: bytes) -> None:
    assert h2rules.grpc_timeout(value) is None


def test_the_head_waits_the_response_timeout_or_a_longer_grpc_deadline_up_to_the_idle_timeout() -> None:
    assert h2rules.head_timeout(10, 300, None) == 10
    assert h2rules.head_timeout(10, 300, 2) == 10  # a shorter deadline is the client's own affair
    assert h2rules.head_timeout(10, 300, 60) == 60
    assert h2rules.head_timeout(10, 300, 3600) == 300


def _expired(now: float, **kw: object) -> str:
    state: dict[str, object] = {
        "active": 0.0, "request_end": 0.0, "head_limit": 10.0, "idle_timeout": 300.0, "head_seen": False,
        "queued_for_client": False, "queued_for_upstream": False,
    }  # fmt: skip
    state.update(kw)
    return h2rules.stream_timeout(now, **state)  # type: ignore[arg-type]


def test_a_stream_waits_for_its_head_from_the_end_of_its_request() -> None:
    # The request is still open (a client streaming): no head deadline, only the idle one.
    assert _expired(200.0, active=150.0) == ""
    # Ended at t=100: the head is due by 110, whatever moved since.
    assert _expired(109.9, active=109.0, request_end=100.0) == ""
    assert _expired(110.1, active=110.0, request_end=100.0) == "timeout"
    # Once the head came, only silence ends it: a stream that makes progress lives on.
    assert _expired(1000.0, active=990.0, request_end=100.0, head_seen=True) == ""


def test_an_idle_stream_is_blamed_on_whoever_the_proxy_waits_for() -> None:
    idle = {"active": 0.0, "head_seen": True}
    assert _expired(299.0, **idle) == ""
    assert _expired(301.0, **idle, queued_for_client=True) == "client_timeout"  # the client reads nothing
    assert _expired(301.0, **idle, queued_for_upstream=True) == "timeout"  # the upstream reads nothing
    assert _expired(301.0, **idle, request_end=1.0) == "timeout"  # the rest of the response is due
    assert _expired(301.0, **idle) == "client_timeout"  # the client's request is still open
    assert _expired(301.0, active=0.0) == "client_timeout"  # the same before any head


def test_1xx_heads_are_passed_on_without_mesh_fields_and_101_never() -> None:
    fields = h2rules.informational_fields([(b":status", b"103"), (b"link", b"</a.css>"), *FORGED])
    assert fields == [(b":status", b"103"), (b"link", b"</a.css>")]
    assert h2rules.informational_fields([(b":status", b"101"), (b"upgrade", b"h2c")]) is None


def test_a_header_block_under_way_is_seen_in_h2s_frame_buffer() -> None:
    """`header_block_pending` reads h2's buffer: this fails if a new h2 keeps it elsewhere."""
    import h2.config
    import h2.connection
    from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

    from proxy.h2proxy import header_block_pending

    def server() -> h2.connection.H2Connection:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.receive_data(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS
        return conn

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    block = client.encoder.encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")]
    )
    first = HeadersFrame(1, data=block[:3])
    rest = ContinuationFrame(1, data=block[3:])
    rest.flags.add("END_HEADERS")
    conn = server()
    assert not header_block_pending(conn)
    conn.receive_data(first.serialize()[:5])  # part of a HEADERS frame
    assert header_block_pending(conn)
    conn.receive_data(first.serialize()[5:])  # the whole frame, no END_HEADERS yet
    assert header_block_pending(conn)
    conn.receive_data(rest.serialize())
    assert not header_block_pending(conn)
    conn.receive_data(DataFrame(1, data=b"x" * 100).serialize()[:20])  # a DATA frame partly read
    assert not header_block_pending(conn)


def test_the_hooks_that_spare_eager_formatting_still_exist_in_h2_and_hpack() -> None:
    """h2proxy replaces `Frame.__repr__` and hpack's module logger (see `_no_eager_formatting`):
    if a new h2 stops calling repr(frame) on receipt, or hpack renames `log`, this says so."""
    import inspect

    import h2.connection
    import hpack.hpack
    from hyperframe.frame import DataFrame

    import proxy.h2proxy  # noqa: F401  (applies the change)

    assert "repr(frame)" in inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert "log.debug(" in inspect.getsource(hpack.hpack.Decoder.decode)
    assert repr(DataFrame(1, data=b"x" * 1000)) == "DataFrame"
    assert hpack.hpack.log.debug("anything %s", "at all") is None


def test_the_h2_floor_bench_carries_every_stream_through_the_proxys_own_connections() -> None:
    """bench_h2_floor times the proxy's connections (`h2proxy.new_connection`); it stops with an
    error if a batch's responses do not all reach its client, as it would if they drifted apart."""
    from bench import bench_h2_floor

    result = bench_h2_floor.run(streams=120, in_flight=10)
    assert result["streams"] == 120
    assert result["h2_floor_us_per_stream"] > 0
    assert result["hpack"] == "python" or result["hpack"].startswith("nghttp2-")
    assert result["core"] == "h2"


def test_the_h2_floor_bench_carries_every_stream_through_nghttp2_sessions_too() -> None:
    """`--core nghttp2`: the same flow on two nghttp2 sessions (cffi ABI mode) instead of the
    proxy's h2 connections; it stops the same way if a batch's responses do not all arrive."""
    from bench import bench_h2_floor, nghttp2_session

    if not nghttp2_session.load():
        pytest.skip("libnghttp2.so.14 is not installed")
    result = bench_h2_floor.run(streams=120, in_flight=10, core="nghttp2")
    assert result["streams"] == 120
    assert result["core"] == "nghttp2"
    assert result["h2_floor_us_per_stream"] > 0
