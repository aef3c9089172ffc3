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

Usage (from the repository's root): python -m bench.bench_h2_floor [--streams 50000] [--in-flight 10]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from proxy import h2proxy, hpack_nghttp2

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


def run(streams: int, in_flight: int) -> dict[str, Any]:
    client, app = peer(True), peer(False)
    inbound, upstream = h2proxy.new_connection(False), h2proxy.new_connection(True)
    for conn in (inbound, upstream):
        conn.initiate_connection()
    connect(client, inbound)
    connect(upstream, app)
    timed = 0
    done = 0
    while done < streams:
        batch = min(in_flight, streams - done)
        for _ in range(batch):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        wire = client.data_to_send()

        start = time.thread_time_ns()  # the proxy: requests in, on to the app
        to_upstream: dict[int, int] = {}
        for event in inbound.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                up_id = upstream.get_next_available_stream_id()
                to_upstream[up_id] = event.stream_id
                upstream.send_headers(up_id, event.headers, end_stream=True)
        wire = upstream.data_to_send()
        timed += time.thread_time_ns() - start

        for event in app.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                app.send_headers(event.stream_id, RESPONSE)
                app.send_data(event.stream_id, BODY, end_stream=True)
        wire = app.data_to_send()

        start = time.thread_time_ns()  # the proxy: responses in, back to the client
        for event in upstream.receive_data(wire):
            if isinstance(event, h2.events.ResponseReceived):
                inbound.send_headers(to_upstream[event.stream_id], event.headers)
            elif isinstance(event, h2.events.DataReceived):
                upstream.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                ended = event.stream_ended is not None
                inbound.send_data(to_upstream[event.stream_id], event.data, end_stream=ended)
        wire = inbound.data_to_send()
        timed += time.thread_time_ns() - start

        answered = sum(isinstance(e, h2.events.StreamEnded) for e in client.receive_data(wire))
        if answered != batch:
            raise SystemExit(f"bench_h2_floor: {answered} of {batch} streams answered")
        client.data_to_send()  # its WINDOW_UPDATEs: the proxy's window is wide enough not to need them
        done += batch
    us = timed / 1000 / streams
    return {
        "h2_floor_us_per_stream": round(us, 1),
        "h2_floor_share_of_target": round(us / TARGET_US_PER_STREAM, 3),
        "h2_floor_max_rps_one_core": round(1e6 / us),
        "target_us_per_stream": TARGET_US_PER_STREAM,
        "streams": streams,
        "in_flight": in_flight,
        "hpack": h2proxy.hpack_in_use(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50_000, help="proxied streams timed")
    parser.add_argument("--in-flight", type=int, default=10, help="streams per batch (h2load -m)")
    parser.add_argument("--rounds", type=int, default=5, help="runs (the fastest is reported)")
    args = parser.parse_args()
    results = [run(args.streams, args.in_flight) for _ in range(args.rounds)]
    best = min(results, key=lambda r: r["h2_floor_us_per_stream"])
    best["h2_floor_us_per_stream_rounds"] = [r["h2_floor_us_per_stream"] for r in results]
    print(json.dumps(best))


if __name__ == "__main__":
    main()
