"""Unit tests of the proxy's pure parts: detection, HTTP/1 handling, identity, config, rules."""

from __future__ import annotations

import argparse
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubectl_mesh.contract import DEFAULT_INBOUND_PORTS_TO_IGNORE, PROXY_UID
from kubectl_mesh.portlist import PortList
from proxy import http1
from proxy.config import ProxyConfigError, parse_run_args
from proxy.detect import Protocol, detect
from proxy.http1 import BODY, CHUNKED, END, HEAD, LENGTH, NO_BODY, UNTIL_CLOSE, UPGRADE, Head, ProtocolError
from proxy.identity import PeerLabelCache, identity_from_parts, parse_identity, peer_labels
from proxy.init import config_from_args
from proxy.iptables import (
    INBOUND_CHAIN,
    OUTPUT_CHAIN,
    InitConfig,
    clean_rules,
    has_any,
    is_applied,
    plan_rules,
    render,
)
from proxy.metrics import classify

# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", Protocol.HTTP1),
        (b"POST /x HTTP/1.0\r\n", Protocol.HTTP1),
        (b"PROPFIND / ", Protocol.HTTP1),
        (b"GE", Protocol.NEED_MORE),
        (b"OPTIONS", Protocol.NEED_MORE),
        (b"", Protocol.NEED_MORE),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Protocol.HTTP2),
        (b"\x16\x03\x01\x02\x00", Protocol.OPAQUE),
        (b"get / HTTP/1.1", Protocol.OPAQUE),
        (b"GETX / HTTP/1.1", Protocol.OPAQUE),
        (b"SSH-2.0-OpenSSH", Protocol.OPAQUE),
    ],
)
def test_detect(first: bytes, expected: Protocol) -> None:
    assert detect(first) is expected


# --- HTTP/1 ---------------------------------------------------------------------------------------


def _request_events(data: bytes) -> list[tuple[int, object]]:
    """Every event of `data`, taking them as the proxy does (what is held back comes on resume)."""
    reader = http1.RequestReader()
    reader.feed(data)
    events = []
    while reader.events:
        events.extend(reader.events)
        reader.events.clear()
        reader.resume()
    return events


