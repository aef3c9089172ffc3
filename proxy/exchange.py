"""HTTP/1 on one client connection: read requests, forward each as one `Exchange`, keep the order.

What is forwarded is decided in `http1` (sans-IO); where it goes and whether a connection may be
used again is the pool's call (pool.py). This module moves one request and its response between
the two and keeps the deadlines with the meaning users expect (Envoy's):

- a request head must arrive within the header timeout once its first byte came (else 408);
- the response timeout starts when the whole request has been sent, and is renewed by every
  byte of response body: a slow upload or a long download is not cut while it makes progress;
- while the proxy waits on a client (reading a body it sends, writing a response it does not
  read), the upstream's clock is stopped, and a stall counts as the client's, not the upstream's.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import gevent

from . import http1, tunnel
from .connections import (
    HEAD_RECV,
    RECV,
    Address,
    Client,
    Upstream,
    UpstreamError,
    hostport,
    recv_when_readable,
    send_pieces,
    shutdown,
)
from .http1 import (
    BODY,
    CHUNKED,
    END,
    HEAD,
    MESH_DST,
    MESH_SRC,
    MESH_VIA,
    UPGRADE,
    BodyWriter,
    Event,
    Head,
    ProtocolError,
)
from .identity import NO_LABELS, Labels

if TYPE_CHECKING:
    from .server import Proxy
    from .tap import TapRequest

INBOUND, OUTBOUND = "inbound", "outbound"
SEND_BATCH = 65536  # response body pieces are gathered up to this size before a send
_CONNECT = b"CONNECT"


def serve_http(proxy: Proxy, client: Client, first: bytes, dest: Address | None, direction: str) -> None:
    """Serve requests on a client connection until it closes, fails, or may not carry another."""
    reader = http1.RequestReader()
    events = reader.events
    sock = client.sock
    sock.settimeout(None)
    config = proxy.config
    head_deadline = 0.0
    data = first
    while True:
        try:
            if data:
                reader.feed(data)
            elif not events and reader.held:
                reader.resume()  # what a read held beyond the last request, or its error
        except ProtocolError as error:
            proxy.reject(client, error, direction)
            return
        if events:
            kind, head = events.popleft()
            if kind != HEAD:
                return
            client.busy = True
            client.deadline = 0.0  # the exchange arms it whenever it waits on the client
            if not Exchange(proxy, client, reader, head, direction).run(dest):
                return
            client.busy = False
            if proxy.draining:
                return
            head_deadline = 0.0
            data = b""
            continue
        if reader.held:
            continue
        if proxy.draining:
            return
        if reader.head_started:  # a head is on its way: it has header_timeout from its first byte
            if not head_deadline:
                head_deadline = proxy.now + config.header_timeout
            client.deadline = head_deadline
        else:
            client.deadline = proxy.now + config.idle_timeout
        try:
            data = recv_when_readable(sock, HEAD_RECV)
        except OSError:
            data = b""
        if not data:
            if client.expired and reader.head_started:
                proxy.reject(client, ProtocolError(408, "request head too slow"), direction)
            return
        client.tcp.read += len(data)


class Exchange:
    """One request and its response, from the client's head to the end of the upstream's body."""

    __slots__ = (
        "authority", "client", "direction", "head", "head_received", "peer", "proxy", "reader",
        "reply_extra", "start", "tap", "tap_body_bytes",
    )  # fmt: skip

    def __init__(
        self, proxy: Proxy, client: Client, reader: http1.RequestReader, head: Head, direction: str
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.reader = reader
        self.head = head
        self.direction = direction
        self.start = time.monotonic()
        self.authority = ""
        self.peer: Labels = NO_LABELS
        self.reply_extra: list[tuple[bytes, bytes]] = []  # mesh headers for the client's response
        self.head_received = False  # the final response head arrived (the pump leaves the clock be)
        self.tap: TapRequest | None = None  # set only while someone taps this proxy (tap.py)
        self.tap_body_bytes = 0  # response body bytes the client was sent (chunk framing is not body)

    # --- the request ---------------------------------------------------------------------------
    def run(self, dest: Address | None) -> bool:
        """Forward the request and its response; True if the client connection can carry another."""
        proxy, head, client = self.proxy, self.head, self.client
        target = head.target
        if dest is None:  # explicit outbound: an HTTP forward proxy
            if head.method == _CONNECT:
                tunnel.connect(proxy, client, self.reader, head)
                return False
            routed = http1.forward_proxy_target(head)
            if routed is None:
                proxy.reject(client, ProtocolError(400, "no usable destination in request"), self.direction)
                return False
            address, target, authority_bytes = routed
            if head.target[:1] != b"/":  # absolute form: Host must name the target's authority
                head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
                head.headers.insert(0, (b"Host", authority_bytes))
        else:
            address = dest
            authority_bytes = head.host or hostport(dest).encode()
        self.authority = proxy.authority_label(authority_bytes)
        via = head.mesh.get(MESH_VIA)
        if via is not None and http1.via_loops(via, proxy.hop_id):
            # The second visit of a loop: refused here and counted once, by the first visit.
            proxy.reject(client, ProtocolError(400, "forwarding loop"), self.direction, count=False)
            return False

        extra = http1.request_framing(head)
        if self.direction == INBOUND:
            self.peer = proxy.src_labels.get(head.mesh.get(MESH_SRC))
            if client.tcp.pending:
                proxy.attach(client, self.peer)
            if self.peer:  # only a meshed client learns who answered (never an unmeshed one)
                self.reply_extra = proxy.inbound_reply_extra
        else:
            extra += http1.outbound_mesh_fields(proxy.identity, via, proxy.hop_id)
        if head.host is None and dest is not None:
            extra.append((b"Host", authority_bytes))
        if proxy.tap.active:
            self.tap = proxy.tap_request(
                self.direction,
                client,
                head.mesh.get(MESH_SRC),
                bool(self.peer),
                head.method,
                self.authority,
                target,
            )
        payload = [http1.encode_request_head(head, target, extra)]
        writer = http1.body_writer(head.body_mode == CHUNKED)
        body_done = _take_buffered_body(self.reader.events, payload, writer)
        data = payload[0] if len(payload) == 1 else b"".join(payload)
        if head.method == _CONNECT:
            return self._tunnel(address, data)
        repeatable = body_done and head.method in http1.IDEMPOTENT_METHODS
        try:
            upstream = proxy.pool.send(address, data, self.direction, repeatable)
        except UpstreamError as error:
            return self._fail(error, body_done and head.keep_alive)

        pump = None
        if not body_done:
            pump = gevent.spawn(self._pump_body, upstream, writer)
        try:
            return self._forward_response(upstream, pump)
        finally:
            if pump is not None and not pump.dead:
                pump.kill(block=False)

    def _count(self, status: int, error: str, latency_ms: float) -> None:
        """The request's outcome: its metrics, and the tap's `end` (and `rsp` if no head came)."""
        self.proxy.metrics.response(self.direction, self.authority, self.peer, status, error, latency_ms)
        tap = self.tap
        if tap is not None:
            if not self.head_received:
                tap.response(status)
            tap.end(self.tap_body_bytes, error or None)

    def _tunnel(self, address: Address, head_bytes: bytes) -> bool:
        """CONNECT on a listener with a destination (an app using an egress proxy).

        The head goes on, on a connection of its own that is never pooled. Only a 2xx answer
        opens the tunnel: then the client's bytes after its head go up, and bytes flow both
        ways unparsed. Any other answer is relayed as a response and the connection closed, so
        bytes the client sent after a refused CONNECT never reach the app as requests.
        """
        proxy = self.proxy
        try:
            upstream = proxy.pool.connect(address, self.direction)
            proxy.pool.send_on(upstream, head_bytes)
        except UpstreamError as error:
            return self._fail(error, False)
        try:
            head_end, buf = self._read_raw_head(upstream)
            status_line = buf[: buf.find(b"\r\n")]
            opened = status_line[:7] == b"HTTP/1." and status_line[9:10] == b"2"
            upstream.reader.start(b"HEAD" if opened else b"CONNECT")  # a tunnel's 2xx has no body
            upstream.reader.feed(buf[:head_end] if opened else buf)
        except UpstreamError as error:
            proxy.pool.discard(upstream)
            return self._fail(error, False)
        except ProtocolError:
            proxy.pool.discard(upstream)
            return self._fail(UpstreamError("bad_response"), False)
        _, response = upstream.reader.events.popleft()
        latency_ms = (time.monotonic() - self.start) * 1000.0
        if not opened:
            failure = self._relay_body(upstream, response, False, False)
            proxy.pool.discard(upstream)
            self._count(response.status, failure, latency_ms)
            return False
        self._count(response.status, "", latency_ms)
        out = http1.encode_response_head(response, "1.1", True, False, self.reply_extra)
        left = b"".join(d for k, d in self.reader.events if k == UPGRADE and d)
        try:
            if proxy.send_client(self.client, out):
                tunnel.relay(proxy, self.client, upstream, left, buf[head_end:])
        finally:
            proxy.pool.discard(upstream)
        return False

    def _read_raw_head(self, upstream: Upstream) -> tuple[int, bytes]:
        """Read until a response head is complete; (where it ends, all bytes read so far)."""
        proxy = self.proxy
        upstream.deadline = proxy.now + proxy.config.response_timeout
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end != -1:
                return end + 4, buf
            if len(buf) > http1.MAX_OPEN_HEAD_BYTES:
                raise ProtocolError(502, "response head too large")
            try:
                data = recv_when_readable(upstream.sock)
            except OSError:
                data = b""
            if upstream.expired:
                raise UpstreamError("timeout", 504)
            if not data:
                raise UpstreamError("reset")
            upstream.tcp.read += len(data)
            buf += data

    def _pump_body(self, upstream: Upstream, writer: BodyWriter) -> bool:
        """Stream the rest of a request body to the upstream while the response is awaited.

        The upstream's write deadline runs only while a send to it is blocked; the response
        timeout (its read deadline) starts when the body is complete, unless the response head
        came first. A malformed request after this one is left to the next read of the client.
        """
        proxy, client = self.proxy, self.client
        events = self.reader.events
        csock, usock = client.sock, upstream.sock
        out: list[bytes] = []
        try:
            while True:
                done = _take_buffered_body(events, out, writer)
                if out:
                    upstream.write_deadline = proxy.now + proxy.config.response_timeout
                    upstream.tcp.written += send_pieces(usock, out)
                    out.clear()
                    upstream.write_deadline = 0.0
                if done:
                    if not self.head_received:
                        upstream.deadline = proxy.now + proxy.config.response_timeout
                    return True
                client.deadline = proxy.now + proxy.config.idle_timeout
                data = csock.recv(RECV)
                if not data:
                    raise ConnectionResetError
                client.tcp.read += len(data)
                self.reader.feed(data)
        except (OSError, ProtocolError):
            shutdown(usock)  # the upstream must not wait for a body that will never come
            return False

    # --- the response --------------------------------------------------------------------------
    def _forward_response(self, upstream: Upstream, pump: gevent.Greenlet | None) -> bool:
        proxy, client, request, direction = self.proxy, self.client, self.head, self.direction
        response_timeout = proxy.config.response_timeout
        # Response head(s): relay 1xx, stop at the final one.
        got_bytes = False
        upstream.reader.start(request.method)
        upstream.deadline = 0.0 if pump is not None else proxy.now + response_timeout
        while True:
            up_events = upstream.reader.events
            if not up_events:
                try:
                    data = recv_when_readable(upstream.sock)
                except OSError:
                    data = b""
                if upstream.expired:
                    proxy.pool.discard(upstream)
                    return self._fail(UpstreamError("timeout", 504), False)
                if not data:
                    if upstream.retry_payload and not got_bytes and pump is None:
                        try:  # a reused connection was stale and the request may be sent again
                            upstream = proxy.pool.resend(upstream, direction)
                        except UpstreamError as error:
                            return self._fail(error, request.keep_alive)
                        upstream.reader.start(request.method)
                        upstream.deadline = proxy.now + response_timeout
                        continue
                    proxy.pool.discard(upstream)
                    if pump is not None and pump.dead and not pump.value:
                        return self._client_failed(0)
                    return self._fail(UpstreamError("reset"), pump is None and request.keep_alive)
                got_bytes = True
                upstream.tcp.read += len(data)
                try:
                    upstream.reader.feed(data)
                except ProtocolError:
                    proxy.pool.discard(upstream)
                    return self._fail(UpstreamError("bad_response"), pump is None and request.keep_alive)
                continue
            kind, response = up_events.popleft()
            if kind != HEAD:
                continue
            if response.status == 101 and request.upgrade is None:  # a switch nobody asked for
                proxy.pool.discard(upstream)
                return self._fail(UpstreamError("bad_response"), False)
            if not http1.is_informational(response.status) or response.status == 101:
                break
            # 1xx go to HTTP/1.1 clients only (RFC 9110 §15.2).
            informational = http1.encode_response_head(response, "1.1", True, False, [])
            if request.version != "1.0" and not proxy.send_client(client, informational):
                proxy.pool.discard(upstream)
                return self._client_failed(0)  # counted (and its tap told), as any client gone
        self.head_received = True
        latency_ms = (time.monotonic() - self.start) * 1000.0
        if direction == OUTBOUND:
            self.peer = proxy.dst_labels.get(response.mesh.get(MESH_DST))
            if upstream.tcp.pending:
                proxy.attach(upstream, self.peer)
        if self.tap is not None:
            self.tap.response(
                response.status, proxy.tap_callee(direction, response.mesh.get(MESH_DST), bool(self.peer))
            )

        if response.status == 101:
            self._count(101, "", latency_ms)
            out = http1.encode_response_head(response, "1.1", True, False, self.reply_extra)
            if not proxy.send_client(client, out):
                proxy.pool.discard(upstream)
                return False
            tunnel.switch_protocols(proxy, client, self.reader, upstream)
            return False

        chunked_out, client_keep = http1.response_plan(response, request.version)
        keep = client_keep and request.keep_alive and request.upgrade is None and not proxy.draining
        failure = self._relay_body(upstream, response, chunked_out, keep)
        if failure:
            proxy.pool.discard(upstream)
            if failure.startswith("client_"):
                return self._client_failed(response.status, latency_ms)
            self._count(response.status, failure, latency_ms)
            return False
        self._count(response.status, "", latency_ms)
        if proxy.debug:  # method and status only: targets may carry tokens, bodies are never logged
            proxy.log.debug(
                "request", direction=direction, authority=self.authority, method=request.method.decode(),
                status=response.status, latency_ms=round(latency_ms, 3),
            )  # fmt: skip
        # A pump still running means the upstream answered before the whole request body arrived.
        body_sent = pump is None or (pump.dead and bool(pump.value))
        if response.keep_alive and body_sent and request.upgrade is None:
            proxy.pool.checkin(upstream)  # only if nothing is left over (see pool.py)
        else:
            proxy.pool.discard(upstream)
        return keep and body_sent

    def _relay_body(self, upstream: Upstream, response: Head, chunked_out: bool, keep: bool) -> str:
        """Send the response head and body to the client; '' when whole, else the error label."""
        proxy = self.proxy
        response_timeout = proxy.config.response_timeout
        up_reader = upstream.reader
        up_events = up_reader.events
        usock = upstream.sock
        writer = http1.body_writer(chunked_out)
        out = http1.encode_response_head(response, self.head.version, keep, chunked_out, self.reply_extra)
        pending = [out]
        pending_size = len(out)
        body_pending = 0  # body bytes in `pending` (without the head and chunk framing)
        while True:
            if up_events:
                kind, data = up_events[0]
                if kind == BODY:
                    up_events.popleft()
                    writer.write(data, pending)
                    pending_size += len(data)
                    body_pending += len(data)
                    if pending_size < SEND_BATCH:
                        continue
                elif kind == END:
                    up_events.popleft()
                    writer.end(data, pending)
                    break
                else:  # nothing else may come before the end of a response
                    return "bad_response"
            if pending:
                failure = self._flush(upstream, pending)
                if failure:
                    return failure
                self.tap_body_bytes += body_pending
                pending, pending_size, body_pending = [], 0, 0
            if up_events:
                continue
            upstream.deadline = proxy.now + response_timeout  # the body may take long, but not stall long
            try:
                data = usock.recv(RECV)
            except OSError:
                data = b""
            if upstream.expired:
                return "timeout"
            if not data:
                if up_reader.eof():
                    continue
                return "reset"
            upstream.tcp.read += len(data)
            try:
                up_reader.feed(data)
            except ProtocolError:
                return "bad_response"
        failure = self._flush(upstream, pending) if pending else ""
        if not failure:
            self.tap_body_bytes += body_pending
        return failure

    def _flush(self, upstream: Upstream, pending: list[bytes]) -> str:
        """Write to the client with the upstream's clock stopped: a slow reader is not its fault."""
        upstream.deadline = 0.0
        client = self.client
        client.deadline = self.proxy.now + self.proxy.config.idle_timeout
        try:
            client.tcp.written += send_pieces(client.sock, pending)
        except OSError:
            return self._client_error()
        return ""

    def _client_error(self) -> str:
        return "client_timeout" if self.client.expired else "client_gone"

    # --- failures ------------------------------------------------------------------------------
    def _fail(self, error: UpstreamError, client_reusable: bool) -> bool:
        """Answer 502/504 (or 400 for a loop) for a request that got no response head; count it."""
        proxy = self.proxy
        latency_ms = (time.monotonic() - self.start) * 1000.0
        self._count(error.status, error.error, latency_ms)
        proxy.log_upstream_error(self.direction, self.authority, error.error)
        detail = b"forwarding loop: the target is this proxy" if error.error == "loop" else b""
        out = http1.error_response(error.status, self.reply_extra, close=not client_reusable, detail=detail)
        return proxy.send_client(self.client, out) and client_reusable and not proxy.draining

    def _client_failed(self, status: int, latency_ms: float | None = None) -> bool:
        """The client stopped sending or reading: counted as its doing, never the upstream's."""
        if latency_ms is None:
            latency_ms = (time.monotonic() - self.start) * 1000.0
        self._count(status, self._client_error(), latency_ms)
        return False


def _take_buffered_body(events: deque[Event], payload: list[bytes], writer: BodyWriter) -> bool:
    """Move the body events already parsed into `payload`; True if the whole body was there."""
    while events:
        kind, data = events[0]
        if kind == BODY:
            events.popleft()
            writer.write(data, payload)
        elif kind == END:
            events.popleft()
            writer.end(data, payload)
            return True
        else:
            return True
    return False
