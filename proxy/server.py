"""The proxy process: listeners, one greenlet per client connection, the watchdog, and drain.

One process serves inbound (4143), outbound (4140) and admin (4191). A connection's first bytes
decide how it is served: HTTP/1 (exchange.py), HTTP/2 (h2proxy.py) or opaque bytes (tunnel.py);
upstream connections come from the pools (pool.py, and h2proxy.H2Pool for HTTP/2). Every
resource is bounded: connections per listener (with descriptors kept in reserve for the admin
listener), idle pooled connections, time to a request head, label bytes (metrics.py), HTTP/2
streams, windows and floods (h2rules.py).
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import signal
import socket as stdsocket
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.select
from gevent import socket

from kubectl_mesh.log import Logger

from . import h2proxy, http1, tunnel
from .config import ProxyConfig
from .connections import (
    HEAD_RECV,
    Address,
    Client,
    Upstream,
    UpstreamError,
    close,
    hostport,
    original_destination,
    peer_address,
    send,
    shutdown,
)
from .detect import Protocol, detect
from .exchange import INBOUND, OUTBOUND, serve_http
from .http1 import MESH_DST, ProtocolError
from .identity import NO_LABELS, Labels, PeerLabelCache
from .metrics import AUTHORITY_MAX, MeshMetrics, Tcp, authority_label
from .pool import UpstreamPool
from .tap import TapHub, TapRequest

# Descriptors never used by app traffic, so that /live, /ready and /metrics answer when it has
# used up the rest (each proxied connection may hold two: the client's and its upstream's).
FD_RESERVE = 64
# The default cap also keeps memory under the injected 256Mi: a connection in a request head
# holds ~12 KiB (measured), one in an exchange a few times that.
MAX_CONNECTIONS_DEFAULT = 4096
_AUTHORITY_MEMO = 4096


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (as Envoy and Linkerd do); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Proxy:
    def __init__(self, config: ProxyConfig, log: Logger, metrics: MeshMetrics | None = None) -> None:
        self.config = config
        self.log = log
        self.metrics = metrics or MeshMetrics(config.max_series, config.series_idle_seconds)
        self.identity = config.identity.header_value() if config.identity else None
        self.inbound_reply_extra = [(MESH_DST, self.identity)] if self.identity is not None else []
        self.hop_id = secrets.token_hex(6).encode()  # this process in x-mesh-via (loop detection)
        self.src_labels = PeerLabelCache("src")
        self.dst_labels = PeerLabelCache("dst")
        self.own_ports: set[int] = set()
        self.pool = UpstreamPool(self.metrics, self._tcp_connection, config.connect_timeout, frozenset())
        self.tap = TapHub()  # `tap.active` is all an untapped request pays
        self.h2pool = h2proxy.H2Pool(self)
        self.h2_sessions: set[h2proxy.Session] = set()
        self.clients: set[Client] = set()
        self.open_per_listener: dict[str, int] = {INBOUND: 0, OUTBOUND: 0}
        fd_limit = raise_fd_limit()
        auto = max(16, min(MAX_CONNECTIONS_DEFAULT, (fd_limit - FD_RESERVE - self.pool.max_idle) // 4))
        self.max_connections = config.max_connections or auto
        self.now = time.monotonic()  # coarse clock for deadlines, advanced by the watchdog
        self.tick = min(0.1, config.response_timeout / 4, config.idle_timeout / 4, config.header_timeout / 4)
        self.ready = False
        self.draining = False
        self.listeners: list[Any] = []
        self.stopped = gevent.event.Event()
        self.debug = log.enabled("debug")
        self._authorities: dict[bytes, str] = {}  # Host value → label value, memoised
        self._log_limits: dict[tuple[str, ...], tuple[float, int]] = {}

    # --- deadlines ------------------------------------------------------------------------------
    def start_watchdog(self) -> None:
        gevent.spawn(self._watchdog)

    def _watchdog(self) -> None:
        """Enforce deadlines for every socket from one greenlet.

        Sockets carry no gevent timeout on the hot path (that would arm and cancel a timer on
        every wait); instead each connection notes a deadline, and an overdue socket is shut
        down here, so its blocked recv/send returns and the handler sees `expired`. A client is
        first shut for reading only, so that it can still be told why (408); a send to it that is
        still blocked a second later is cut too.
        """
        next_sweep = 0.0
        while True:
            gevent.sleep(self.tick)
            self.now = self.pool.now = now = time.monotonic()
            for client in list(self.clients):
                deadline = client.deadline
                if deadline and now > deadline:
                    if not client.expired:
                        client.expired = True
                        shutdown(client.sock, stdsocket.SHUT_RD)
                    elif now > deadline + 1.0:
                        shutdown(client.sock)
            for upstream in list(self.pool.busy):
                if upstream.expired:
                    continue
                read, write = upstream.deadline, upstream.write_deadline
                if (read and now > read) or (write and now > write):
                    upstream.expired = True
                    if upstream.sock is not None:
                        shutdown(upstream.sock)
            for session in list(self.h2_sessions):
                if session.streams:
                    session.expire_streams(now)
            if now > next_sweep:
                next_sweep = now + 1.0
                self.pool.expire_idle(now)
                self.h2pool.expire_idle(now)

    # --- listeners ------------------------------------------------------------------------------
    def bind(self, address: Address, direction: str) -> Any:
        listener = socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        listener.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
        self.listeners.append(listener)
        self.add_own_port(listener.getsockname()[1])
        gevent.spawn(self._accept_loop, listener, direction)
        return listener

    # --- tap (only while someone taps: tap.active) ------------------------------------------------
    def tap_request(
        self, direction: str, client: Client, claimed_src: bytes | None, src_known: bool,
        method: bytes, authority: str, path: bytes,
    ) -> TapRequest | None:  # fmt: skip
        """The `req` event of one HTTP/1 request or HTTP/2 stream: who asked whom for what. An
        inbound caller is its identity when its proxy vouched for it, else its address."""
        own = self.identity.decode() if self.identity else "-"
        if direction == INBOUND:
            src = claimed_src.decode("latin-1") if claimed_src and src_known else peer_address(client)
            dst = own
        else:
            src, dst = own, authority
        inbound = direction == INBOUND
        return self.tap.request(
            "in" if inbound else "out", method.decode("latin-1"), authority, path.decode("latin-1"), src, dst
        )

    def tap_callee(self, direction: str, claimed_dst: bytes | None, dst_known: bool) -> str | None:
        """Who answered, for the `rsp` event: this workload inbound, the answer's claim outbound."""
        if direction == OUTBOUND:
            return claimed_dst.decode("latin-1") if claimed_dst and dst_known else None
        return self.identity.decode() if self.identity else None

    def add_own_port(self, port: int) -> None:
        """A port of this proxy: a connection from the proxy to it, by any address, is a loop."""
        self.own_ports.add(port)
        self.pool.own_ports = frozenset(self.own_ports)

    def _accept_loop(self, listener: Any, direction: str) -> None:
        while not self.draining:
            try:
                sock, peer = listener.accept()
            except OSError:
                if self.draining:
                    return
                gevent.sleep(0.01)  # EMFILE and friends: back off, keep serving
                continue
            # Counted here, not in the handler: accept() does not yield while connections are
            # queued, so a burst from the backlog must meet the cap one by one.
            if self.open_per_listener[direction] >= self.max_connections:
                close(sock)  # over the cap: refused at once rather than left to hang
                self.log_limited("connection_refused", direction=direction, reason="max_connections")
                continue
            self.open_per_listener[direction] += 1
            gevent.spawn(self._handle, sock, peer, direction)

    # --- one client connection --------------------------------------------------------------------
    def _handle(self, sock: Any, peer: Any, direction: str) -> None:
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        dest = self._destination(sock, direction)
        client = Client(sock, self._tcp_connection(direction, "src", hostport(dest) if dest else ""))
        self.clients.add(client)
        try:
            if dest is None:
                if direction == INBOUND:
                    self.log.warning("no_destination", direction=direction, client=hostport(peer))
                    return
                # The forward proxy has no destination of its own: a connection can only be HTTP,
                # and a quiet client is just early, not a server-speaks-first protocol.
                protocol, first = self._detect(client, self.config.idle_timeout)
                if protocol is Protocol.HTTP1:
                    serve_http(self, client, first, None, direction)
                elif protocol is Protocol.HTTP2:  # routed per stream by :authority
                    h2proxy.serve_h2(self, client, first, None, direction)
                return
            if dest[1] in self.config.opaque_ports:
                self._relay_to(client, dest, b"", direction)
                return
            protocol, first = self._detect(client, self.config.detect_timeout)
            if protocol is Protocol.HTTP1:
                serve_http(self, client, first, dest, direction)
            elif protocol is Protocol.HTTP2:
                h2proxy.serve_h2(self, client, first, dest, direction)
            elif protocol is Protocol.OPAQUE or (protocol is None and first):
                self._relay_to(client, dest, first, direction)
            elif protocol is Protocol.NEED_MORE:  # quiet: whoever speaks first decides
                try:
                    upstream = self.pool.connect(dest, direction)
                except UpstreamError as error:
                    self.log_upstream_error(direction, hostport(dest), error.error)
                    return
                self.serve_connected(client, upstream, first, dest, direction)
        except Exception as error:  # one connection never takes the proxy down
            self.log.warning("connection_error", direction=direction, error=type(error).__name__)
        finally:
            self.open_per_listener[direction] -= 1
            self.clients.discard(client)
            close(sock)
            if client.tcp.pending:
                self.attach(client, NO_LABELS)
            self.metrics.tcp_close(client.tcp)

    def _destination(self, sock: Any, direction: str) -> Address | None:
        if direction == INBOUND and self.config.inbound_forward:
            return self.config.inbound_forward
        return original_destination(sock)

    def _detect(self, client: Client, patience: float) -> tuple[Protocol | None, bytes]:
        """Read until the first bytes tell HTTP/1 from anything else.

        NEED_MORE: the client stayed quiet for `patience` (with what it sent so far); None: it
        closed first.
        """
        sock = client.sock
        deadline = time.monotonic() + patience
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Protocol.NEED_MORE, buf
            sock.settimeout(remaining)
            try:
                data = sock.recv(HEAD_RECV)
            except TimeoutError:
                return Protocol.NEED_MORE, buf
            except OSError:
                return None, b""
            if not data:
                return None, buf
            client.tcp.read += len(data)
            buf += data
            protocol = detect(buf)
            if protocol is not Protocol.NEED_MORE:
                sock.settimeout(None)
                return protocol, buf

    def serve_connected(
        self, client: Client, upstream: Upstream, first: bytes, dest: Address, direction: str
    ) -> None:
        """Serve a connection whose upstream is open before anything told its protocol.

        The rule is the same on both sides of a hop, whatever the timing: the client's first
        bytes decide (HTTP/1 or opaque), unless the upstream speaks first (a server-speaks-first
        protocol: opaque). So a client proxy never relays, unparsed, an HTTP request that the
        server-side proxy would parse, and an app cannot pass identity headers through.
        """
        sock = client.sock
        sock.settimeout(None)
        buf = first
        protocol = detect(buf)
        while protocol is Protocol.NEED_MORE:
            readable, _, _ = gevent.select.select([sock, upstream.sock], [], [], self.config.idle_timeout)
            if upstream.sock in readable:
                break  # the server spoke first (or closed): opaque
            data = b""
            if readable:
                with contextlib.suppress(OSError):
                    data = sock.recv(HEAD_RECV)
            if not data:
                # Silence is never a reason to relay unparsed bytes: more could follow that the
                # other side would parse as HTTP. Only a client that ended after starting
                # something (nothing can follow) gets those bytes passed on.
                if not readable or not buf:
                    self.pool.discard(upstream)
                    return
                break
            client.tcp.read += len(data)
            buf += data
            protocol = detect(buf)
        if protocol is Protocol.HTTP1:
            self.pool.checkin(upstream)  # unused and clean: the first exchange takes it
            serve_http(self, client, buf, dest, direction)
            return
        if protocol is Protocol.HTTP2:  # streams go on the destination's shared h2 connections
            self.pool.discard(upstream)
            h2proxy.serve_h2(self, client, buf, dest, direction)
            return
        try:
            tunnel.relay(self, client, upstream, buf, b"")
        finally:
            self.pool.discard(upstream)

    def _relay_to(self, client: Client, dest: Address, first: bytes, direction: str) -> None:
        try:
            upstream = self.pool.connect(dest, direction)
        except UpstreamError as error:
            self.log_upstream_error(direction, hostport(dest), error.error)
            return
        try:
            tunnel.relay(self, client, upstream, first, b"")
        finally:
            self.pool.discard(upstream)

    # --- shared by the exchange and the tunnels ---------------------------------------------------
    def _tcp_connection(self, direction: str, peer: str, authority: str) -> Tcp:
        """The side facing the other workload (inbound clients, outbound upstreams) waits to be
        labelled with it until the first request or response names it (see metrics.py)."""
        facing_peer = (direction == INBOUND) == (peer == "src")
        return self.metrics.tcp_connection(direction, peer, authority, wait_for_peer=facing_peer)

    def attach(self, holder: Client | Upstream, workload: Labels) -> None:
        """Count a connection under its peer's workload labels from now on (see metrics.py)."""
        holder.tcp = self.metrics.tcp_attach(holder.tcp, workload)

    def authority_label(self, raw: bytes) -> str:
        """The `authority` label of a Host value, memoised (only short ones: the memo is bounded)."""
        label = self._authorities.get(raw)
        if label is None:
            label = authority_label(raw)
            if len(raw) <= AUTHORITY_MAX:
                if len(self._authorities) >= _AUTHORITY_MEMO:
                    self._authorities.clear()
                self._authorities[raw] = label
        return label

    def send_client(self, client: Client, data: bytes) -> bool:
        client.deadline = self.now + self.config.idle_timeout
        try:
            send(client.sock, data)
        except OSError:
            return False
        client.tcp.written += len(data)
        return True

    def reject(self, client: Client, error: ProtocolError, direction: str, count: bool = True) -> None:
        """Answer a request the proxy will not forward, and close the connection."""
        self.log.info("bad_request", direction=direction, status=error.status, reason=error.reason)
        self.send_client(client, http1.error_response(error.status, detail=error.reason.encode()))
        if count:
            self.metrics.response(direction, "", NO_LABELS, error.status, "", 0.0)

    def log_upstream_error(self, direction: str, authority: str, error: str) -> None:
        self.log_limited("upstream_error", direction=direction, authority=authority, error=error)

    def log_limited(self, event: str, level: str = "info", **fields: str) -> None:
        """One line per event and fields per second: an outage or a flood must not flood the log."""
        key = (event, *fields.values())
        last, suppressed = self._log_limits.get(key, (0.0, 0))
        if self.now - last < 1.0:
            self._log_limits[key] = (last, suppressed + 1)
            return
        if len(self._log_limits) > 1000:
            self._log_limits.clear()
        self._log_limits[key] = (self.now, 0)
        self.log.log(level, event, **fields, suppressed=suppressed)

    # --- lifecycle --------------------------------------------------------------------------------
    def drain(self) -> None:
        """SIGTERM: stop accepting, close clients with nothing in flight, let requests finish."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        self.log.info("draining", grace_seconds=self.config.shutdown_grace, connections=len(self.clients))
        for listener in self.listeners:
            close(listener)
        for session in list(self.h2_sessions):
            session.goaway()
        self._close_idle_clients()
        self.pool.close()
        self.stopped.set()

    def _close_idle_clients(self) -> None:
        """Clients between requests, still sending a head, or silent since they connected."""
        for client in list(self.clients):
            if not client.busy:
                shutdown(client.sock)

    def wait_drained(self) -> bool:
        deadline = time.monotonic() + self.config.shutdown_grace
        while self.clients and time.monotonic() < deadline:
            self._close_idle_clients()
            gevent.sleep(0.05)
        return not self.clients


def run(config: ProxyConfig, on_ready: Callable[[Proxy], None] | None = None) -> int:
    """`mesh-proxy run`: serve until SIGTERM/SIGINT, drain, exit 0 (1 if a listener cannot bind)."""
    from .admin import serve_admin
    from .tap import serve_tap

    log = Logger(config.log_level, config.log_format)
    proxy = Proxy(config, log)
    tap = None
    try:
        admin = serve_admin(proxy, (config.admin_addr, config.admin_port))
        proxy.add_own_port(admin.server_port)
        if config.tap_port:  # the pod's loopback only: reached through pods/portforward (RBAC)
            tap = serve_tap(proxy.tap, ("127.0.0.1", config.tap_port))
            proxy.add_own_port(tap.server_port)
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
        tap=f"127.0.0.1:{config.tap_port}" if tap is not None else "off",
        inbound_forward=hostport(config.inbound_forward) if config.inbound_forward else "original-dst",
        identity=proxy.identity.decode() if proxy.identity else "none",
        max_connections=proxy.max_connections,
        hpack=h2proxy.hpack_in_use(),
    )
    if on_ready is not None:
        on_ready(proxy)
    proxy.stopped.wait()
    drained = proxy.wait_drained()
    if tap is not None:
        tap.stop(timeout=1)
    admin.stop(timeout=1)
    log.info("stopped", drained=drained)
    return 0
