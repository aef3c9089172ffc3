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
