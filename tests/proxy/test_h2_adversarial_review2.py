"""HTTP/2 attacks on today's changes (a GOAWAY received no longer closes the connection, the
data-dribble budget, `h2_open_streams`), each with an oracle on the other side: each client's
own response, what the backend saw, `/metrics`. Every loop is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import h2.events
import pytest
from hyperframe.frame import GoAwayFrame

from proxy import h2rules
from tests.proxy import test_h2_adversarial_streams as streams
from tests.proxy.h2_backend import Seen
from tests.proxy.test_proxy_h2_deadlines import Client
from tests.support.h2wire import parse_frames
from tests.support.proxy_process import ProxyProcess


class GoawayBackend(streams.Backend):
    """streams.Backend and `/hold-goaway`: 200, then a graceful GOAWAY naming this stream, then
    nothing (a long stream the connection's age ended: grpc-go's MaxConnectionAge with its
    default grace, infinite, lets a watch stream run on); `/ok-goaway`: 200 b"ok", then a
    GOAWAY naming it, the connection left open (its close is the proxy's to make)."""

    ended = 0  # connections the proxy closed (or lost)

    def _serve(self, sock: Any) -> None:
        super()._serve(sock)
        with self.lock:
            self.ended += 1

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Seen], ticks: list[Any]) -> None:
        path = dict(event.headers).get(":path") if isinstance(event, h2.events.RequestReceived) else None
        if path == "/ok-goaway":
            seen[event.stream_id] = Seen("/ok-goaway", dict(event.headers))
            conn.send_headers(event.stream_id, [(":status", "200")])
            conn.send_data(event.stream_id, b"ok", end_stream=True)
            conn._data_to_send += GoAwayFrame(0, last_stream_id=event.stream_id, error_code=0).serialize()
            return
        if path == "/hold-goaway":
            sid = event.stream_id
            stream = Seen("/hold-goaway", dict(event.headers))
            with self.lock:
                self.streams.append(stream)
            seen[sid] = stream
            conn.send_headers(sid, [(":status", "200")])
            conn._data_to_send += GoAwayFrame(0, last_stream_id=sid, error_code=0).serialize()
            return
        super()._on_event(conn, event, seen, ticks)


@pytest.fixture
def backend() -> Iterator[GoawayBackend]:
    server = GoawayBackend(refusals=1)
    yield server
    server.stop()


proxy = streams.proxy  # the same proxy in front of this module's `backend`


def test_upstream_connections_draining_after_a_goaway_do_not_take_the_destinations_slots(
    backend: GoawayBackend, proxy: ProxyProcess
) -> None:
    """A backend that ages its connections out (GOAWAY naming the streams it took, which run
    on) leaves each upstream connection draining, held by its long stream. Those take no new
    stream; they must not count against UPSTREAMS_PER_DESTINATION either, or once 8 of them
    drain every new request to the backend is the proxy's own 503, though the backend takes
    new connections."""
    client = Client(proxy.inbound)
    try:
        held = []
        for _ in range(h2rules.UPSTREAMS_PER_DESTINATION):
            sid = client.request("/hold-goaway")
            client.run(3, until=lambda sid=sid: client.got[sid].status)
            assert client.got[sid].status == 200
            held.append(sid)
            time.sleep(0.1)  # the GOAWAY, sent with the head, was read by the proxy
        assert backend.connections == h2rules.UPSTREAMS_PER_DESTINATION
        after = client.request("/ok")
        client.run(5, until=lambda: client.got[after].ended_at)
        assert (client.got[after].status, client.got[after].body) == (200, b"ok")
        assert backend.connections == h2rules.UPSTREAMS_PER_DESTINATION + 1
        proxy.assert_h2_open_streams(inbound_src=len(held), inbound_dst=len(held))
    finally:
        client.close()
    proxy.assert_h2_open_streams()


def test_a_client_past_the_goaways_honoured_has_its_streams_ended_at_once(
    backend: GoawayBackend, proxy: ProxyProcess
) -> None:
    """Past GOAWAYS_HONOURED lowering GOAWAYs, h2's own rule closes the client's connection: the
    proxy can send it nothing more. Its streams under way must end then (counted, out of
    `h2_open_streams`, the backend's cancelled), not wait in the proxy, answer-less, for the
    idle timeout (300 s) while the client sits silent."""
    client = Client(proxy.inbound)
    try:
        tick = client.request("/tick")
        client.run(1, until=lambda: client.got[tick].status)
        proxy.assert_h2_open_streams(inbound_src=1, inbound_dst=1)
        last = 2**31 - 1
        for _ in range(h2rules.GOAWAYS_HONOURED + 1):
            client.sock.sendall(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())
            last -= 2
        proxy.assert_h2_open_streams(seconds=2)
        client.run(2)
        assert client.closed
    finally:
        client.close()
    assert proxy.value("response_total", error="client_gone") == 1


class _Recording:
    """A socket whose received bytes are kept (`raw`), under a Client that parses them too."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.raw = b""

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.raw += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_clients_goaway_is_answered_by_the_proxys_naming_the_last_stream_it_took(
    backend: GoawayBackend, proxy: ProxyProcess
) -> None:
    """A client said GOAWAY and its download ran on; it opened one more stream meanwhile (its
    GOAWAY stops the proxy's streams, not its own). When the last ends the proxy closes the
    connection: RFC 9113 §6.8, "endpoints SHOULD always send a GOAWAY frame before closing a
    connection so that the remote peer can know whether a stream has been partially processed":
    the client must learn the last stream the proxy took, or a request crossing the close is lost
    without a word (neither answered nor refused)."""
    client = Client(proxy.inbound)
    recording = _Recording(client.sock)
    client.sock = recording
    try:
        tick = client.request("/tick")
        client.run(1, until=lambda: client.got[tick].status)
        client.sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
        more = client.request("/ok")
        client.run(10, until=lambda: client.got[tick].ended_at and client.got[more].ended_at)
        assert (client.got[more].status, client.got[more].body) == (200, b"ok")
        assert client.got[tick].reset is None and len(client.got[tick].body) > 0
        client.run(3)
        assert client.closed
        frames = parse_frames(recording.raw)
        goaways = [(f.error_code, f.last_stream_id) for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways == [(0, more)]
    finally:
        client.close()
    proxy.assert_h2_open_streams()


def test_an_idle_upstream_connection_that_sent_goaway_is_closed(
    backend: GoawayBackend, proxy: ProxyProcess
) -> None:
    """A backend's GOAWAY on a connection with no stream left (nginx's and Go's on their idle
    timeout or keepalive_requests, before they close): the proxy must close it, having nothing
    to finish on it and no new stream to put there; a connection no stream ends would stay open
    (a socket and two greenlets) until the backend closed it, if ever."""
    client = Client(proxy.inbound)
    try:
        sid = client.request("/ok-goaway")
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert (client.got[sid].status, client.got[sid].body) == (200, b"ok")
        assert streams._wait(lambda: backend.ended == 1, 5), "the proxy kept the connection open"
        again = client.request("/ok")
        client.run(5, until=lambda: client.got[again].ended_at)
        assert (client.got[again].status, backend.connections) == (200, 2)
    finally:
        client.close()
    proxy.assert_h2_open_streams()
