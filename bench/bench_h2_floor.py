"""HTTP/2 floor: the CPU that h2 alone takes for one proxied stream, with no sockets and no mesh.

A proxied stream crosses two of the proxy's h2 connections: the client's (a request in, a response
out) and the upstream's (the request out, the response in). This runs exactly those calls on the
proxy's own connections (`proxy.h2proxy.new_connection`: its settings, its limits, nghttp2's HPACK
when the library is there) against an in-memory client and app, `--streams` streams in batches
of `--in-flight` (h2load's `-m 10`), and times only the proxy's two connections. No event loop, no
socket, no metrics, no identity, no header rules: what is left is h2's framing, stream states,
flow control and HPACK, the part issue #13 requires from python-hyper's `h2`.

It answers one question: how much of the per-stream CPU budget the chosen protocol core uses
before the proxy does anything. `make bench-proxy`'s targets (10,000 streams a second on one
proxy process, 0.3 ms added at the median) need about 100 us per stream in all.

`--core nghttp2` runs the same flow with the proxy's two connections as nghttp2's own sessions
(libnghttp2 through cffi's ABI mode, bench/nghttp2_session.py): what a compiled HTTP/2 core
would cost the same stream, Python moving header lists and bodies between its two sessions.

Usage (from the repository's root):
python -m bench.bench_h2_floor [--streams 50000] [--in-flight 10] [--core h2|nghttp2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events

from bench import nghttp2_session
from proxy import h2proxy, h2rules, hpack_nghttp2

REQUEST = [  # what h2load sends
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8080"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
RESPONSE = [  # what bench_proxy's nginx answers (`return 200 "ok\n"`)
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Sun, 29 Nov 2026 23:30:00 GMT"),
    (b"content-type", b"application/octet-stream"),
    (b"content-length", b"3"),
]
BODY = b"ok\n"
TARGET_US_PER_STREAM = 100.0  # 10,000 streams a second on one core


def peer(client_side: bool) -> h2.connection.H2Connection:
    """The client or the app: plain h2 with HPACK in C where it can be (their CPU is not timed).
    The app indexes nothing, as nginx does not: every response field comes as a literal."""
    config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    hpack_nghttp2.install(conn)
    if not client_side:
        conn.encoder.header_table_size = 0
    conn.initiate_connection()
    return conn


def connect(a: Any, b: Any) -> None:
    """Exchange prefaces and SETTINGS (and their ACKs) until both sides are quiet."""
    for _ in range(4):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())


def drive(
    client: Any,
    app: Any,
    streams: int,
    in_flight: int,
    requests: Callable[[bytes], bytes],
    responses: Callable[[bytes], bytes],
) -> int:
    """The client's batches of requests through the proxy's part to the app and back; the thread
    CPU time (ns) of the proxy's part only: `requests` (the client's bytes in, the bytes for the
    app out) and `responses` (the app's bytes in, the bytes for the client out)."""
    timed = 0
    done = 0
    while done < streams:
        batch = min(in_flight, streams - done)
        for _ in range(batch):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        wire = client.data_to_send()
        start = time.thread_time_ns()
        wire = requests(wire)
        timed += time.thread_time_ns() - start
        for event in app.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                app.send_headers(event.stream_id, RESPONSE)
                app.send_data(event.stream_id, BODY, end_stream=True)
        wire = app.data_to_send()
        start = time.thread_time_ns()
        wire = responses(wire)
        timed += time.thread_time_ns() - start
        answered = sum(isinstance(e, h2.events.StreamEnded) for e in client.receive_data(wire))
        if answered != batch:
            raise SystemExit(f"bench_h2_floor: {answered} of {batch} streams answered")
        client.data_to_send()  # its WINDOW_UPDATEs: the proxy's window is wide enough not to need them
        done += batch
    return timed


def run(streams: int, in_flight: int, core: str = "h2") -> dict[str, Any]:
    """Time `streams` proxied streams, `in_flight` at a time, on the proxy's connections in `core`."""
    if core == "nghttp2":
        return run_nghttp2(streams, in_flight)
    if core != "h2":
        raise ValueError(f"unknown core {core!r}")
    client, app = peer(True), peer(False)
    inbound, upstream = h2proxy.new_connection(False), h2proxy.new_connection(True)
    for conn in (inbound, upstream):
        conn.initiate_connection()
    connect(client, inbound)
    connect(upstream, app)
    to_upstream: dict[int, int] = {}

    def requests(wire: bytes) -> bytes:
        to_upstream.clear()
        for event in inbound.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                up_id = upstream.get_next_available_stream_id()
                to_upstream[up_id] = event.stream_id
                upstream.send_headers(up_id, event.headers, end_stream=True)
        return upstream.data_to_send()

    def responses(wire: bytes) -> bytes:
        for event in upstream.receive_data(wire):
            if isinstance(event, h2.events.ResponseReceived):
                inbound.send_headers(to_upstream[event.stream_id], event.headers)
            elif isinstance(event, h2.events.DataReceived):
                upstream.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                ended = event.stream_ended is not None
                inbound.send_data(to_upstream[event.stream_id], event.data, end_stream=ended)
        return inbound.data_to_send()

    timed = drive(client, app, streams, in_flight, requests, responses)
    return result(timed, streams, in_flight, "h2", h2proxy.hpack_in_use())


def result(timed_ns: int, streams: int, in_flight: int, core: str, hpack: str) -> dict[str, Any]:
    """The figures both cores report (the keys keep their h2_ names: the floor, whatever the core)."""
    us = timed_ns / 1000 / streams
    return {
        "h2_floor_us_per_stream": round(us, 1),
        "h2_floor_share_of_target": round(us / TARGET_US_PER_STREAM, 3),
        "h2_floor_max_rps_one_core": round(1e6 / us),
        "target_us_per_stream": TARGET_US_PER_STREAM,
        "streams": streams,
        "in_flight": in_flight,
        "hpack": hpack,
        "core": core,
    }


def nghttp2_settings(client_side: bool) -> dict[int, int]:
    """h2proxy._settings as nghttp2's SETTINGS ids."""
    values = {
        nghttp2_session.SETTINGS_MAX_CONCURRENT_STREAMS: h2rules.MAX_CONCURRENT_STREAMS,
        nghttp2_session.SETTINGS_MAX_HEADER_LIST_SIZE: h2rules.MAX_HEADER_LIST_SIZE,
        nghttp2_session.SETTINGS_INITIAL_WINDOW_SIZE: h2rules.STREAM_WINDOW,
    }
    if client_side:
        values[nghttp2_session.SETTINGS_ENABLE_PUSH] = 0
    return values


def run_nghttp2(streams: int, in_flight: int) -> dict[str, Any]:
    """`run`'s flow with the proxy's two connections as nghttp2 sessions, the peers still h2.

    The handlers are the proxy's part, called from nghttp2's callbacks while the bytes are read:
    a request's header list goes out as received on a new upstream stream, the response's comes
    back as received, bodies are passed on chunk by chunk (both ways) and their ends with them."""
    if not nghttp2_session.load():
        raise SystemExit(f"bench_h2_floor: {nghttp2_session.DEFAULT_LIBRARY} is not available")
    client, app = peer(True), peer(False)
    limit = h2rules.MAX_HEADER_LIST_SIZE
    inbound = nghttp2_session.Session(True, nghttp2_settings(False), h2rules.CONNECTION_WINDOW, limit)
    upstream = nghttp2_session.Session(
        False, nghttp2_settings(True), h2rules.UPSTREAM_CONNECTION_WINDOW, limit
    )
    to_upstream: dict[int, int] = {}  # inbound stream: its upstream stream
    to_inbound: dict[int, int] = {}  # upstream stream: its inbound stream

    def request(stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if stream_id in to_upstream:  # trailers: not in this flow (the client sends none)
            raise SystemExit("bench_h2_floor: request trailers are not carried by --core nghttp2")
        up_id = upstream.submit_request(fields, end_stream)
        to_upstream[stream_id] = up_id
        to_inbound[up_id] = stream_id

    def response(up_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        inbound.submit_response(to_inbound[up_id], fields, end_stream)

    def request_closed(stream_id: int, error_code: int) -> None:
        to_upstream.pop(stream_id, None)

    def response_closed(up_id: int, error_code: int) -> None:
        to_inbound.pop(up_id, None)

    inbound.on_headers = request
    inbound.on_data = lambda stream_id, chunk: upstream.push(to_upstream[stream_id], chunk)
    inbound.on_end = lambda stream_id: upstream.push(to_upstream[stream_id], b"", end=True)
    inbound.on_close = request_closed
    upstream.on_headers = response
    upstream.on_data = lambda up_id, chunk: inbound.push(to_inbound[up_id], chunk)
    upstream.on_end = lambda up_id: inbound.push(to_inbound[up_id], b"", end=True)
    upstream.on_close = response_closed
    connect(client, inbound)
    connect(upstream, app)

    def requests(wire: bytes) -> bytes:
        inbound.receive_data(wire)
        return upstream.data_to_send()

    def responses(wire: bytes) -> bytes:
        upstream.receive_data(wire)
        return inbound.data_to_send()

    timed = drive(client, app, streams, in_flight, requests, responses)
    return result(timed, streams, in_flight, "nghttp2", f"nghttp2-{hpack_nghttp2.load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50_000, help="proxied streams timed")
    parser.add_argument("--in-flight", type=int, default=10, help="streams per batch (h2load -m)")
    parser.add_argument("--rounds", type=int, default=5, help="runs (the fastest is reported)")
    parser.add_argument(
        "--core",
        choices=("h2", "nghttp2"),
        default="h2",
        help="the proxy's connections: h2, or nghttp2 sessions",
    )
    args = parser.parse_args()
    results = [run(args.streams, args.in_flight, args.core) for _ in range(args.rounds)]
    best = min(results, key=lambda r: r["h2_floor_us_per_stream"])
    best["h2_floor_us_per_stream_rounds"] = [r["h2_floor_us_per_stream"] for r in results]
    print(json.dumps(best))


if __name__ == "__main__":
    main()
