"""The proxy's I/O edge: gevent listeners, one greenlet per client connection, an upstream pool.

Everything HTTP-specific is decided in `http1` (sans-IO); this module only moves bytes, keeps
time, and counts. One process serves inbound (4143), outbound (4140) and admin (4191).
"""

from __future__ import annotations

import contextlib
import signal
import socket as stdsocket
import struct
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent import socket

from . import http1
from .config import ProxyConfig
from .detect import Protocol, detect
from .http1 import BODY, CHUNKED, END, HEAD, MESH_DST, MESH_SRC, UPGRADE, Head, ProtocolError
from .identity import NO_LABELS, Labels, PeerLabelCache
from .log import Logger
from .metrics import MeshMetrics, Tcp

INBOUND, OUTBOUND = "inbound", "outbound"
RECV = 65536
SEND_BATCH = 65536  # body pieces are gathered up to this size before a send
JOIN_LIMIT = 16384  # below this, pieces are joined (one copy is cheaper than sendmsg's setup)
SO_ORIGINAL_DST = 80
_PEEK_FLAGS = stdsocket.MSG_PEEK | stdsocket.MSG_DONTWAIT
Address = tuple[str, int]


class UpstreamError(Exception):
    """Talking to the upstream failed; `error` is the metric label, `status` the client's answer."""

    def __init__(self, error: str, status: int = 502) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


