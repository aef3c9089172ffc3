"""The kubelet's port-forward endpoint, WebSocket flavour: what `pods/portforward` reaches.

The API server passes a WebSocket port-forward request (`GET /portForward/<ns>/<pod>?ports=P`,
subprotocol `v4.channel.k8s.io` or `portforward.k8s.io`) through to the kubelet unchanged; the
`kubernetes` package's `stream.portforward` speaks it. The protocol (kubelet's
pkg/kubelet/cri/streaming/portforward/websocket.go): for the i-th port, channel 2i carries data
and channel 2i+1 errors; each binary message starts with its channel byte. The server first sends
on both channels of every port the port number (uint16, little endian), then relays. As the
kubelet, the connection to the port is made inside the pod's network namespace, on 127.0.0.1:
a port that listens on the pod's loopback only is reachable this way and no other.

Frames are read and written by python-hyper's `wsproto` (sans-IO); the handshake is the few
lines of RFC 6455 below.

SPDY/3.1 (what `kubectl port-forward` speaks, through the API server's WebSocket tunnel or
directly): `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io`, then a pair
of streams (error, data) per forwarded connection, each naming its port (kubelet's
pkg/cri/streaming/portforward/httpstream.go). Frames by `lab/spdy.py` (sans-IO); `spdy_relay`
below does the I/O: one connection to the port per pair, made when both streams are there.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import os
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message as Headers
from http.server import BaseHTTPRequestHandler
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from lab import spdy

PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")  # binary channel framing, in preference order
SPDY_UPGRADE = "SPDY/3.1"
SPDY_PROTOCOL = "portforward.k8s.io"  # X-Stream-Protocol-Version: the one kubectl offers first
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
_CLONE_NEWNET = 0x40000000
MAX_PORTS = 16


class PortForwardError(Exception):
    """A request the endpoint refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_ports(query: dict[str, list[str]]) -> list[int]:
    """`?port=4190&port=80` (what the API server sends), `?ports=4190,80` → [4190, 80]; 400 else."""
    # The API server passes the client's `?ports=` on as `?port=` (one per port), as the kubelet reads it.
    values = query.get("ports", []) + query.get("port", [])
    words = [w.strip() for value in values for w in value.split(",") if w.strip()]
    if not words or len(words) > MAX_PORTS:
        raise PortForwardError(400, f"expected 1 to {MAX_PORTS} ports in ?ports=")
    ports = []
    for word in words:
        if not word.isascii() or not word.isdigit() or not 0 < int(word) < 65536:
            raise PortForwardError(400, f"invalid port {word!r}")
        ports.append(int(word))
    return ports


def choose_protocol(offered: str) -> str:
    names = [p.strip() for p in offered.split(",")]
    for protocol in PROTOCOLS:
        if protocol in names:
            return protocol
    raise PortForwardError(
        400, f"no supported WebSocket subprotocol (offered {offered!r}; want {PROTOCOLS[0]})"
    )


def handshake_response(key: str, protocol: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    ).encode("ascii")


