"""HTTP/2 attacks on the mesh's identity fields: x-mesh-* smuggled past the proxy that strips them.

Oracles: the header lists the backend received (never an x-mesh-* field the client wrote), and
the response each client got (never an x-mesh-* field the app wrote).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from proxy import http1
from tests.proxy.h2_backend import TICKS, H2Backend, Seen
from tests.proxy.test_proxy_h2_deadlines import Client, Got
from tests.support.h2wire import bytes_until_closed, parse_frames
from tests.support.proxy_process import SERVER_ID, ProxyProcess, start_proxy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FORGED = b"evil/deployment/forged/forged-1"
_SERVER = h2.config.H2Configuration(client_side=False, header_encoding=None)


class H2cUpgradeBackend:
    """An HTTP/1.1 server that switches to h2c when the Upgrade list offers it anywhere (as Go's
    `x/net/http2/h2c`) and an HTTP2-Settings field came, whatever `Connection` lists (more lenient
    than Go); it records every request's fields (HTTP/1.1 or HTTP/2) it got."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict[bytes, bytes]] = []
        self.upgraded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        with sock:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            self.requests.append(fields)
            offers = [t.strip().lower() for t in fields.get(b"upgrade", b"").split(b",")]
            if b"h2c" not in offers or b"http2-settings" not in fields:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
                return
            self.upgraded += 1
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
            conn.initiate_upgrade_connection(fields[b"http2-settings"])
            conn.send_headers(1, [(b":status", b"200")])
            conn.send_data(1, b"upgraded", end_stream=True)
            sock.sendall(conn.data_to_send())
            self._h2(sock, conn, rest)

    def _h2(self, sock: socket.socket, conn: h2.connection.H2Connection, data: bytes) -> None:
        while True:
            for event in conn.receive_data(data) if data else []:
                if isinstance(event, h2.events.RequestReceived):
                    self.requests.append(dict(event.headers))
                    conn.send_headers(event.stream_id, [(b":status", b"200")])
                    conn.send_data(event.stream_id, b"h2", end_stream=True)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return


@pytest.fixture
def upgrader() -> Iterator[H2cUpgradeBackend]:
    server = H2cUpgradeBackend()
    yield server
    server.stop()


@pytest.mark.parametrize("offer", [b"h2c", b"websocket, h2c", b"H2C ,foo", b"foo, h2c/1"])
def test_an_h2c_upgrade_offered_in_a_list_is_declined_so_no_stream_passes_unparsed(
    offer: bytes, upgrader: H2cUpgradeBackend, tmp_path: Path
) -> None:
    """A server may pick any protocol of the Upgrade list (Go's h2c does, if h2c is among them).
    Switched, the connection is relayed as opaque bytes: the client's later HTTP/2 streams reach
    the app with whatever x-mesh-* fields it wrote. The proxy declines h2c wherever it is offered.
    (HTTP2-Settings is not named in `Connection`, so the proxy forwards it as any field.)"""
    proxy = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{upgrader.port}", identity=SERVER_ID)
    try:
        settings = base64.urlsafe_b64encode(SettingsFrame(0).serialize_body()).rstrip(b"=")
        request = (
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\n"
            b"Upgrade: %b\r\nHTTP2-Settings: %b\r\nx-mesh-src: %b\r\n\r\n" % (offer, settings, FORGED)
        )
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_upgrade_connection()
        conn.send_headers(
            3,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/after"), (b":authority", b"web"),
             (b"x-mesh-src", FORGED)],
            end_stream=True,
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as sock:
            sock.sendall(request)
            first = sock.recv(65536)
            if first.startswith(b"HTTP/1.1 101"):  # switched: the client goes on in HTTP/2
                sock.sendall(conn.data_to_send())
                sock.settimeout(1)
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        assert first.startswith(b"HTTP/1.1 200"), first[:100]  # the request was served, as HTTP/1.1
        assert upgrader.upgraded == 0
        for fields in upgrader.requests:  # no request reached the app with a mesh field
            assert not [n for n in fields if n.lower().startswith(b"x-mesh-")], fields
            assert b"upgrade" not in fields
    finally:
        proxy.stop()


def test_offers_h2c_reads_every_token_of_the_list() -> None:
    assert http1.offers_h2c(b"h2c") and http1.offers_h2c(b"websocket, H2C") and http1.offers_h2c(b"h2c/1.0")
    assert (
        not http1.offers_h2c(b"websocket") and not http1.offers_h2c(b"h2") and not http1.offers_h2c(b"xh2c")
    )


