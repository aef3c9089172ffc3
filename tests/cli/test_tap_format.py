"""`tap`'s lines and `top`'s routes from the proxy's events (pure): Linkerd's line format, one id
per request across its three lines, the wide fields, JSON, and top's counting and success rule.
The real streams (proxy, port-forward, API server) are tested in tests/e2e/test_tap_lab.py."""

from __future__ import annotations

import json

from kubectl_mesh.tap.events import Stream, TapOptions, format_event, json_event, parse_line
from kubectl_mesh.tap.stream import read_stream
from kubectl_mesh.tap.top import Top, render_top

WEB = "emojivoto/deployment/web/web-1"
VOTING = "emojivoto/deployment/voting/voting-1"


def req(
    n: int, path: str = "/api/vote", method: str = "POST", src: str = WEB, dst: str = "voting-svc:8080"
) -> dict:
    return {"id": n, "type": "req", "proxy": "out", "src": src, "dst": dst, "method": method,
            "authority": "voting-svc:8080", "path": path, "tls": False}  # fmt: skip


def rsp(n: int, status: int, latency_us: int, dst: str = VOTING, grpc: int | None = None) -> dict:
    return {
        "id": n,
        "type": "rsp",
        "status": status,
        "latency_us": latency_us,
        "dst": dst,
        "grpc_status": grpc,
    }


def end(n: int, size: int = 21, error: str | None = None) -> dict:
    return {"id": n, "type": "end", "duration_us": 1500, "response_bytes": size, "error": error}


def test_three_lines_in_linkerds_format_with_one_id() -> None:
    stream = Stream(2, "web-1", {})
    lines = [format_event(stream, e) for e in (req(7), rsp(7, 500, 1234), end(7))]
    assert lines == [
        "req id=2:7 proxy=out src=web-1 dst=voting-svc:8080 tls=false :method=POST "
        ":authority=voting-svc:8080 :path=/api/vote",
        "rsp id=2:7 proxy=out src=web-1 dst=voting-1 tls=false :status=500 latency=1234µs",
        "end id=2:7 proxy=out src=web-1 dst=voting-1 tls=false duration=1500µs response-length=21B",
    ]
    assert stream.requests == {}  # forgotten once ended


def test_wide_lines_name_each_ends_namespace_and_resource_and_unmeshed_ends_by_address() -> None:
    stream = Stream(0, "voting-1", {})
    inbound = {**req(1, src="10.244.0.9:51000", dst=VOTING), "proxy": "in"}
    line = format_event(stream, inbound, wide=True)
    assert line is not None
    assert "src=10.244.0.9:51000 dst=voting-1 dst_ns=emojivoto dst_res=deploy/voting" in line
    assert format_event(stream, {"type": "hello"}) is None
    assert "3 events dropped" in str(format_event(stream, {"type": "dropped", "count": 3}))


def test_json_lines_carry_the_pod_and_a_stream_scoped_id() -> None:
    stream = Stream(1, "web-1", {})
    event = json.loads(str(json_event(stream, req(4))))
    assert (event["pod"], event["id"], event["type"], event["path"]) == ("web-1", "1:4", "req", "/api/vote")
    assert json_event(stream, {"type": "hello"}) is None


def test_top_counts_routes_by_workload_with_latencies_and_the_success_rule() -> None:
    top = Top()
    stream = Stream(0, "web-1", {})
    events = [
        req(1), rsp(1, 200, 1000), end(1),
        req(2), rsp(2, 500, 3000), end(2),
        req(3), rsp(3, 200, 2000), end(3, error="reset"),  # an error after the head is a failure
        req(4, path="/api/list", method="GET"), rsp(4, 200, 500, grpc=0), end(4),
        req(5, path="/api/list", method="GET"), rsp(5, 200, 700, grpc=14), end(5),  # gRPC UNAVAILABLE
        req(6),  # still open: not counted yet
    ]  # fmt: skip
    for event in events:
        top.add(stream, event)
    vote, listing = top.rows()
    assert (vote.src, vote.dst, vote.method, vote.path, vote.count, vote.ok) == (
        "web",
        "voting",
        "POST",
        "/api/vote",
        3,
        1,
    )
    assert (vote.best_us, vote.worst_us, vote.last_us) == (1000, 3000, 2000)
    assert (listing.count, listing.ok) == (2, 1)
    table = render_top(top.rows())
    assert table.splitlines()[0].split() == [
        "SRC",
        "DST",
        "METHOD",
        "PATH",
        "COUNT",
        "BEST",
        "WORST",
        "LAST",
        "SUCCESS",
    ]
    assert "33.33%" in table and "1.0ms" in table
    assert json.loads(render_top(top.rows(), "json"))[0]["count"] == 3


def test_the_query_sent_to_the_proxy() -> None:
    options = TapOptions(path="/api", method="post", to=("emojivoto", "deployment", "voting"), max_rps=10)
    assert options.query() == "max_rps=10&path=%2Fapi&method=POST&to=emojivoto%2Fdeployment%2Fvoting"


class Chunks:
    """A ByteStream that answers with fixed chunks (lines split across them)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def close(self) -> None:
        pass


def test_read_stream_parses_lines_across_chunks_and_reports_refusals() -> None:
    stream = Chunks(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n{\"type\":\"hel",
                    b"lo\"}\n\n{\"id\":1,\"type\":\"req\"}\n")  # fmt: skip
    assert list(read_stream(stream, "max_rps=1")) == [{"type": "hello"}, {"id": 1, "type": "req"}]
    assert stream.sent.startswith(b"GET /tap?max_rps=1 HTTP/1.0\r\n")
    refused = Chunks(b"HTTP/1.1 503 Service Unavailable\r\n\r\nalready 8 taps on this proxy\n")
    try:
        list(read_stream(refused, ""))
    except Exception as exc:
        assert str(exc) == "the proxy refused the tap: already 8 taps on this proxy"
    else:
        raise AssertionError("a refusal must raise")
    assert parse_line(b"not json") is None and parse_line(b"[1]") is None