def connect_in_netns(netns_path: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port inside a network namespace, made from a short-lived
    thread that enters it (setns applies to the calling thread only; the socket keeps its netns)."""
    result: list[socket.socket | BaseException] = []

    def enter_and_connect() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            finally:
                os.close(fd)
            result.append(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=enter_and_connect, name=f"netns-connect-{port}", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not result:
        raise TimeoutError(f"connecting to port {port} in {netns_path} timed out")
    if isinstance(result[0], BaseException):
        raise result[0]
    sock = result[0]
    sock.settimeout(None)
    return sock


class _Relay:
    """A client's upgraded socket ⇄ TCP connections to the pod's ports, on one selector: the loop,
    the back-pressure both ways, the client's reads and writes. Subclasses frame the bytes."""

    MAX_PENDING = 4 * 1024 * 1024  # bytes from the client not yet taken by a port: stop reading
    MAX_OUT = 4 * 1024 * 1024  # bytes for the client it has not taken: stop reading the ports

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.out = bytearray()  # framed bytes for the client
        self.client_open = True

    def ports(self) -> dict[Any, tuple[socket.socket, bytearray]]:
        """The open connections to ports, by key: (connection, bytes waiting to be written to it)."""
        raise NotImplementedError

    def going(self) -> bool:
        raise NotImplementedError

    def received(self, data: bytes) -> None:
        """Bytes from the client."""
        raise NotImplementedError

    def port_ready(self, key: Any, mask: int) -> None:
        raise NotImplementedError

    def loop(self, idle_timeout: float) -> None:
        """Until `going()` is false, or nothing moved for `idle_timeout` seconds."""
        selector = selectors.DefaultSelector()
        self.sock.setblocking(False)
        try:
            while self.going():
                self._register(selector)
                events = selector.select(timeout=idle_timeout)
                if not events:
                    break
                for key, mask in events:
                    if key.data is None:
                        if mask & selectors.EVENT_READ:
                            self._read_client()
                        if mask & selectors.EVENT_WRITE:
                            self._write_client()
                    else:
                        self.port_ready(key.data, mask)
        finally:
            selector.close()
            for conn, _ in self.ports().values():
                conn.close()

    def _register(self, selector: selectors.BaseSelector) -> None:
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
        ports = self.ports()
        full = sum(len(pending) for _, pending in ports.values()) >= self.MAX_PENDING
        client_mask = (selectors.EVENT_READ if self.client_open and not full else 0) | (
            selectors.EVENT_WRITE if self.out else 0
        )
        if client_mask:
            selector.register(self.sock, client_mask, None)
        ports_read = selectors.EVENT_READ if len(self.out) < self.MAX_OUT and self.client_open else 0
        for key, (conn, pending) in ports.items():
            mask = ports_read | (selectors.EVENT_WRITE if pending else 0)
            if mask:
                selector.register(conn, mask, key)

    def flush_blocking(self) -> None:
        """The last words before closing (a close frame, GOAWAY), whatever the socket's pace."""
        self.sock.setblocking(True)
        with contextlib.suppress(OSError):
            self.sock.sendall(self.out)
        self.out.clear()

    def _write_client(self) -> None:
        with contextlib.suppress(BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            del self.out[: self.sock.send(self.out)]
        if not self.client_open and self.out:
            self.flush_blocking()

    def _read_client(self) -> None:
        while True:  # TLS may hold decrypted bytes the selector cannot see
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:
                data = b""
            if not data:
                self.client_open = False
                self.out.clear()
                return
            self.received(data)
            if not self.client_open or not getattr(self.sock, "pending", lambda: 0)():
                return

    def write_port(self, conn: socket.socket, pending: bytearray) -> None:
        with contextlib.suppress(BlockingIOError):
            del pending[: conn.send(pending)]

    def read_port(self, conn: socket.socket) -> bytes | None:
        """What the port sent; b"" when it closed its side, None when there is nothing yet."""
        try:
            return conn.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""


class _WebSocketRelay(_Relay):
    """WebSocket messages, a channel byte first ⇄ one TCP connection per port."""

    def __init__(self, ws_sock: Any, ports: list[int], connect: Callable[[int], socket.socket]) -> None:
        super().__init__(ws_sock)
        self.ws = Connection(ConnectionType.SERVER)
        self.message = bytearray()  # the client's message being received (fragments joined)
        self.conns: dict[int, socket.socket] = {}
        self.pending: dict[int, bytearray] = {}  # client → port i, not yet written
        for i, port in enumerate(ports):
            self.send(2 * i, struct.pack("<H", port))
            self.send(2 * i + 1, struct.pack("<H", port))
            try:
                self.conns[i] = connect(port)
                self.conns[i].setblocking(False)
                self.pending[i] = bytearray()
            except OSError as exc:
                self.send(2 * i + 1, f"error forwarding port {port} to pod: {exc}".encode())

    def send(self, channel: int, payload: bytes) -> None:
        self.out.extend(self.ws.send(BytesMessage(data=bytes((channel,)) + payload)))

    def ports(self) -> dict[Any, tuple[socket.socket, bytearray]]:
        return {i: (conn, self.pending[i]) for i, conn in self.conns.items()}

    def going(self) -> bool:
        return self.client_open and bool(self.conns or self.out)

    def run(self, idle_timeout: float) -> None:
        self.loop(idle_timeout)
        if self.client_open:  # the ports closed, or nothing moved: close as the kubelet does
            self.out.extend(self.ws.send(CloseConnection(code=1000)))
            self.flush_blocking()

    def received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                self.out.extend(self.ws.send(event.response()))
                self.flush_blocking()
                self.client_open = False
                return
            if isinstance(event, Ping):
                self.out.extend(self.ws.send(event.response()))
            elif isinstance(event, Message):
                self.message.extend(event.data.encode() if isinstance(event, TextMessage) else event.data)
                if event.message_finished:
                    payload, self.message = bytes(self.message), bytearray()
                    channel = payload[0] if payload else 1
                    if channel % 2 == 0 and channel // 2 in self.conns:  # data for a port
                        self.pending[channel // 2].extend(payload[1:])

    def port_ready(self, key: Any, mask: int) -> None:
        conn = self.conns[key]
        if mask & selectors.EVENT_WRITE and self.pending[key]:
            self.write_port(conn, self.pending[key])
        if mask & selectors.EVENT_READ:
            chunk = self.read_port(conn)
            if chunk:
                self.send(2 * key, chunk)
            elif chunk is not None:  # the port closed its side: so does this channel, as the kubelet does
                conn.close()
                del self.conns[key]


def relay(
    ws_sock: Any, ports: list[int], connect: Callable[[int], socket.socket], idle_timeout: float
) -> None:
    """Serve the channels until the client closes, every port's connection is closed, or nothing
    moves for `idle_timeout` seconds. `ws_sock` is the upgraded (TLS) socket, after the 101."""
    _WebSocketRelay(ws_sock, ports, connect).run(idle_timeout)


# --- SPDY/3.1 ------------------------------------------------------------------------------


def spdy_handshake_response(headers: Headers) -> bytes:
    """The 101 for `Upgrade: SPDY/3.1`; a PortForwardError when `portforward.k8s.io` is not among
    the request's `X-Stream-Protocol-Version`s (the kubelet's httpstream.Handshake)."""
    offered = [
        p.strip() for value in headers.get_all("X-Stream-Protocol-Version") or [] for p in value.split(",")
    ]
    if SPDY_PROTOCOL not in offered:
        raise PortForwardError(
            403, f"no supported port-forward protocol (offered {offered}; want {SPDY_PROTOCOL})"
        )
    return (
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        f"Upgrade: {SPDY_UPGRADE}\r\nX-Stream-Protocol-Version: {SPDY_PROTOCOL}\r\n\r\n"
    ).encode("ascii")


def switch_protocols(handler: BaseHTTPRequestHandler, answer: bytes) -> Any:
    """Send the 101 `answer`; the connection to relay on (the handler closes it after)."""
    handler.wfile.write(answer)
    handler.wfile.flush()
    handler.close_connection = True
    return handler.connection


@dataclass
class _Pair:
    """One forwarded connection: its two streams, and the TCP connection to the port."""

    port: int
    error: int = 0  # stream ids (0: not opened yet)
    data: int = 0
    conn: socket.socket | None = None
    pending: bytearray = field(default_factory=bytearray)  # client -> port, not yet written
    client_done: bool = False  # FIN on the data stream: shut the port's write side once written


class _SpdyRelay(_Relay):
    """SPDY streams ⇄ one TCP connection per (error, data) pair of streams."""

    MAX_PAIRS = 64

    def __init__(self, sock: Any, connect: Callable[[int], socket.socket]) -> None:
        super().__init__(sock)
        self.connect = connect
        self.spdy = spdy.ServerConnection()
        self.pairs: dict[str, _Pair] = {}  # by requestid
        self.by_stream: dict[int, str] = {}

    def ports(self) -> dict[Any, tuple[socket.socket, bytearray]]:
        return {rid: (p.conn, p.pending) for rid, p in self.pairs.items() if p.conn is not None}

    def going(self) -> bool:
        return self.client_open or bool(self.out)

    def received(self, data: bytes) -> None:
        try:
            for event in self.spdy.receive_data(data):
                self._event(event)
        except spdy.SpdyError:
            self.out.extend(self.spdy.goaway(spdy.PROTOCOL_ERROR))
            self.client_open = False

    def _event(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.Ping):
            self.out.extend(self.spdy.ping(event.ping_id))
        elif isinstance(event, spdy.GoAway):
            self.client_open = False
        elif isinstance(event, spdy.SynStream):
            self._open(event)
        elif isinstance(event, spdy.Data):
            request_id = self.by_stream.get(event.stream_id)
            pair = self.pairs.get(request_id) if request_id is not None else None
            if pair is None or event.stream_id != pair.data:
                return  # the error stream carries nothing from the client; a closed pair's stragglers
            pair.pending.extend(event.data)
            pair.client_done |= event.fin
            self._maybe_shut(pair)
        elif isinstance(event, spdy.RstStream):
            request_id = self.by_stream.get(event.stream_id)
            if request_id is not None:
                self._close(request_id, fin=False)

    def _open(self, event: spdy.SynStream) -> None:
        """A new stream: reply, pair it, and connect once the pair is whole (as the kubelet)."""
        kind, port_text = event.headers.get("streamtype", ""), event.headers.get("port", "")
        request_id = event.headers.get("requestid") or str(
            event.stream_id if kind == "error" else event.stream_id - 2  # the kubelet's rule, old clients
        )
        if (
            kind not in ("error", "data")
            or not port_text.isdigit()
            or not 0 < int(port_text) < 65536
            or (request_id not in self.pairs and len(self.pairs) >= self.MAX_PAIRS)
        ):
            self.out.extend(self.spdy.rst_stream(event.stream_id, spdy.REFUSED_STREAM))
            return
        pair = self.pairs.setdefault(request_id, _Pair(int(port_text)))
        if getattr(pair, kind):  # a second stream of this kind for the request
            self.out.extend(self.spdy.rst_stream(event.stream_id, spdy.PROTOCOL_ERROR))
            return
        setattr(pair, kind, event.stream_id)
        self.by_stream[event.stream_id] = request_id
        self.out.extend(self.spdy.syn_reply(event.stream_id))
        if pair.error and pair.data:
            try:
                pair.conn = self.connect(pair.port)
                pair.conn.setblocking(False)
            except OSError as exc:
                message = f"error forwarding port {pair.port} to pod: {exc}"
                self.out.extend(self.spdy.data(pair.error, message.encode()))
                self.out.extend(self.spdy.rst_stream(pair.data, spdy.CANCEL))
                self.out.extend(self.spdy.rst_stream(pair.error, spdy.CANCEL))
                self._forget(request_id)

    def _maybe_shut(self, pair: _Pair) -> None:
        if pair.client_done and not pair.pending and pair.conn is not None:
            with contextlib.suppress(OSError):
                pair.conn.shutdown(socket.SHUT_WR)

    def port_ready(self, key: Any, mask: int) -> None:
        pair = self.pairs[key]
        assert pair.conn is not None
        if mask & selectors.EVENT_WRITE and pair.pending:
            self.write_port(pair.conn, pair.pending)
            self._maybe_shut(pair)
        if mask & selectors.EVENT_READ:
            chunk = self.read_port(pair.conn)
            if chunk:
                self.out.extend(self.spdy.data(pair.data, chunk))
            elif chunk is not None:  # the port closed its side: both streams end (the kubelet's Close)
                self._close(key, fin=True)

    def _close(self, request_id: str, fin: bool) -> None:
        pair = self.pairs.get(request_id)
        if pair is None:
            return
        if fin:
            self.out.extend(self.spdy.data(pair.data, b"", fin=True))
            self.out.extend(self.spdy.data(pair.error, b"", fin=True))
        self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        pair = self.pairs.pop(request_id)
        if pair.conn is not None:
            pair.conn.close()
        for stream_id in (pair.error, pair.data):
            self.by_stream.pop(stream_id, None)


def spdy_relay(sock: Any, connect: Callable[[int], socket.socket], idle_timeout: float) -> None:
    """Serve SPDY port-forward streams until the client leaves (or says GOAWAY) or nothing moves
    for `idle_timeout` seconds. `sock` is the upgraded (TLS) socket, after the 101."""
    _SpdyRelay(sock, connect).loop(idle_timeout)