def test_split_headers_drops_hop_by_hop_and_connection_named() -> None:
    head = Head()
    http1.split_headers(
        [
            (b"Host", b"web"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Mesh-Src", b"a/deployment/b/c"),
            (b"X-Mesh-Dst", b"d/deployment/e/f"),
            (b"Accept", b"*/*"),
            (b"Expect", b"100-continue"),
        ],
        head,
    )
    assert head.headers == [(b"Host", b"web"), (b"Accept", b"*/*"), (b"Expect", b"100-continue")]
    assert head.mesh == {b"x-mesh-src": b"a/deployment/b/c", b"x-mesh-dst": b"d/deployment/e/f"}
    assert head.host == b"web" and head.expect_continue


def test_upgrade_needs_connection_upgrade() -> None:
    head = Head()
    http1.split_headers([(b"Upgrade", b"websocket")], head)
    assert head.upgrade is None, "Upgrade without Connection: upgrade is not a request to switch"
    head = Head()
    http1.split_headers([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], head)
    assert head.upgrade == b"websocket"


def test_request_reader_events_for_pipelined_requests() -> None:
    events = _request_events(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    )
    kinds = [k for k, _ in events]
    assert kinds == [HEAD, END, HEAD, BODY, END]
    first, second = events[0][1], events[2][1]
    assert isinstance(first, Head) and isinstance(second, Head)
    assert (first.method, first.target, first.body_mode) == (b"GET", b"/a", NO_BODY)
    assert (second.method, second.body_mode, events[3][1]) == (b"POST", LENGTH, b"abc")


def test_request_reader_chunked_and_upgrade() -> None:
    events = _request_events(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    head = events[0][1]
    assert isinstance(head, Head) and head.body_mode == CHUNKED
    assert [k for k, _ in events] == [HEAD, BODY, END]
    events = _request_events(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nleftover")
    assert [k for k, _ in events] == [HEAD, END, UPGRADE]
    assert events[-1][1] == b"leftover"


def test_trailers_end_the_message_and_only_end_to_end_ones_are_forwarded() -> None:
    events = _request_events(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        b"X-Digest: sha-256=abc\r\nConnection: close\r\nx-mesh-src: a/deployment/b/c\r\n\r\n"
    )
    assert [k for k, _ in events] == [HEAD, BODY, END]
    head, trailers = events[0][1], events[2][1]
    assert all(name.lower() != b"x-digest" for name, _ in head.headers), "a trailer is not a header"
    assert http1.last_chunk(trailers) == b"0\r\nX-Digest: sha-256=abc\r\n\r\n"
    assert http1.last_chunk(None) == http1.last_chunk([]) == b"0\r\n\r\n"
    reader = http1.ResponseReader()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGrpc-Status: 0\r\n\r\n")
    assert list(reader.events)[-1] == (END, [(b"Grpc-Status", b"0")])


def test_trailers_are_bounded_like_a_head() -> None:
    start = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    many = start + b"X-T: v\r\n" * (http1.MAX_HEADERS + 1) + b"\r\n"
    with pytest.raises(ProtocolError) as info:
        _request_events(many)
    assert info.value.status == 431
    # A trailer line that never ends is refused once it outgrows a head, not buffered forever.
    reader = http1.RequestReader()
    reader.feed(start + b"X-Endless: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(http1.MAX_OPEN_HEAD_BYTES // 65536 + 2):
            reader.feed(b"v" * 65536)
    assert info.value.status == 431
    # Body data keeps flowing however long the body: only framing and trailers are capped.
    reader = http1.RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(50):
        reader.feed(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
    reader.feed(b"0\r\n\r\n")
    assert list(reader.events)[-1] == (END, None)


def test_te_trailers_is_asked_for_again_upstream() -> None:
    (_, head), _ = _request_events(b"GET / HTTP/1.1\r\nTE: trailers\r\nConnection: TE\r\n\r\n")
    assert isinstance(head, Head) and not any(n.lower() == b"te" for n, _ in head.headers)
    assert http1.request_framing(head) == [(b"TE", b"trailers"), (b"Connection", b"te")]
    (_, old), _ = _request_events(b"GET / HTTP/1.0\r\nTE: trailers\r\nConnection: TE\r\n\r\n")
    assert isinstance(old, Head) and http1.request_framing(old) == [], "an HTTP/1.0 client gets no trailers"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA B: c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * (http1.MAX_HEADER_BYTES + 1) + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * (http1.MAX_HEADERS + 1) + b"\r\n", 431),
        (b"GET /" + b"a" * (http1.MAX_TARGET_BYTES + 1) + b" HTTP/1.1\r\n\r\n", 414),
        (b"\x00\x01garbage\r\n\r\n", 400),
        # request smuggling vectors: ambiguous framing is refused, never guessed
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ],
)
def test_request_reader_rejects(data: bytes, status: int) -> None:
    with pytest.raises(http1.ProtocolError) as error:
        http1.RequestReader().feed(data)
    assert error.value.status == status


def test_an_endless_header_line_is_cut_off() -> None:
    """llhttp hands over a header only when its line ends; the reader must not buffer forever."""
    reader = http1.RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nX-Endless: ")
    with pytest.raises(http1.ProtocolError) as error:
        for _ in range(1000):  # 4 MiB if it never stopped
            reader.feed(b"a" * 4096)
    assert error.value.status == 431


def test_a_large_body_in_the_first_read_is_not_mistaken_for_a_large_head() -> None:
    reader = http1.RequestReader()
    body = b"b" * 200_000
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sum(len(d) for k, d in reader.events if k == BODY) == len(body)


def test_response_reader_head_1xx_and_close_delimited() -> None:
    reader = http1.ResponseReader()
    reader.start(b"HEAD")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert [k for k, _ in reader.events] == [HEAD, END], "a response to HEAD ends with its headers"
    reader.events.clear()
    reader.start(b"GET")  # the parser is replaced: the next response parses from scratch
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    events = list(reader.events)
    assert [k for k, _ in events] == [HEAD, HEAD, BODY, END]
    assert [e[1].status for e in events if e[0] == HEAD] == [100, 200]
    reader = http1.ResponseReader()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    assert reader.events[0][1].body_mode == UNTIL_CLOSE
    assert reader.eof() and list(reader.events)[-1] == (END, None)


def test_response_reader_204_304_have_no_body() -> None:
    for status in (204, 304):
        reader = http1.ResponseReader()
        reader.start(b"GET")
        reader.feed(b"HTTP/1.1 %d X\r\n\r\n" % status)
        assert [k for k, _ in reader.events] == [HEAD, END]


def test_junk_after_a_complete_response_only_marks_the_connection() -> None:
    reader = http1.ResponseReader()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nstatus\n")
    assert [k for k, _ in reader.events] == [HEAD, END]
    assert reader.broken


def test_malformed_response_is_502() -> None:
    reader = http1.ResponseReader()
    reader.start(b"GET")
    with pytest.raises(http1.ProtocolError) as error:
        reader.feed(b"HTTP/1.1 abc\r\n\r\n")
    assert error.value.status == 502


def test_response_plan_and_encoding() -> None:
    head = Head()
    head.status, head.reason, head.body_mode = 200, b"OK", CHUNKED
    head.headers = [(b"Content-Type", b"text/plain")]
    assert http1.response_plan(head, "1.1") == (True, True)
    assert http1.response_plan(head, "1.0") == (False, False), "HTTP/1.0 gets a close-delimited body"
    head.body_mode = LENGTH
    assert http1.response_plan(head, "1.0") == (False, True)
    out = http1.encode_response_head(head, "1.0", True, False, [(b"x-mesh-dst", b"a/pod/b/c")])
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-mesh-dst: a/pod/b/c\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    assert http1.chunk(b"abc") == b"3\r\nabc\r\n"


def test_request_encoding_adds_framing_and_identity() -> None:
    [(_, head), *_] = _request_events(
        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nX-Mesh-Src: forged\r\n\r\n"
    )
    assert isinstance(head, Head)
    extra = [*http1.request_framing(head), (b"x-mesh-src", b"ns/deployment/a/b")]
    out = http1.encode_request_head(head, b"/p", extra)
    assert out == (
        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"x-mesh-src: ns/deployment/a/b\r\n\r\n"
    )


@pytest.mark.parametrize("named", [b"content-length", b"Content-Length, x-a", b"host", b"transfer-encoding"])
def test_a_connection_option_never_removes_framing_or_host(named: bytes) -> None:
    """`Connection: content-length` once dropped the length but forwarded the body: smuggling."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nx-mesh-src: evil/deployment/evil/p\r\n\r\n"
    data = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: %b\r\nContent-Length: %d\r\n\r\n%b" % (
        named,
        len(smuggled),
        smuggled,
    )
    events = _request_events(data)
    assert [k for k, _ in events] == [HEAD, BODY, END], "one request, its body, its end: nothing else"
    head = events[0][1]
    assert isinstance(head, Head)
    out = http1.encode_request_head(head, b"/p", http1.request_framing(head))
    assert out == b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(smuggled)


def test_content_length_is_written_from_the_parsed_value() -> None:
    [(_, head), *_] = _request_events(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 003\r\n\r\nabc")
    assert isinstance(head, Head)
    assert head.content_length == 3 and head.body_mode == LENGTH
    assert b"Content-Length: 3\r\n" in http1.encode_request_head(head, b"/p", http1.request_framing(head))
    [(_, empty), *_] = _request_events(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(empty, Head) and empty.body_mode == NO_BODY
    assert b"Content-Length: 0\r\n" in http1.encode_request_head(empty, b"/p", http1.request_framing(empty))
    with pytest.raises(ProtocolError):
        _request_events(b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")


def test_response_content_length_from_state_and_never_on_204() -> None:
    reader = http1.ResponseReader()
    reader.start(b"HEAD")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0042\r\n\r\n")
    head = reader.events[0][1]
    out = http1.encode_response_head(head, "1.1", True, False, [])
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", "a HEAD answer keeps its length"
    head.status = 204
    assert b"Content-Length" not in http1.encode_response_head(head, "1.1", True, False, [])


def test_body_writers_frame_like_h11() -> None:
    out: list[bytes] = []
    http1.CHUNKED_WRITER.write(b"abc", out)
    http1.CHUNKED_WRITER.end([(b"X-T", b"1"), (b"Content-Length", b"9")], out)
    assert b"".join(out) == b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    out = []
    http1.PLAIN_WRITER.write(b"abc", out)
    http1.PLAIN_WRITER.end([(b"X-T", b"1")], out)
    assert out == [b"abc"], "no chunks, no trailers"
    big = b"x" * 100_000
    out = []
    http1.CHUNKED_WRITER.write(big, out)
    assert out[1] is big, "a body piece is never copied"


def test_a_response_with_leftovers_is_not_clean() -> None:
    reader = http1.ResponseReader()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert [k for k, _ in reader.events] == [HEAD, BODY, END]
    reader.events.clear()
    assert reader.clean()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    for _ in range(3):
        reader.events.popleft()
    assert not reader.clean(), "a second, unasked-for response stays in the reader"
    reader = http1.ResponseReader()
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 2")
    for _ in range(3):
        reader.events.popleft()
    assert not reader.clean(), "the first bytes of a next message stay in the reader"


def test_pipelined_requests_are_parsed_a_message_at_a_time() -> None:
    """One read full of tiny pipelined requests must not become hundreds of parsed heads."""
    one = b"GET /%d HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 90 + b"\r\n"
    data = b"".join(one % i for i in range(100))
    reader = http1.RequestReader()
    reader.feed(data)
    heads = [h for k, h in reader.events if k == HEAD]
    assert 1 <= len(heads) <= 3, "parsing stops at a message boundary while events wait"
    assert reader.backlog
    targets = []
    for _ in range(1000):
        while reader.events:
            kind, head = reader.events.popleft()
            if kind == HEAD:
                targets.append(head.target)
        if not reader.backlog:
            break
        reader.resume()
    assert targets == [b"/%d" % i for i in range(100)], "every request, in order"


def test_a_bad_request_after_a_good_one_waits_its_turn() -> None:
    reader = http1.RequestReader()
    reader.feed(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
    reader.feed(b"abcBAD REQUEST\r\n\r\n")
    assert [k for k, _ in reader.events] == [HEAD, BODY, END], "the good request is whole"
    reader.events.clear()
    with pytest.raises(ProtocolError) as error:
        reader.resume()
    assert error.value.status == 400


@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket"])
def test_an_upgrade_offer_with_a_body_goes_on_as_a_plain_request(upgrade: bytes) -> None:
    events = _request_events(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAA\r\n"
        b"Upgrade: %b\r\nContent-Length: 11\r\n\r\nhello=worldGET /next HTTP/1.1\r\nHost: x\r\n\r\n" % upgrade
    )
    assert [k for k, _ in events] == [HEAD, BODY, END, HEAD, END]
    head = events[0][1]
    assert isinstance(head, Head) and head.upgrade is None
    assert events[1][1] == b"hello=world"
    out = http1.encode_request_head(head, b"/", http1.request_framing(head))
    assert b"Upgrade" not in out and b"HTTP2-Settings" not in out and b"Content-Length: 11\r\n" in out
    assert events[3][1].target == b"/next"


def test_h2c_without_a_body_stays_http1_and_websocket_switches() -> None:
    events = _request_events(
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    )
    assert [k for k, _ in events] == [HEAD, END, HEAD, END]
    assert events[0][1].upgrade is None, "h2c is declined: the next hop stays HTTP/1.1 (as Linkerd)"


def test_http09_request_lines_are_refused() -> None:
    with pytest.raises(ProtocolError):
        _request_events(b"CONNECT  HTTP/1.0\r\n\r\n")


def test_transfer_coding_is_written_from_what_it_means() -> None:
    [(_, head), *_] = _request_events(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: Identity, Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert isinstance(head, Head) and head.body_mode == CHUNKED
    assert (b"Transfer-Encoding", b"chunked") in http1.request_framing(head)


def test_hop_marker_finds_loops() -> None:
    assert not http1.via_loops(None, b"a1")
    assert not http1.via_loops(b"b2, c3", b"a1")
    assert http1.via_loops(b"b2, a1", b"a1")
    assert http1.via_add(None, b"a1") == b"a1"
    assert http1.via_add(b"b2", b"a1") == b"b2,a1"
    many = b",".join(b"p%d" % i for i in range(http1.MAX_HOPS))
    assert http1.via_loops(many, b"a1"), "too many hops is a loop through proxies that forget"


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, "", "success"),
        (404, "", "success"),
        (500, "", "failure"),
        (503, "", "failure"),
        (0, "reset", "failure"),
        (200, "client_timeout", "success"),
        (0, "client_gone", "success"),
        (503, "client_gone", "failure"),
        (100, "", "success"),
        (499, "", "success"),
        (599, "", "failure"),
        # Not an HTTP status code: a failure, counted in the route's shared bucket.
        (0, "", "failure"),
        (99, "", "failure"),
        (600, "", "failure"),
        (999, "", "failure"),
    ],
)
def test_classify(status: int, error: str, expected: str) -> None:
    assert classify(status, error) == expected


@pytest.mark.parametrize(
    ("target", "host", "expected"),
    [
        (b"http://web.shop:8080/a?b", None, (("web.shop", 8080), b"/a?b", b"web.shop:8080")),
        (b"http://web", None, (("web", 80), b"/", b"web")),
        (b"http://[::1]:81/x", None, (("::1", 81), b"/x", b"[::1]:81")),
        (b"/path", b"api:9000", (("api", 9000), b"/path", b"api:9000")),
        (b"/path", None, None),
        (b"https://web/", None, None),
        (b"http://user@web/", None, None),
        (b"/x", b"web:99999", None),
    ],
)
def test_forward_proxy_target(target: bytes, host: bytes | None, expected: object) -> None:
    head = Head()
    head.target, head.host = target, host
    assert http1.forward_proxy_target(head) == expected


# --- identity -------------------------------------------------------------------------------------


def test_identity_parse_and_labels() -> None:
    assert parse_identity(b"shop/deployment/web/web-1") == ("shop", "deployment", "web", "web-1")
    for bad in (
        b"",
        b"a/b/c",
        b"a/notakind/b/c",
        b"A/deployment/b/c",
        b"a/deployment/b/c/d",
        b"a/deployment//c",
    ):
        assert parse_identity(bad) is None, bad
    assert peer_labels("dst", b"shop/statefulset/db/db-0") == (
        ("dst_namespace", "shop"),
        ("dst_statefulset", "db"),
        ("dst_pod", "db-0"),
    )
    assert peer_labels("src", b"garbage") == ()
    cache = PeerLabelCache("src", max_entries=2)
    for i in range(5):
        assert cache.get(b"n/pod/p/p%d" % i)[2] == ("src_pod", f"p{i}")
    assert len(cache._cache) <= 2
    assert identity_from_parts("shop", "Deployment", "web", "web-1") is not None
    assert identity_from_parts("shop", "deployment", "web", "") is None


# --- config -----------------------------------------------------------------------------------------


def test_config_env_fallback_and_flags_win() -> None:
    env = {
        "MESH_POD_NAMESPACE": "shop",
        "MESH_WORKLOAD_KIND": "deployment",
        "MESH_WORKLOAD_NAME": "web",
        "MESH_POD_NAME": "web-1",
        "MESH_OPAQUE_PORTS": "3306,5432-5433",
        "MESH_LOG_LEVEL": "debug",
    }
    config = parse_run_args(["--pod", "web-2"], env)
    assert config.identity is not None and config.identity.header_value() == b"shop/deployment/web/web-2"
    assert set(config.opaque_ports) == {3306, 5432, 5433}
    assert 5432 in config.opaque_ports and 5434 not in config.opaque_ports
    assert config.log_level == "debug"
    assert parse_run_args([], {}).identity is None
    assert parse_run_args(["--inbound-forward", "127.0.0.1:8080"], {}).inbound_forward == ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    "argv",
    [
        ["--namespace", "shop"],  # a partial identity
        ["--opaque-ports", "70000"],
        ["--opaque-ports", "٨٠"],
        ["--inbound-forward", "nohost"],
        ["--response-timeout", "0"],
    ],
)
def test_config_errors(argv: list[str]) -> None:
    with pytest.raises(ProxyConfigError):
        parse_run_args(argv, {})


def test_log_format_flag_and_environment() -> None:
    assert parse_run_args([], {}).log_format == "logfmt"
    assert parse_run_args([], {"MESH_LOG_FORMAT": "json"}).log_format == "json"
    assert parse_run_args(["--log-format", "logfmt"], {"MESH_LOG_FORMAT": "json"}).log_format == "logfmt"
    with pytest.raises(ProxyConfigError, match="MESH_LOG_FORMAT must be one of logfmt, json"):
        parse_run_args([], {"MESH_LOG_FORMAT": "xml"})


def test_opaque_port_errors_name_their_source() -> None:
    with pytest.raises(ProxyConfigError, match=r"^--opaque-ports: '0' is not within 1-65535"):
        parse_run_args(["--opaque-ports", "0"], {})
    with pytest.raises(ProxyConfigError, match=r"^MESH_OPAQUE_PORTS: 'x' is not a port or a port range"):
        parse_run_args([], {"MESH_OPAQUE_PORTS": "x"})


# --- iptables ------------------------------------------------------------------------------------------


def _init_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = dict(
        proxy_uid=PROXY_UID,
        inbound_port=4143,
        outbound_port=4140,
        inbound_ports_to_ignore="",
        outbound_ports_to_ignore="",
        subnets_to_ignore="",
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def test_plan_rules_like_proxy_init() -> None:
    config = config_from_args(
        _init_args(
            inbound_ports_to_ignore="22", outbound_ports_to_ignore="5432", subnets_to_ignore="10.96.0.0/12"
        )
    )
    assert set(DEFAULT_INBOUND_PORTS_TO_IGNORE) <= set(config.inbound_ports_to_ignore)
    text = render(plan_rules(config))
    lines = [line.split(" -m comment")[0] for line in text.splitlines()]
    assert lines == [
        f"iptables -t nat -N {INBOUND_CHAIN}",
        f"iptables -t nat -N {OUTPUT_CHAIN}",
        f"iptables -t nat -A {INBOUND_CHAIN} -p tcp -m multiport --dports 22,4190:4191 -j RETURN",
        f"iptables -t nat -A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports 4143",
        f"iptables -t nat -A PREROUTING -p tcp -j {INBOUND_CHAIN}",
        f"iptables -t nat -A {OUTPUT_CHAIN} -m owner --uid-owner 2102 -j RETURN",
        f"iptables -t nat -A {OUTPUT_CHAIN} -o lo -j RETURN",
        f"iptables -t nat -A {OUTPUT_CHAIN} -p tcp -m multiport --dports 5432 -j RETURN",
        f"iptables -t nat -A {OUTPUT_CHAIN} -d 10.96.0.0/12 -j RETURN",
        f"iptables -t nat -A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports 4140",
        f"iptables -t nat -A OUTPUT -p tcp -j {OUTPUT_CHAIN}",
    ]


def test_many_ignored_ports_split_into_multiport_groups() -> None:
    ports = tuple(range(1000, 1040, 2))  # 20 single ports: more than one multiport rule holds
    rules = plan_rules(InitConfig(inbound_ports_to_ignore=PortList.of(ports)))
    groups = [r[r.index("--dports") + 1] for r in rules if "--dports" in r]
    assert sorted(int(p) for g in groups for p in g.split(",")) == list(ports)
    assert all(len(g.split(",")) <= 7 for g in groups)


def _save_output(config: InitConfig) -> str:
    """What `iptables-save -t nat` prints after the plan was applied (its quoting of comments)."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    rules = plan_rules(config)
    lines += [f":{r[1]} - [0:0]" for r in rules if r[0] == "-N"]
    for r in rules:
        if r[0] == "-A":
            i = r.index("--comment")
            lines.append(" ".join([*r[: i + 1], f'"{r[i + 1]}"', *r[i + 2 :]]))
    return "\n".join([*lines, "COMMIT"])


def test_idempotence_and_clean() -> None:
    config = InitConfig()
    saved = _save_output(config)
    assert is_applied(saved, config)
    other = InitConfig(inbound_ports_to_ignore=PortList.of([22]))
    assert not is_applied(saved, other), "other settings → re-apply"
    assert not is_applied("*nat\nCOMMIT", config) and not has_any("*nat\nCOMMIT")
    commands = clean_rules(saved)
    assert commands[0][:2] == ["-D", "PREROUTING"] and commands[1][:2] == ["-D", "OUTPUT"]
    assert ["-X", INBOUND_CHAIN] in commands and ["-X", OUTPUT_CHAIN] in commands
    assert "kubectl-mesh:" in commands[0][commands[0].index("--comment") + 1], "comment unquoted for iptables"


def test_init_port_flags() -> None:
    config = config_from_args(_init_args(outbound_ports_to_ignore="22, 8000-8002"))
    assert tuple(config.outbound_ports_to_ignore) == (22, 8000, 8001, 8002)
    for bad in ("x", "0", "70000", "5-3", "٨٠"):
        with pytest.raises(ValueError, match=r"^--inbound-ports-to-ignore: "):
            config_from_args(_init_args(inbound_ports_to_ignore=bad))


def test_ignored_port_ranges_stay_ranges_in_the_rules() -> None:
    """A wide range is one multiport item, not 65535 ports expanded and regrouped."""
    config = config_from_args(_init_args(outbound_ports_to_ignore="1-65535"))
    groups = [r[r.index("--dports") + 1] for r in plan_rules(config) if "--dports" in r]
    assert groups == ["4190:4191", "1:65535"]


PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: web\r\nX-Mesh-Src: ns/deployment/a/a-1\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"PUT /c HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
)


def _normalise(events: list[tuple[int, object]]) -> list[object]:
    """Events with body pieces joined (how the body is cut up depends on the reads)."""
    out: list[object] = []
    for kind, data in events:
        if kind == BODY and out and isinstance(out[-1], bytes):
            out[-1] += data  # type: ignore[operator]
        elif kind == BODY:
            out.append(data)
        elif kind == HEAD:
            assert isinstance(data, Head)
            out.append((data.method, data.target, data.headers, data.mesh, data.body_mode, data.keep_alive))
        else:
            out.append(kind)
    return out


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=12, unique=True))
def test_reader_gives_the_same_events_however_the_bytes_arrive(cuts: list[int]) -> None:
    whole = http1.RequestReader()
    whole.feed(PIPELINE)
    pieces = http1.RequestReader()
    edges = [0, *sorted(cuts), len(PIPELINE)]
    for start, end in itertools.pairwise(edges):
        pieces.feed(PIPELINE[start:end])
    assert _normalise(list(pieces.events)) == _normalise(list(whole.events))
    bodies = [e for e in _normalise(list(whole.events)) if isinstance(e, bytes)]
    assert bodies == [b"hello world", b"hello world"]
