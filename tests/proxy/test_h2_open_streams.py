"""`h2_open_streams{direction, peer}`: the HTTP/2 streams open now, through one real proxy.

The gauge is the direct oracle of "no stream leaked": while N streams are held open (a backend
that stalls) it reads exactly N on each side (`peer="src"`: the clients' connections, `"dst"`:
the upstream's), and it is 0 again however they end: both ends, a reset from either side, a
connection lost on either side, GOAWAY either way, a deadline, the proxy's own answer, a burst.
Each test also keeps an indirect oracle (what the client got, what the backend saw). Every
wait is bounded (`ProxyProcess.assert_h2_open_streams` polls for at most 10 s).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from proxy import h2rules
from tests.proxy import test_h2_adversarial_streams as streams
from tests.proxy.h2_backend import TICKS
from tests.proxy.test_h2_adversarial_streams import Backend
from tests.proxy.test_proxy_adversarial import Relay
from tests.proxy.test_proxy_h2_deadlines import DEADLINES, Client
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

# The scripted h2 backend (its first `/refuse` refused) and a proxy in front of it.
backend, proxy = streams.backend, streams.proxy


def _reset(client: Client, sids: list[int], code: ErrorCodes = ErrorCodes.CANCEL) -> None:
    for sid in sids:
        client.conn.reset_stream(sid, code)
    client.sock.sendall(client.conn.data_to_send())


def _all_ended(client: Client, sids: list[int]) -> bool:
    return all(client.got[sid].ended_at for sid in sids)


def _backend_saw(backend: Backend, count: int) -> bool:
    with backend.lock:
        return len(backend.streams) >= count


def test_h2load_and_a_clients_streams_of_every_kind_leave_none_open(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Normal traffic: 400 h2load requests over 4 connections, then a GET, a 1xx, an upload."""
    out = subprocess.run(
        ["h2load", "-n", "400", "-c", "4", "-m", "20", proxy.url("/ok")],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout  # fmt: skip
    assert "requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed" in out, out
    client = Client(proxy.inbound)
    try:
        sids = [client.request("/ok"), client.request("/early-hints"), client.request("/sink", end=False)]
        client.send(sids[-1], b"u" * 1000)
        client.run(5, until=lambda: _all_ended(client, sids))
        assert [client.got[sid].status for sid in sids] == [200, 200, 200]
        assert client.got[sids[-1]].body == b"1 frames, 1000 bytes"
        proxy.assert_h2_open_streams()
    finally:
        client.close()
    assert proxy.value("response_total", status_code="200") == 403


def test_streams_held_open_read_exactly_n_on_each_side_and_client_resets_take_each_out(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Eight streams held by the backend on two connections (no head; a head and one DATA; an
    upload it never reads): 8 on each side. Two reset: 6. The rest reset, one of them with the
    response under way: 0, and the backend saw CANCEL on each."""
    one, two = Client(proxy.inbound), Client(proxy.inbound)
    try:
        heads = [one.request("/stall-head") for _ in range(4)]
        bodies = [two.request("/stall-body") for _ in range(3)]
        upload = two.request("/noread", end=False)
        two.run(5, until=lambda: all(two.got[sid].body == b"first" for sid in bodies))
        assert streams._wait(lambda: _backend_saw(backend, 8), 5)
        proxy.assert_h2_open_streams(inbound_src=8, inbound_dst=8)
        _reset(one, heads[:2])
        proxy.assert_h2_open_streams(inbound_src=6, inbound_dst=6)
        _reset(one, heads[2:])
        _reset(two, [*bodies, upload])
        proxy.assert_h2_open_streams()
        assert streams._wait(lambda: all(s.reset == ErrorCodes.CANCEL for s in backend.streams), 5)
    finally:
        one.close()
        two.close()


def test_upstream_resets_and_malformed_responses_leave_none_open(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """The backend refuses a stream (REFUSED_STREAM), answers whole then stops an upload
    (RST_STREAM NO_ERROR), or sends what the proxy resets (a short body, a connection field)."""
    client = Client(proxy.inbound)
    try:
        refused, retried = client.request("/refuse"), client.request("/refuse")
        early = client.request("/early", end=False)
        bad = [client.request(path) for path in ("/badlen", "/connection-field", "/many-trailers")]
        sids = [refused, retried, early, *bad]
        client.run(10, until=lambda: _all_ended(client, sids))
        assert client.got[refused].reset == ErrorCodes.REFUSED_STREAM
        assert (client.got[retried].status, client.got[retried].body) == (200, b"ok")
        assert (client.got[early].status, client.got[early].reset) == (200, ErrorCodes.NO_ERROR)
        assert all(client.got[sid].reset is not None or client.got[sid].status == 502 for sid in bad)
        proxy.assert_h2_open_streams()
    finally:
        client.close()
    assert proxy.value("response_total", error="bad_response") == 3


def test_a_client_connection_dropped_mid_stream_takes_every_stream_out(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """Heads awaited, bodies under way, an upload half sent: the client's socket closes."""
    client = Client(proxy.inbound)
    try:
        sids = [client.request("/stall-head") for _ in range(3)]
        sids += [client.request("/stall-body") for _ in range(2)]
        upload = client.request("/noread", end=False)
        client.conn.send_data(upload, b"half")
        client.sock.sendall(client.conn.data_to_send())
        assert streams._wait(lambda: _backend_saw(backend, 6), 5)
        proxy.assert_h2_open_streams(inbound_src=6, inbound_dst=6)
    finally:
        client.close()
    proxy.assert_h2_open_streams()
    assert streams._wait(lambda: all(s.reset == ErrorCodes.CANCEL for s in backend.streams), 5)
    assert proxy.value("response_total", error="client_gone") == 6


@pytest.fixture
def relayed(backend: Backend, tmp_path: Path) -> Iterator[tuple[Relay, ProxyProcess]]:
    """The proxy reaches the backend through a TCP relay, which a test cuts (both its sockets)."""
    relay = Relay(backend.port, limit=100)
    p = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{relay.port}", identity=SERVER_ID)
    yield relay, p
    p.stop()
    relay.stop()


def test_an_upstream_connection_dropped_mid_stream_takes_every_stream_out(
    backend: Backend, relayed: tuple[Relay, ProxyProcess]
) -> None:
    """The upstream connection is cut under three awaited heads and two bodies under way: each
    client stream is answered (502, or INTERNAL_ERROR once its head went), none left open; a
    stream opened while the upstream refuses connections is answered 502 and never counted dst."""
    relay, proxy = relayed
    client = Client(proxy.inbound)
    try:
        heads = [client.request("/stall-head") for _ in range(3)]
        bodies = [client.request("/stall-body") for _ in range(2)]
        client.run(5, until=lambda: all(client.got[sid].body == b"first" for sid in bodies))
        proxy.assert_h2_open_streams(inbound_src=5, inbound_dst=5)
        relay.stop()
        client.run(5, until=lambda: _all_ended(client, heads + bodies))
        assert [client.got[sid].status for sid in heads] == [502] * 3
        assert [client.got[sid].reset for sid in bodies] == [ErrorCodes.INTERNAL_ERROR] * 2
        proxy.assert_h2_open_streams()
        after = client.request("/ok")
        client.run(5, until=lambda: client.got[after].ended_at)
        assert client.got[after].status == 502
        proxy.assert_h2_open_streams()
    finally:
        client.close()
    assert proxy.value("response_total", error="reset") == 5
    assert proxy.value("response_total", error="connect_refused") == 1


def test_a_backends_goaway_refuses_the_streams_it_did_not_take_and_leaves_none_open(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """The backend's GOAWAY leaves a stream it took running (1 each side) and the one it did not
    refused; the next goes on a new connection."""
    client = Client(proxy.inbound)
    try:
        held = client.request("/stall-head")
        assert streams._wait(lambda: _backend_saw(backend, 1), 5)
        gone = client.request("/goaway")
        client.run(5, until=lambda: client.got[gone].ended_at)
        assert client.got[gone].reset == ErrorCodes.REFUSED_STREAM
        proxy.assert_h2_open_streams(inbound_src=1, inbound_dst=1)
        ok = client.request("/ok")
        client.run(5, until=lambda: client.got[ok].ended_at)
        assert client.got[ok].status == 200 and backend.connections == 2
        proxy.assert_h2_open_streams(inbound_src=1, inbound_dst=1)
        _reset(client, [held])
        proxy.assert_h2_open_streams()
    finally:
        client.close()


def test_a_backends_graceful_goaway_lets_the_stream_it_took_finish_whole(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """RFC 9113 §6.8: a GOAWAY naming a stream lets it finish. h2 closed its side on any GOAWAY,
    and the stream was cut (the backend's next DATA was a protocol error on a closed connection);
    now its 10-byte body arrives whole, a request after the GOAWAY goes on a new connection, and
    no stream is left open."""
    client = Client(proxy.inbound)
    try:
        taken = client.request("/tick-goaway")
        client.run(2, until=lambda: client.got[taken].status)
        assert client.got[taken].status == 200
        time.sleep(0.3)  # the GOAWAY, sent with the head, reached the proxy
        after = client.request("/ok")
        client.run(8, until=lambda: _all_ended(client, [taken, after]))
        assert (client.got[taken].body, client.got[taken].reset) == (b"t" * TICKS, None)
        assert (client.got[after].status, client.got[after].body) == (200, b"ok")
        assert backend.connections == 2
        assert [s.reset for s in backend.by_path("/tick-goaway")] == [None]
        proxy.assert_h2_open_streams()
    finally:
        client.close()
    assert proxy.value("response_total", error="reset") == 0


def test_a_clients_goaway_lets_its_downloads_under_way_finish_whole(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """A client that says GOAWAY (last stream 0, as some SDKs do once a response's head came)
    while two downloads run gets both whole (RFC 9113 §6.8; h2 closed its side on any GOAWAY
    received, and the proxy cut them as `client_gone`), the backend saw neither reset, and the
    proxy ends the connection once they have: none left open."""
    leaving = Client(proxy.inbound)
    try:
        ticks = [leaving.request("/tick"), leaving.request("/tick")]
        leaving.run(1, until=lambda: False)
        proxy.assert_h2_open_streams(inbound_src=2, inbound_dst=2)
        # Raw, past h2's own state: a client that said GOAWAY still reads its streams' frames.
        leaving.sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
        leaving.run(10, until=lambda: _all_ended(leaving, ticks))
        whole = [(leaving.got[sid].body, leaving.got[sid].reset) for sid in ticks]
        assert whole == [(b"t" * TICKS, None)] * 2
        leaving.run(5)  # the proxy closes the connection, its streams done
        assert leaving.closed
        proxy.assert_h2_open_streams()
        assert [s.reset for s in backend.by_path("/tick")] == [None, None]
    finally:
        leaving.close()
    assert proxy.value("response_total", error="client_gone") == 0


@pytest.fixture
def deadline_proxy(backend: Backend, tmp_path: Path) -> Iterator[ProxyProcess]:
    """--response-timeout 1, --idle-timeout 2 (test_proxy_h2_deadlines.py's)."""
    p = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", *DEADLINES, identity=SERVER_ID
    )
    yield p
    p.stop()


def test_streams_cut_at_their_deadlines_leave_none_open(
    backend: Backend, deadline_proxy: ProxyProcess
) -> None:
    """A head that never comes (504 at 1 s), an upload that never moves and a body that stalls
    after its first DATA (both reset at 2 s): 3 on each side, then 0."""
    proxy = deadline_proxy
    client = Client(proxy.inbound)
    try:
        head, upload = client.request("/stall-head"), client.request("/noread", end=False)
        body = client.request("/stall-body")
        proxy.assert_h2_open_streams(inbound_src=3, inbound_dst=3, seconds=0.8)
        client.run(6, until=lambda: _all_ended(client, [head, upload, body]))
        assert client.got[head].status == 504
        assert [client.got[sid].reset for sid in (upload, body)] == [ErrorCodes.INTERNAL_ERROR] * 2
        proxy.assert_h2_open_streams()
    finally:
        client.close()
    assert proxy.value("response_total", error="timeout") == 2
    assert proxy.value("response_total", error="client_timeout") == 1


def test_the_proxys_own_answers_leave_none_open(backend: Backend, proxy: ProxyProcess) -> None:
    """Streams the proxy answers itself: a head of 150 fields (431, never sent upstream: counted
    src only, and out again), trailers of 150 fields after the stream went upstream (431, the
    upstream's stream cancelled)."""
    client = Client(proxy.inbound)
    many = [(b"x-f%d" % i, b"v") for i in range(150)]
    try:
        head = client.request("/ok", extra=many)
        trailed = client.request("/sink", end=False)
        client.conn.send_data(trailed, b"body")
        client.sock.sendall(client.conn.data_to_send())
        assert streams._wait(lambda: backend.by_path("/sink") and backend.by_path("/sink")[0].body == 4, 5)
        proxy.assert_h2_open_streams(inbound_src=1, inbound_dst=1)
        client.conn.send_headers(trailed, many, end_stream=True)
        client.sock.sendall(client.conn.data_to_send())
        client.run(5, until=lambda: _all_ended(client, [head, trailed]))
        assert [client.got[sid].status for sid in (head, trailed)] == [431, 431]
        proxy.assert_h2_open_streams()
        assert streams._wait(lambda: backend.by_path("/sink")[0].reset == ErrorCodes.CANCEL, 5)
    finally:
        client.close()
    assert proxy.value("response_total", status_code="431") == 2


def test_a_burst_of_100_streams_then_the_connection_killed_and_a_rapid_reset_leave_none_open(
    backend: Backend, proxy: ProxyProcess
) -> None:
    """The most one connection may open (100): 50 heads awaited and 50 downloads the client never
    reads, exactly 100 each side; the connection killed: 0. Then 150 streams opened and reset at
    once (CVE-2023-44487): the connection ends `rapid_reset`, and 0 again."""
    attacker = Client(proxy.inbound)
    try:
        for path in ("/stall-head", "/big"):
            for _ in range(h2rules.MAX_CONCURRENT_STREAMS // 2):
                attacker.request(path)
        proxy.assert_h2_open_streams(inbound_src=100, inbound_dst=100)
    finally:
        attacker.close()
    proxy.assert_h2_open_streams()
    rapid = Client(proxy.inbound)
    try:
        for _ in range(150):
            sid = rapid.conn.get_next_available_stream_id()
            rapid.conn.send_headers(
                sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/stall-head"),
                      (b":authority", b"web")], end_stream=True,
            )  # fmt: skip
            rapid.conn.reset_stream(sid, ErrorCodes.CANCEL)
        rapid.sock.sendall(rapid.conn.data_to_send())
        proxy.assert_h2_open_streams()
        assert proxy.value("h2_connection_errors_total", error="rapid_reset") == 1
    finally:
        rapid.close()
    proxy.assert_h2_open_streams()
