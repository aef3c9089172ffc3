"""Bytes both ways with no HTTP in between: opaque TCP, protocols switched by a 101, CONNECT tunnels.

Such a connection names no peer workload: it is counted as TCP only (see metrics.py), and an
upgraded one keeps the labels its HTTP exchange gave it.
"""

from __future__ import annotations

import socket as stdsocket
from typing import TYPE_CHECKING, Any

import gevent

from . import http1
from .connections import RECV, Client, Upstream, UpstreamError, shutdown
from .http1 import BODY, UPGRADE, Head
from .identity import NO_LABELS
from .metrics import Tcp

if TYPE_CHECKING:
    from .server import Proxy

OUTBOUND = "outbound"
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


def relay(proxy: Proxy, client: Client, upstream: Upstream, to_upstream: bytes, to_client: bytes) -> None:
    """Copy bytes both ways until both sides have finished; then the caller closes the upstream."""
    if client.tcp.pending:
        proxy.attach(client, NO_LABELS)
    if upstream.tcp.pending:
        proxy.attach(upstream, NO_LABELS)
    usock, csock = upstream.sock, client.sock
    csock.settimeout(None)
    usock.settimeout(None)
    client.deadline = upstream.deadline = 0.0  # a relayed stream may stay quiet as long as it likes
    client.busy = True
    try:
        if to_upstream:
            usock.sendall(to_upstream)
            upstream.tcp.written += len(to_upstream)
        if to_client:
            csock.sendall(to_client)
            client.tcp.written += len(to_client)
    except OSError:
        return
    back = gevent.spawn(_pipe, usock, csock, upstream.tcp, client.tcp)
    _pipe(csock, usock, client.tcp, upstream.tcp)
    back.join()


def switch_protocols(proxy: Proxy, client: Client, reader: http1.RequestReader, upstream: Upstream) -> None:
    """After 101: both sides speak something else; relay bytes both ways until both end."""
    client_left = b"".join(d for k, d in reader.events if k == UPGRADE and d)
    up_left = b"".join(d for k, d in upstream.reader.events if k in (UPGRADE, BODY) and d)
    try:
        relay(proxy, client, upstream, client_left, up_left)
    finally:
        proxy.pool.discard(upstream)


def connect(proxy: Proxy, client: Client, reader: http1.RequestReader, head: Head) -> None:
    """CONNECT host:port (explicit mode): a tunnel whose first bytes are judged like a new connection.

    HTTP inside the tunnel is served as HTTP (identity headers stripped and set by this proxy),
    so a tunnel cannot carry an app's forged identity to a peer's inbound proxy.
    """
    address = http1.split_authority(head.target, 443)
    if address is None:
        proxy.send_client(client, http1.error_response(400))
        return
    try:
        upstream = proxy.pool.connect(address, OUTBOUND)
    except UpstreamError as error:
        proxy.send_client(client, http1.error_response(error.status))
        return
    if not proxy.send_client(client, ESTABLISHED):
        proxy.pool.discard(upstream)
        return
    left = b"".join(d for k, d in reader.events if k == UPGRADE and d)
    proxy.serve_connected(client, upstream, left, address, OUTBOUND)


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
        shutdown(src)
    shutdown(dst, stdsocket.SHUT_WR)  # the other side sees the end of this direction