def original_destination(sock: Any) -> Address | None:
    """Where the client meant to connect before iptables REDIRECT; None when not redirected."""
    try:
        raw = sock.getsockopt(stdsocket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    address = (stdsocket.inet_ntoa(raw[4:8]), port)
    try:
        local = sock.getsockname()
    except OSError:
        return None
    return None if address == tuple(local[:2]) else address


def _alive(sock: Any) -> bool:
    """An idle pooled connection is usable if the upstream has neither closed it nor sent junk."""
    raw = getattr(sock, "_sock", sock)
    try:
        raw.recv(1, _PEEK_FLAGS)  # any answer (bytes or EOF) while idle means "do not reuse"
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class Upstream:
    """A connection to an upstream with its response parser; lives in the pool between requests."""

    __slots__ = (
        "address",
        "deadline",
        "expired",
        "idle_since",
        "reader",
        "retry_payload",
        "sock",
        "tcp",
    )

    def __init__(self, sock: Any, address: Address, tcp: Tcp) -> None:
        self.sock = sock
        self.address = address
        self.reader = http1.ResponseReader()
        self.tcp = tcp
        self.idle_since = 0.0
        self.retry_payload = b""  # set only on a reused connection: the whole request, for one fresh retry
        self.deadline = 0.0  # the watchdog shuts the socket after this (coarse clock); 0 = none
        self.expired = False


class Client:
    __slots__ = ("busy", "deadline", "expired", "sock", "tcp")

    def __init__(self, sock: Any, tcp: Tcp) -> None:
        self.sock = sock
        self.tcp = tcp
        self.busy = True
        self.deadline = 0.0
        self.expired = False


class Proxy:
    def __init__(self, config: ProxyConfig, log: Logger, metrics: MeshMetrics | None = None) -> None:
        self.config = config
        self.log = log
        self.metrics = metrics or MeshMetrics(config.max_series, config.series_idle_seconds)
        self.identity = config.identity.header_value() if config.identity else None
        self.src_labels = PeerLabelCache("src")
        self.dst_labels = PeerLabelCache("dst")
        self.pool: dict[Address, list[Upstream]] = {}
        self.pool_max_per_destination = 64
        self.pool_idle_seconds = 30.0
        self.clients: set[Client] = set()
        self.busy_upstreams: set[Upstream] = set()
        self.now = time.monotonic()  # coarse clock for deadlines, advanced by the watchdog
        self.tick = min(0.1, config.response_timeout / 4, config.idle_timeout / 4)
        self.ready = False
        self.draining = False
        self.listeners: list[Any] = []
        self.own_addresses: set[Address] = set()
        self.stopped = gevent.event.Event()
        self.debug = log.enabled("debug")
        self._inbound_extra = [(MESH_DST, self.identity)] if self.identity is not None else []
        self._authorities: dict[bytes, str] = {}  # Host value → label value, memoised
        self._error_log: dict[tuple[str, str, str], tuple[float, int]] = {}

    # --- timeouts -------------------------------------------------------------------------------
    def start_watchdog(self) -> None:
        gevent.spawn(self._watchdog)

    def _watchdog(self) -> None:
        """Enforce deadlines for every socket from one greenlet.

        Sockets carry no gevent timeout on the hot path (that would arm and cancel a timer on
        every wait); instead each connection notes a deadline, and an overdue socket is shut
        down here, so its blocked recv/send returns and the handler sees `expired`.
        """
        while True:
            gevent.sleep(self.tick)
            self.now = now = time.monotonic()
            holders: list[Client | Upstream] = [*self.clients, *self.busy_upstreams]
            for holder in holders:
                if holder.deadline and now > holder.deadline and not holder.expired:
                    holder.expired = True
                    if holder.sock is not None:
                        _shutdown(holder.sock)

    # --- listeners ------------------------------------------------------------------------------
    def bind(self, address: Address, direction: str) -> Any:
        listener = socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        listener.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
        self.listeners.append(listener)
        bound = listener.getsockname()
        self.own_addresses.add((bound[0], bound[1]))
        if bound[0] == "0.0.0.0":
            self.own_addresses.add(("127.0.0.1", bound[1]))
        gevent.spawn(self._accept_loop, listener, direction)
        return listener

    def _accept_loop(self, listener: Any, direction: str) -> None:
        while not self.draining:
            try:
                sock, peer = listener.accept()
            except OSError:
                if self.draining:
                    return
                gevent.sleep(0.01)  # EMFILE and friends: back off, keep serving
                continue
            gevent.spawn(self._handle, sock, peer, direction)

    # --- one client connection --------------------------------------------------------------------
    def _handle(self, sock: Any, peer: Any, direction: str) -> None:
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        dest = self._destination(sock, direction)
        client = Client(sock, self._tcp_connection(direction, "src", _hostport(dest) if dest else ""))
        self.clients.add(client)
        try:
            if dest is None and direction == INBOUND:
                self.log.warning("no_destination", direction=direction, client=_hostport(peer))
                return
            if dest is not None and dest[1] in self.config.opaque_ports:
                self._relay_to(client, dest, b"", direction)
                return
            # With no destination of its own (the forward proxy), a connection can only be HTTP:
            # a quiet client is just early, not a server-speaks-first protocol.
            patience = self.config.detect_timeout if dest is not None else self.config.idle_timeout
            protocol, first = self._detect(client, patience)
            if protocol is Protocol.HTTP1:
                self._serve_http(client, first, dest, direction)
            elif dest is not None and (first or protocol is Protocol.OPAQUE):
                self._relay_to(client, dest, first, direction)
        except Exception as error:  # one connection never takes the proxy down
            self.log.warning("connection_error", direction=direction, error=type(error).__name__)
        finally:
            self.clients.discard(client)
            _close(sock)
            if client.tcp.pending:
                self._attach(client, NO_LABELS)
            self.metrics.tcp_close(client.tcp)

    def _tcp_connection(self, direction: str, peer: str, authority: str) -> Tcp:
        """The side facing the other workload (inbound clients, outbound upstreams) waits to be
        labelled with it until the first request or response names it (see metrics.py)."""
        facing_peer = (direction == INBOUND) == (peer == "src")
        return self.metrics.tcp_connection(direction, peer, authority, wait_for_peer=facing_peer)

    def _attach(self, holder: Client | Upstream, workload: Labels) -> None:
        """Count a connection under its peer's workload labels from now on (see metrics.py)."""
        holder.tcp = self.metrics.tcp_attach(holder.tcp, workload)

    def _destination(self, sock: Any, direction: str) -> Address | None:
        if direction == INBOUND and self.config.inbound_forward:
            return self.config.inbound_forward
        return original_destination(sock)

    def _detect(self, client: Client, patience: float) -> tuple[Protocol, bytes]:
        """Read until the first bytes tell HTTP/1 from anything else, or the client stays silent."""
        sock = client.sock
        deadline = time.monotonic() + patience
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Protocol.OPAQUE, buf
            sock.settimeout(remaining)
            try:
                data = sock.recv(RECV)
            except TimeoutError:
                return Protocol.OPAQUE, buf
            except OSError:
                return Protocol.NEED_MORE, b""
            if not data:
                return Protocol.NEED_MORE, buf  # closed before deciding: relay what we have, if anything
            client.tcp.read += len(data)
            buf += data
            protocol = detect(buf)
            if protocol is not Protocol.NEED_MORE:
                return protocol, buf

    # --- HTTP/1 -----------------------------------------------------------------------------------
    def _serve_http(self, client: Client, first: bytes, dest: Address | None, direction: str) -> None:
        reader = http1.RequestReader()
        events = reader.events
        sock = client.sock
        sock.settimeout(None)
        idle_timeout = self.config.idle_timeout
        data = first
        while True:
            if data:
                try:
                    reader.feed(data)
                except ProtocolError as error:
                    self._reject(client, error, direction)
                    return
            if events:
                kind, head = events.popleft()
                if kind != HEAD:
                    return
                client.busy = True
                if not self._exchange(client, reader, head, dest, direction):
                    return
                client.busy = False
                if self.draining:
                    return
                data = b""
                continue
            client.busy = False
            if self.draining:
                return
            client.deadline = self.now + idle_timeout
            try:
                data = _recv_when_readable(sock)
            except OSError:
                return
            if not data:
                return
            client.tcp.read += len(data)

    def _reject(self, client: Client, error: ProtocolError, direction: str) -> None:
        self.log.info("bad_request", direction=direction, status=error.status, reason=error.reason)
        self._send_client(client, http1.error_response(error.status, self._identity_extra(direction)))
        self.metrics.response(direction, "", NO_LABELS, error.status, "", 0.0)

    def _log_upstream_error(self, direction: str, authority: str, error: str) -> None:
        """One line per destination and error kind per second: an outage must not flood the log."""
        key = (direction, authority, error)
        last, suppressed = self._error_log.get(key, (0.0, 0))
        if self.now - last < 1.0:
            self._error_log[key] = (last, suppressed + 1)
            return
        if len(self._error_log) > 1000:
            self._error_log.clear()
        self._error_log[key] = (self.now, 0)
        self.log.info(
            "upstream_error", direction=direction, authority=authority, error=error, suppressed=suppressed
        )

    def _identity_extra(self, direction: str) -> list[tuple[bytes, bytes]]:
        """Headers naming this workload on responses: only the server side (inbound) sends them."""
        return self._inbound_extra if direction == INBOUND else []

    def _send_client(self, client: Client, data: bytes) -> bool:
        client.deadline = self.now + self.config.idle_timeout
        try:
            _send(client.sock, data)
        except OSError:
            return False
        client.tcp.written += len(data)
        return True

    def _exchange(
        self, client: Client, reader: http1.RequestReader, head: Head, dest: Address | None, direction: str
    ) -> bool:
        """Forward one request and its response; True if the client connection can carry another."""
        start = time.monotonic()
        events = reader.events
        target = head.target
        if dest is None:  # explicit outbound: an HTTP forward proxy
            if head.method == b"CONNECT":
                self._connect_tunnel(client, reader, head)
                return False
            routed = http1.forward_proxy_target(head)
            if routed is None:
                self._reject(client, ProtocolError(400, "no usable destination in request"), direction)
                return False
            address, target, authority_bytes = routed
            if head.target[:1] != b"/":  # absolute form: Host must name the target's authority
                head.headers = [(n, v) for n, v in head.headers if n.lower() != b"host"]
                head.headers.insert(0, (b"Host", authority_bytes))
        else:
            address = dest
            authority_bytes = head.host or _hostport(dest).encode()
        authority = self._authorities.get(authority_bytes)
        if authority is None:
            if len(self._authorities) > 4096:
                self._authorities.clear()
            authority = self._authorities[authority_bytes] = authority_bytes.decode("latin-1").lower()
        extra = http1.request_framing(head)
        if direction == INBOUND:
            peer = self.src_labels.get(head.mesh.get(MESH_SRC))
            if client.tcp.pending:
                self._attach(client, peer)
        else:
            peer = NO_LABELS
            if self.identity is not None:
                extra.append((MESH_SRC, self.identity))
        if head.host is None and dest is not None:
            extra.append((b"Host", authority_bytes))
        payload = [http1.encode_request_head(head, target, extra)]
        chunked = head.body_mode == CHUNKED
        body_done = _take_buffered_body(events, payload, chunked)
        data = payload[0] if len(payload) == 1 else b"".join(payload)

        if address in self.own_addresses:
            loop = UpstreamError("loop", 502)
            return self._fail(client, direction, authority, peer, start, loop, body_done and head.keep_alive)
        try:
            upstream = self._send_upstream(address, data, direction, retry=body_done)
        except UpstreamError as error:
            return self._fail(client, direction, authority, peer, start, error, body_done and head.keep_alive)

        pump = None
        if not body_done:
            pump = gevent.spawn(self._pump_body, client, reader, upstream, chunked)
        try:
            return self._forward_response(
                client, reader, head, upstream, direction, authority, peer, start, pump
            )
        finally:
            if pump is not None and not pump.dead:
                pump.kill(block=False)

    def _send_upstream(self, address: Address, data: bytes, direction: str, retry: bool) -> Upstream:
        """Send a request head (and buffered body) on a pooled or new connection.

        A pooled connection the upstream closed meanwhile fails on send or with an empty read;
        a request we still hold whole is then retried once on a fresh connection.
        """
        upstream = self._checkout(address)
        reused = upstream is not None
        if upstream is None:
            upstream = self._connect(address, direction)
        try:
            _send(upstream.sock, data)
        except OSError:
            self._discard(upstream)
            if not (reused and retry):
                raise UpstreamError("reset") from None
            return self._send_fresh(address, data, direction)
        upstream.tcp.written += len(data)
        upstream.retry_payload = data if reused and retry else b""
        return upstream

    def _send_fresh(self, address: Address, data: bytes, direction: str) -> Upstream:
        """The one retry after a stale pooled connection: a new connection, never another pooled one."""
        upstream = self._connect(address, direction)
        try:
            _send(upstream.sock, data)
        except OSError:
            self._discard(upstream)
            raise UpstreamError("reset") from None
        upstream.tcp.written += len(data)
        return upstream

    def _forward_response(
        self,
        client: Client,
        reader: http1.RequestReader,
        request: Head,
        upstream: Upstream,
        direction: str,
        authority: str,
        peer: Labels,
        start: float,
        pump: gevent.Greenlet | None,
    ) -> bool:
        up_reader = upstream.reader
        up_reader.start(request.method)
        up_events = up_reader.events
        usock = upstream.sock
        got_bytes = False
        response_timeout = self.config.response_timeout
        upstream.deadline = self.now + response_timeout
        # Response head(s): relay 1xx, stop at the final one.
        while True:
            if not up_events:
                try:
                    data = _recv_when_readable(usock)
                except OSError:
                    data = b""
                if upstream.expired:
                    self._discard(upstream)
                    timeout = UpstreamError("timeout", 504)
                    return self._fail(client, direction, authority, peer, start, timeout, False)
                if not data:
                    self._discard(upstream)
                    if upstream.retry_payload and not got_bytes and pump is None:
                        try:  # the pooled connection was stale: one fresh attempt
                            upstream = self._send_fresh(upstream.address, upstream.retry_payload, direction)
                        except UpstreamError as error:
                            return self._fail(
                                client, direction, authority, peer, start, error, request.keep_alive
                            )
                        return self._forward_response(
                            client, reader, request, upstream, direction, authority, peer, start, None
                        )
                    reset = UpstreamError("reset")
                    reusable = pump is None and request.keep_alive
                    return self._fail(client, direction, authority, peer, start, reset, reusable)
                got_bytes = True
                upstream.tcp.read += len(data)
                try:
                    up_reader.feed(data)
                except ProtocolError:
                    self._discard(upstream)
                    return self._fail(
                        client, direction, authority, peer, start, UpstreamError("bad_response"),
                        pump is None and request.keep_alive,
                    )  # fmt: skip
                continue
            kind, response = up_events.popleft()
            if kind != HEAD:
                continue
            if response.status >= 200 or (response.status == 101 and request.upgrade is not None):
                break
            # 1xx go to HTTP/1.1 clients only (RFC 9110 §15.2).
            informational = http1.encode_response_head(response, "1.1", True, False, [])
            if request.version != "1.0" and not self._send_client(client, informational):
                self._discard(upstream)
                return False
        latency_ms = (time.monotonic() - start) * 1000.0
        if direction == OUTBOUND:
            peer = self.dst_labels.get(response.mesh.get(MESH_DST))
            if upstream.tcp.pending:
                self._attach(upstream, peer)
        extra = self._identity_extra(direction)

        if response.status == 101:
            self.metrics.response(direction, authority, peer, 101, "", latency_ms)
            out = http1.encode_response_head(response, "1.1", True, False, extra)
            if not self._send_client(client, out):
                self._discard(upstream)
                return False
            self._switch_protocols(client, reader, upstream)
            return False

        chunked_out, client_keep = http1.response_plan(response, request.version)
        keep = client_keep and request.keep_alive and request.upgrade is None and not self.draining
        out = http1.encode_response_head(response, request.version, keep, chunked_out, extra)
        pending = [out]
        pending_size = len(out)
        failure = ""
        while True:
            if up_events:
                kind, data = up_events.popleft()
                if kind == BODY:
                    if chunked_out:
                        pending.append(b"%x\r\n" % len(data))
                        pending.append(data)
                        pending.append(b"\r\n")
                    else:
                        pending.append(data)
                    pending_size += len(data)
                    if pending_size >= SEND_BATCH:
                        if not self._flush(client, pending):
                            failure = "client_gone"
                            break
                        pending, pending_size = [], 0
                    continue
                if kind == END:
                    if chunked_out:
                        pending.append(http1.last_chunk(data))
                    break
                continue
            if pending and not self._flush(client, pending):
                failure = "client_gone"
                break
            pending, pending_size = [], 0
            upstream.deadline = self.now + response_timeout  # the body may take long, but not stall long
            try:
                data = usock.recv(RECV)
            except OSError:
                data = b""
            if upstream.expired:
                failure = "timeout"
                break
            if not data:
                if up_reader.eof():
                    continue
                failure = "reset"
                break
            upstream.tcp.read += len(data)
            try:
                up_reader.feed(data)
            except ProtocolError:
                failure = "bad_response"
                break
        if not failure and pending and not self._flush(client, pending):
            failure = "client_gone"
        if failure:
            self._discard(upstream)
            self.metrics.response(direction, authority, peer, response.status, failure, latency_ms)
            return False
        self.metrics.response(direction, authority, peer, response.status, "", latency_ms)
        if self.debug:  # method and status only: targets may carry tokens, bodies are never logged
            self.log.debug(
                "request", direction=direction, authority=authority, method=request.method.decode(),
                status=response.status, latency_ms=round(latency_ms, 3),
            )  # fmt: skip
        # A pump still running means the upstream answered before the whole request body arrived.
        body_sent = pump is None or (pump.dead and bool(pump.value))
        if response.keep_alive and body_sent and request.upgrade is None and not up_reader.broken:
            self._checkin(upstream)
        else:
            self._discard(upstream)
        return keep and body_sent

    def _flush(self, client: Client, pending: list[bytes]) -> bool:
        if len(pending) == 1:
            return self._send_client(client, pending[0])
        total = sum(map(len, pending))
        if total <= JOIN_LIMIT:
            return self._send_client(client, b"".join(pending))
        client.deadline = self.now + self.config.idle_timeout
        try:
            _send_parts(client.sock, pending, total)
        except OSError:
            return False
        client.tcp.written += total
        return True

    def _fail(
        self,
        client: Client,
        direction: str,
        authority: str,
        peer: Labels,
        start: float,
        error: UpstreamError,
        client_reusable: bool,
    ) -> bool:
        """Answer 502/504 for an upstream that failed before a response head; count it."""
        latency_ms = (time.monotonic() - start) * 1000.0
        self.metrics.response(direction, authority, peer, error.status, error.error, latency_ms)
        self._log_upstream_error(direction, authority, error.error)
        out = http1.error_response(error.status, self._identity_extra(direction), close=not client_reusable)
        return self._send_client(client, out) and client_reusable and not self.draining

    def _pump_body(
        self, client: Client, reader: http1.RequestReader, upstream: Upstream, chunked: bool
    ) -> bool:
        """Stream the rest of a request body to the upstream while the response is awaited."""
        events = reader.events
        sock = client.sock
        usock = upstream.sock
        try:
            while True:
                while events:
                    kind, data = events[0]
                    if kind == BODY:
                        events.popleft()
                        if chunked and len(data) > JOIN_LIMIT:
                            parts = [b"%x\r\n" % len(data), data, b"\r\n"]
                            size = len(data) + len(parts[0]) + 2
                            _send_parts(usock, parts, size)
                        else:
                            out = http1.chunk(data) if chunked else data
                            _send(usock, out)
                            size = len(out)
                        upstream.tcp.written += size
                    elif kind == END:
                        events.popleft()
                        if chunked:
                            end = http1.last_chunk(data)
                            _send(usock, end)
                            upstream.tcp.written += len(end)
                        return True
                    else:
                        return False
                client.deadline = self.now + self.config.idle_timeout
                data = sock.recv(RECV)
                if not data:
                    raise ConnectionResetError
                client.tcp.read += len(data)
                reader.feed(data)
        except (OSError, ProtocolError):
            _shutdown(usock)  # the upstream must not wait for a body that will never come
            return False

    def _switch_protocols(self, client: Client, reader: http1.RequestReader, upstream: Upstream) -> None:
        """After 101: both sides speak something else; relay bytes both ways until both end."""
        client_left = b"".join(d for k, d in reader.events if k == UPGRADE and d)
        up_left = b"".join(d for k, d in upstream.reader.events if k in (UPGRADE, BODY) and d)
        self._relay(client, upstream, client_left, up_left)
        self._discard(upstream)

    def _connect_tunnel(self, client: Client, reader: http1.RequestReader, head: Head) -> None:
        """CONNECT host:port (https through `https_proxy`): a TCP tunnel, counted as TCP only."""
        address = http1.split_authority(head.target, 443)
        if address is None or address in self.own_addresses:
            self._send_client(client, http1.error_response(400))
            return
        try:
            upstream = self._connect(address, OUTBOUND)
        except UpstreamError as error:
            self._send_client(client, http1.error_response(error.status))
            return
        if not self._send_client(client, b"HTTP/1.1 200 Connection Established\r\n\r\n"):
            self._discard(upstream)
            return
        left = b"".join(d for k, d in reader.events if k == UPGRADE and d)
        self._relay(client, upstream, left, b"")
        self._discard(upstream)

    # --- upstream connections ---------------------------------------------------------------------
    def _checkout(self, address: Address) -> Upstream | None:
        idle = self.pool.get(address)
        now = time.monotonic()
        while idle:
            upstream = idle.pop()
            idle_for = now - upstream.idle_since
            # Peek only after a pause: a connection used a moment ago is alive, and if not, retry covers it.
            if idle_for < 1.0 or (idle_for < self.pool_idle_seconds and _alive(upstream.sock)):
                self.busy_upstreams.add(upstream)
                return upstream
            self._discard(upstream)
        return None

    def _checkin(self, upstream: Upstream) -> None:
        self.busy_upstreams.discard(upstream)
        upstream.deadline = 0.0
        idle = self.pool.setdefault(upstream.address, [])
        if len(idle) >= self.pool_max_per_destination or self.draining:
            self._discard(upstream)
            return
        upstream.idle_since = time.monotonic()
        idle.append(upstream)

    def _discard(self, upstream: Upstream) -> None:
        self.busy_upstreams.discard(upstream)
        if upstream.sock is not None:
            _close(upstream.sock)
            upstream.sock = None
            if upstream.tcp.pending:
                self._attach(upstream, NO_LABELS)
            self.metrics.tcp_close(upstream.tcp)

    def _connect(self, address: Address, direction: str) -> Upstream:
        try:
            sock = socket.create_connection(address, timeout=self.config.connect_timeout)
        except ConnectionRefusedError:
            raise UpstreamError("connect_refused") from None
        except TimeoutError:
            raise UpstreamError("connect_timeout", 504) from None
        except stdsocket.gaierror:
            raise UpstreamError("resolve_error") from None
        except OSError:
            raise UpstreamError("connect_error") from None
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        sock.settimeout(None)  # deadlines are the watchdog's job
        upstream = Upstream(sock, address, self._tcp_connection(direction, "dst", _hostport(address)))
        self.busy_upstreams.add(upstream)
        return upstream

    # --- opaque TCP -------------------------------------------------------------------------------
    def _relay_to(self, client: Client, dest: Address, first: bytes, direction: str) -> None:
        if dest in self.own_addresses:
            return
        try:
            upstream = self._connect(dest, direction)
        except UpstreamError as error:
            self._log_upstream_error(direction, _hostport(dest), error.error)
            return
        try:
            self._relay(client, upstream, first, b"")
        finally:
            self._discard(upstream)

    def _relay(self, client: Client, upstream: Upstream, to_upstream: bytes, to_client: bytes) -> None:
        # Opaque bytes name no peer; an upgraded connection keeps the labels its HTTP exchange gave it.
        if client.tcp.pending:
            self._attach(client, NO_LABELS)
        if upstream.tcp.pending:
            self._attach(upstream, NO_LABELS)
        usock, utcp = upstream.sock, upstream.tcp
        csock = client.sock
        csock.settimeout(None)
        usock.settimeout(None)
        client.deadline = upstream.deadline = 0.0  # a relayed stream may stay quiet as long as it likes
        try:
            if to_upstream:
                usock.sendall(to_upstream)
                utcp.written += len(to_upstream)
            if to_client:
                csock.sendall(to_client)
                client.tcp.written += len(to_client)
        except OSError:
            return
        back = gevent.spawn(_pipe, usock, csock, utcp, client.tcp)
        _pipe(csock, usock, client.tcp, utcp)
        back.join()

    # --- lifecycle --------------------------------------------------------------------------------
    def drain(self) -> None:
        """SIGTERM: stop accepting, close idle keep-alive clients, let in-flight requests finish."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        self.log.info("draining", grace_seconds=self.config.shutdown_grace, connections=len(self.clients))
        for listener in self.listeners:
            _close(listener)
        for client in list(self.clients):
            if not client.busy:
                _shutdown(client.sock)
        for idle in self.pool.values():
            for upstream in idle:
                self._discard(upstream)
        self.pool.clear()
        self.stopped.set()

    def wait_drained(self) -> bool:
        deadline = time.monotonic() + self.config.shutdown_grace
        while self.clients and time.monotonic() < deadline:
            for client in list(self.clients):
                if not client.busy:
                    _shutdown(client.sock)
            gevent.sleep(0.05)
        return not self.clients


def _take_buffered_body(events: Any, payload: list[bytes], chunked: bool) -> bool:
    """Move the body events already parsed into `payload`; True if the whole body was there."""
    while events:
        kind, data = events[0]
        if kind == BODY:
            events.popleft()
            payload.append(http1.chunk(data) if chunked else data)
        elif kind == END:
            events.popleft()
            if chunked:
                payload.append(http1.last_chunk(data))
            return True
        else:
            return True
    return False


def _recv_when_readable(sock: Any) -> bytes:
    """recv for when data is probably not there yet (the next request, a response).

    gevent's recv tries first and waits on EAGAIN, which costs an exception per call on
    exactly these reads; waiting on the socket's own read watcher first skips it.
    """
    sock._wait(sock._read_event)
    try:
        return sock._sock.recv(RECV)
    except BlockingIOError:
        return sock.recv(RECV)


def _send_parts(sock: Any, parts: list[bytes], total: int) -> None:
    """Scatter/gather send: big body pieces go out without being copied into one buffer."""
    views = [memoryview(p) for p in parts if p]
    while True:
        sent = sock.sendmsg(views)
        total -= sent
        if total <= 0:
            return
        while sent:  # drop what went out, keep the rest of a piece that went out in part
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0


def _send(sock: Any, data: bytes) -> None:
    """sendall, minus gevent's per-call setup when (as almost always) one send() takes it all."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _pipe(src: Any, dst: Any, src_tcp: Tcp, dst_tcp: Tcp) -> None:
    try:
        while True:
            data = src.recv(RECV)
            if not data:
                break
            src_tcp.read += len(data)
            dst.sendall(data)
            dst_tcp.written += len(data)
    except OSError:
        _shutdown(src)
    _shutdown(dst, stdsocket.SHUT_WR)


def _shutdown(sock: Any, how: int = stdsocket.SHUT_RDWR) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _hostport(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run(config: ProxyConfig, on_ready: Callable[[Proxy], None] | None = None) -> int:
    """`mesh-proxy run`: serve until SIGTERM/SIGINT, drain, exit 0 (1 if a listener cannot bind)."""
    from .admin import serve_admin

    log = Logger(config.log_level)
    proxy = Proxy(config, log)
    try:
        admin = serve_admin(proxy, (config.admin_addr, config.admin_port))
        proxy.bind((config.inbound_addr, config.inbound_port), INBOUND)
        proxy.bind((config.outbound_addr, config.outbound_port), OUTBOUND)
    except OSError as error:
        log.error("bind_failed", error=str(error))
        return 1
    proxy.start_watchdog()
    gevent.signal_handler(signal.SIGTERM, proxy.drain)
    gevent.signal_handler(signal.SIGINT, proxy.drain)
    proxy.ready = True
    log.info(
        "ready",
        inbound=f"{config.inbound_addr}:{config.inbound_port}",
        outbound=f"{config.outbound_addr}:{config.outbound_port}",
        admin=f"{config.admin_addr}:{config.admin_port}",
        inbound_forward=_hostport(config.inbound_forward) if config.inbound_forward else "original-dst",
        identity=proxy.identity.decode() if proxy.identity else "none",
    )
    if on_ready is not None:
        on_ready(proxy)
    proxy.stopped.wait()
    drained = proxy.wait_drained()
    admin.stop(timeout=1)
    log.info("stopped", drained=drained)
    return 0