class RecordingBackend(H2Backend):
    """H2Backend that keeps every request's header list and trailers as they came (duplicates and
    all), and answers `/forge` with x-mesh-dst in a 103, in its head and as its only trailers;
    `/status` with the request's `x-status` as its trailers' grpc-status."""

    def __init__(self) -> None:
        self.fields: list[list[tuple[str, str]]] = []  # header lists and trailer lists, in order
        super().__init__()

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Seen], ticks: list[Any]) -> None:
        super()._on_event(conn, event, seen, ticks)
        if isinstance(event, (h2.events.RequestReceived, h2.events.TrailersReceived)):
            with self.lock:
                self.fields.append(list(event.headers))
        if isinstance(event, h2.events.RequestReceived) and dict(event.headers).get(":path") == "/forge":
            sid, forged = event.stream_id, ("x-mesh-dst", FORGED.decode())
            conn.send_headers(sid, [(":status", "103"), forged])
            conn.send_headers(sid, [(":status", "200"), forged, ("x-mesh-src", FORGED.decode())])
            conn.send_data(sid, b"forged")
            conn.send_headers(sid, [forged, ("x-mesh-via", "abc")], end_stream=True)  # nothing else
        elif isinstance(event, h2.events.RequestReceived) and dict(event.headers).get(":path") == "/status":
            sid = event.stream_id
            conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            conn.send_data(sid, b"\x00\x00\x00\x00\x00")
            conn.send_headers(sid, [("grpc-status", dict(event.headers)["x-status"])], end_stream=True)


@pytest.fixture
def recorder() -> Iterator[RecordingBackend]:
    server = RecordingBackend()
    yield server
    server.stop()


@pytest.fixture
def proxy(recorder: RecordingBackend, tmp_path: Path) -> Iterator[ProxyProcess]:
    p = start_proxy(tmp_path, "--inbound-forward", f"127.0.0.1:{recorder.port}", identity=SERVER_ID)
    yield p
    p.stop()


