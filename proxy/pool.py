"""Upstream connections: the one place that decides whether a connection may carry a request.

A connection goes back to the pool only when its response parser holds nothing more (no event,
no byte of a next message), and comes out only when the upstream has sent nothing while it was
idle: stray bytes from one response can never reach another client. An idle connection is
watched by the event loop (its read watcher, no syscall per reuse): bytes or a FIN mark it.
A request is sent again, on a fresh connection and at most once, only when a reused connection
turns out stale and the request may be repeated (no byte of it written, or an idempotent method).
"""

from __future__ import annotations

import socket as stdsocket
import time
from collections.abc import Callable

from gevent import socket

from . import connections
from .connections import Address, Upstream, UpstreamError
from .identity import NO_LABELS
from .metrics import MeshMetrics, Tcp


class UpstreamPool:
    def __init__(
        self,
        metrics: MeshMetrics,
        tcp_connection: Callable[[str, str, str], Tcp],
        connect_timeout: float,
        own_ports: frozenset[int],
        max_idle_per_destination: int = 64,
        max_idle: int = 512,
        idle_seconds: float = 30.0,
    ) -> None:
        self.metrics = metrics
        self.tcp_connection = tcp_connection
        self.connect_timeout = connect_timeout
        self.own_ports = own_ports
        self.max_idle_per_destination = max_idle_per_destination
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.idle: dict[tuple[str, Address], list[Upstream]] = {}
        self.idle_count = 0
        self.busy: set[Upstream] = set()  # checked out: the watchdog enforces their deadlines
        self.closed = False
        self.now = time.monotonic()  # a coarse clock, advanced by the proxy's watchdog

    # --- sending a request ---------------------------------------------------------------------
    def send(self, address: Address, data: bytes, direction: str, repeatable: bool) -> Upstream:
        """Send a request head (and its buffered body) on a pooled or a new connection.

        `repeatable`: the whole request is in `data` and its method is idempotent. A pooled
        connection that fails the send before any byte left is replaced by a fresh one whatever
        the method; one that took bytes only when `repeatable`.
        """
        upstream = self.checkout(address, direction)
        if upstream is None:
            upstream = self.connect(address, direction)
            self._send_first(upstream, data)
            return upstream
        sent = 0
        try:
            sent = upstream.sock.send(data)
            if sent < len(data):
                upstream.sock.sendall(memoryview(data)[sent:])
        except OSError:
            self.discard(upstream)
            if sent and not repeatable:
                raise UpstreamError("reset") from None
            return self._fresh(address, data, direction)
        upstream.tcp.written += len(data)
        upstream.retry_payload = data if repeatable else b""
        return upstream

    def resend(self, stale: Upstream, direction: str) -> Upstream:
        """The one retry after a reused connection closed without answering (see `send`)."""
        data = stale.retry_payload
        self.discard(stale)
        return self._fresh(stale.address, data, direction)

    def _fresh(self, address: Address, data: bytes, direction: str) -> Upstream:
        upstream = self.connect(address, direction)
        self._send_first(upstream, data)
        return upstream

    def send_on(self, upstream: Upstream, data: bytes) -> None:
        """Send on a connection of the caller's own (a tunnel's), never pooled."""
        self._send_first(upstream, data)

    def _send_first(self, upstream: Upstream, data: bytes) -> None:
        try:
            connections.send(upstream.sock, data)
        except OSError:
            self.discard(upstream)
            raise UpstreamError("reset") from None
        upstream.tcp.written += len(data)

    # --- the pool --------------------------------------------------------------------------------
    def checkout(self, address: Address, direction: str) -> Upstream | None:
        key = (direction, address)
        idle = self.idle.get(key)
        if not idle:
            return None
        now = self.now
        found = None
        while idle:
            upstream = idle.pop()
            self.idle_count -= 1
            upstream.sock._read_event.stop()
            if not upstream.stray and now - upstream.idle_since < self.idle_seconds:
                self.busy.add(upstream)
                found = upstream
                break
            self.discard(upstream)
        if not idle:
            del self.idle[key]
        return found

    def checkin(self, upstream: Upstream) -> None:
        """Keep a connection for the next request if it is clean, else close it."""
        self.busy.discard(upstream)
        upstream.deadline = upstream.write_deadline = 0.0
        upstream.retry_payload = b""
        key = (upstream.direction, upstream.address)
        idle = self.idle.get(key)
        if (
            self.closed
            or not upstream.reader.clean()
            or (idle is not None and len(idle) >= self.max_idle_per_destination)
            or self.idle_count >= self.max_idle
        ):
            self.discard(upstream)
            return
        upstream.idle_since = self.now
        upstream.stray = False
        upstream.sock._read_event.start(_on_idle_readable, upstream)
        if idle is None:
            self.idle[key] = [upstream]
        else:
            idle.append(upstream)
        self.idle_count += 1

    def discard(self, upstream: Upstream) -> None:
        self.busy.discard(upstream)
        if upstream.sock is not None:
            upstream.sock._read_event.stop()
            connections.close(upstream.sock)
            upstream.sock = None
            if upstream.tcp.pending:
                upstream.tcp = self.metrics.tcp_attach(upstream.tcp, NO_LABELS)
            self.metrics.tcp_close(upstream.tcp)

    def connect(self, address: Address, direction: str) -> Upstream:
        """A new connection; refuses one that ends at this proxy's own listeners (a loop)."""
        try:
            sock = socket.create_connection(address, timeout=self.connect_timeout)
        except ConnectionRefusedError:
            raise UpstreamError("connect_refused") from None
        except TimeoutError:
            raise UpstreamError("connect_timeout", 504) from None
        except stdsocket.gaierror:
            raise UpstreamError("resolve_error") from None
        except OSError:
            raise UpstreamError("connect_error") from None
        if connections.reaches_own_port(sock, self.own_ports):
            connections.close(sock)
            raise UpstreamError("loop", 400)
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        sock.settimeout(None)  # deadlines are the watchdog's job
        tcp = self.tcp_connection(direction, "dst", connections.hostport(address))
        upstream = Upstream(sock, address, direction, tcp)
        self.busy.add(upstream)
        return upstream

    def close(self) -> None:
        """Drain: close every idle connection and keep none from now on."""
        self.closed = True
        for idle in self.idle.values():
            for upstream in idle:
                self.discard(upstream)
        self.idle.clear()
        self.idle_count = 0

    def expire_idle(self, now: float) -> None:
        """Close connections idle too long (the watchdog calls this now and then)."""
        cutoff = now - self.idle_seconds
        for key in list(self.idle):
            idle = self.idle[key]
            keep = [u for u in idle if u.idle_since >= cutoff and not u.stray]
            for upstream in idle:
                if upstream.idle_since < cutoff or upstream.stray:
                    self.discard(upstream)
            self.idle_count -= len(idle) - len(keep)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]


def _on_idle_readable(upstream: Upstream) -> None:
    """The event loop saw bytes or a FIN on an idle pooled connection: it may not be reused."""
    upstream.stray = True
    if upstream.sock is not None:
        upstream.sock._read_event.stop()