def _mesh(fields: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    return [
        (n, v) for n, v in fields if (n if isinstance(n, str) else n.decode()).lower().startswith("x-mesh-")
    ]


def _ticking(port: int) -> tuple[Client, int]:
    """A bystander on its own connection whose stream shares the proxy's upstream connection."""
    bystander = Client(port)
    return bystander, bystander.request("/tick")


def _assert_ticked(bystander: Client, sid: int) -> None:
    bystander.run(10, until=lambda: bystander.got[sid].ended_at)
    got = bystander.got[sid]
    assert (got.status, got.body, got.reset) == (200, b"t" * TICKS, None)
    bystander.close()


def test_mesh_fields_never_reach_the_app_duplicated_in_a_continuation_or_as_the_only_trailers(
    recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    """Trailers of nothing but mesh fields are nothing once stripped: the stream just ends. (An
    empty trailer section raised in h2 and ended the upstream connection other clients share.)"""
    forged = [
        (b"x-mesh-src", FORGED),
        (b"x-mesh-src", FORGED + b"2"),
        (b"x-mesh-via", b"abc"),
        (b"x-mesh-dst", FORGED),
    ]
    bystander, tick = _ticking(proxy.inbound)
    client = Client(proxy.inbound)
    try:
        # Behind 20 KiB of fields, so that the forged ones come in a CONTINUATION frame.
        sid = client.request("/ok", end=False, extra=[(b"x-pad", b"p" * 20000), *forged])
        client.conn.send_data(sid, b"body")
        client.conn.send_headers(sid, forged, end_stream=True)  # and again as the trailers
        client.sock.sendall(client.conn.data_to_send())
        client.run(5, until=lambda: client.got[sid].ended_at)
        assert (client.got[sid].status, client.got[sid].body) == (200, b"ok")
        _assert_ticked(bystander, tick)
    finally:
        client.close()
    heads = [f for f in recorder.fields if dict(f).get(":path") == "/ok"]
    assert len(heads) == 1 and dict(heads[0])["x-pad"] == "p" * 20000
    assert [_mesh(f) for f in recorder.fields] == [[]] * len(recorder.fields)
    assert len(recorder.fields) == 2  # the two heads: the forged trailers were no trailers
    ok = recorder.by_path("/ok")[0]
    assert (ok.body, ok.ended) == (4, True)


def test_mesh_fields_from_the_app_never_reach_the_client_in_a_1xx_a_head_or_the_only_trailers(
    recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    bystander, tick = _ticking(proxy.inbound)
    client = Client(proxy.inbound)
    try:
        sid = client.request("/forge")
        client.run(5, until=lambda: client.got[sid].ended_at)
        got = client.got[sid]
        assert (got.status, got.body, got.reset) == (200, b"forged", None)
        assert [dict(i)[b":status"] for i in got.informational] == [b"103"]
        assert [_mesh(list(i.items())) for i in got.informational] == [[]]
        assert _mesh(list(got.headers.items())) == []  # an unmeshed client learns nothing either
        _assert_ticked(bystander, tick)
    finally:
        client.close()


def test_mesh_fields_in_mixed_case_end_the_connection_before_the_app(
    recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    """HTTP/2 field names are lowercase (RFC 9113 §8.2.1): `X-Mesh-Src` is malformed and refused;
    it is never taken for another field and passed on."""
    block = hpack.Encoder().encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok"), (b":authority", b"web"),
         (b"X-Mesh-Src", FORGED)]
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as sock:
        sock.sendall(
            PREFACE
            + SettingsFrame(0).serialize()
            + HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        frames = parse_frames(bytes_until_closed(sock, 3))
    assert not [f for f in frames if isinstance(f, HeadersFrame)]  # no response: no request
    assert [f.error_code for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))] == [0x1]
    assert recorder.fields == []


def test_labels_an_h2_client_and_app_choose_stay_bounded(
    recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    """60 streams, each with its own 20 KB :authority and a grpc-status no code has (a word, 20
    digits, a negative): each client gets its response; /metrics counts them all as
    grpc_status "other" and folds each authority to at most 253 bytes, still distinct."""
    statuses = [b"abc%d" % i for i in range(20)] + [b"9" * 19 + b"%d" % (i % 10) for i in range(20)]
    statuses += [b"-%d" % i for i in range(20)]
    client = Client(proxy.inbound)
    try:
        sids = {}
        for i, status in enumerate(statuses):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/status"),
                (b":authority", b"%05d" % i + b"a" * 20000), (b"content-type", b"application/grpc"),
                (b"x-status", status),
            ], end_stream=True)  # fmt: skip
            client.sock.sendall(client.conn.data_to_send())
            client.got[sid] = Got()
            sids[sid] = status
        client.run(10, until=lambda: all(client.got[s].ended_at for s in sids))
        assert all(client.got[s].status == 200 for s in sids)
    finally:
        client.close()
    samples = proxy.samples("response_total")
    assert {s.labels.get("grpc_status") for s in samples} == {"other"}
    assert sum(s.value for s in samples if s.labels.get("grpc_status") == "other") == len(statuses)
    authorities = {s.labels["authority"] for s in samples}
    assert len(authorities) == len(statuses)  # folded, distinct values stay distinct
    assert max(len(a.encode()) for a in authorities) <= 253
    assert len(proxy.exposition().encode()) < 1_000_000


@pytest.mark.parametrize(
    "field",
    [(b"connection", b"close"), (b"keep-alive", b"5"), (b"transfer-encoding", b"chunked"),
     (b"upgrade", b"h2c"), (b"proxy-connection", b"close"), (b"te", b"gzip"), (b"content-length", b"10")],
    ids=lambda f: f[0].decode(),
)  # fmt: skip
def test_connection_specific_fields_and_a_short_body_never_reach_the_app(
    field: tuple[bytes, bytes], recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    """HTTP/2 forbids connection-specific fields (RFC 9113 §8.2.2); a body shorter than its
    content-length is malformed (§8.1.1). Neither is passed on as a message the app would act on:
    the app never sees such a field, and never a request that ended short."""
    block = hpack.Encoder().encode(
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/sink"), (b":authority", b"web"), field]
    )
    short = b"\x00\x00\x05\x00\x01\x00\x00\x00\x01hello"  # DATA "hello" with END_STREAM
    with socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5) as sock:
        sock.sendall(
            PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
        )
        time.sleep(0.3)
        with contextlib.suppress(OSError):
            sock.sendall(short)
        frames = parse_frames(bytes_until_closed(sock, 3))
    assert [f.error_code for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))] == [
        0x1
    ]  # PROTOCOL_ERROR
    seen = recorder.by_path("/sink")
    assert all(not s.ended for s in seen)  # a request that ended short never reached the app whole
    assert all(field[0].decode() not in s.headers or field[0] == b"content-length" for s in seen)


def test_an_extended_connect_the_proxy_never_offered_is_refused_and_the_connection_goes_on(
    recorder: RecordingBackend, proxy: ProxyProcess
) -> None:
    """`:protocol` (RFC 8441) only after SETTINGS_ENABLE_CONNECT_PROTOCOL, which the proxy never
    sends: the stream is refused (PROTOCOL_ERROR) and never reaches the app, whose connection
    other clients share; the client's next stream on the same connection is served."""
    block = hpack.Encoder().encode(
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/chat"),
         (b":authority", b"web")]
    )  # fmt: skip
    client = Client(proxy.inbound)
    try:
        client.sock.sendall(HeadersFrame(1, block, flags=["END_HEADERS"]).serialize())
        client.conn.get_next_available_stream_id()  # our h2 would refuse to send it: 1 is taken
        client.conn.highest_outbound_stream_id = 1
        time.sleep(0.5)
        sid = client.request("/ok")
        raw = bytes_until_closed(client.sock, 1)
        frames = parse_frames(raw)
    finally:
        client.close()
    assert {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)} == {1: 0x1}
    assert [f.stream_id for f in frames if isinstance(f, HeadersFrame)] == [sid]  # /ok answered
    assert not [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [dict(f).get(":path") for f in recorder.fields] == ["/ok"]
