"""The proxy's two kinds of connection (a client's, an upstream) and the socket calls they share.

No HTTP here: these move bytes and keep the per-connection state that the watchdog and the
metrics read. Deadlines are plain numbers on a coarse clock; the watchdog (server.py) enforces
them, so the hot path never arms a timer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket as stdsocket
import struct
from typing import Any

from . import http1
from .metrics import Tcp

RECV = 65536
HEAD_RECV = 4096  # reads while a request head is awaited: what one read can queue stays small
IOV_MAX = 1024  # buffers one sendmsg takes (Linux); more fail with EMSGSIZE
JOIN_LIMIT = 16384  # below this, pieces are joined (one copy is cheaper than sendmsg's setup)
SO_ORIGINAL_DST = 80
Address = tuple[str, int]


class UpstreamError(Exception):
    """Talking to the upstream failed; `error` is the metric label, `status` the client's answer."""

    def __init__(self, error: str, status: int = 502) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


class Client:
    """A connection accepted on the inbound or outbound listener."""

    __slots__ = ("busy", "deadline", "expired", "sock", "tcp")

    def __init__(self, sock: Any, tcp: Tcp) -> None:
        self.sock = sock
        self.tcp = tcp
        self.busy = False  # a request (or a relay) is in flight: drain waits for it
        self.deadline = 0.0  # the watchdog shuts the socket after this (coarse clock); 0 = none
        self.expired = False


class Upstream:
    """A connection to an upstream with its response parser; lives in the pool between requests."""

    __slots__ = (
        "address", "deadline", "direction", "expired", "idle_since", "reader", "retry_payload", "sock",
        "stray", "tcp", "write_deadline",
    )  # fmt: skip

    def __init__(self, sock: Any, address: Address, direction: str, tcp: Tcp) -> None:
        self.sock = sock
        self.address = address
        self.direction = direction  # pooled apart per direction: its TCP series names it
        self.reader = http1.ResponseReader()
        self.tcp = tcp
        self.idle_since = 0.0
        self.stray = False  # the upstream sent bytes or a FIN while idle in the pool
        # Set only on a reused connection, and only when the request may be sent again (see pool.py).
        self.retry_payload = b""
        self.deadline = 0.0  # while the proxy waits to read from it (the response)
        self.write_deadline = 0.0  # while a send of the request body to it is blocked
        self.expired = False


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


def reaches_own_port(sock: Any, own_ports: frozenset[int]) -> bool:
    """True if a connected socket ends at one of this host's own `own_ports`, however it was named.

    The address is the kernel's answer after resolution, so `localhost`, `127.1`, `2130706433`,
    `0.0.0.0`, `[::ffff:127.0.0.1]` and the pod's own IP all come out the same. A peer on this
    host is a loopback address, or the very address the connection leaves from.
    """
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return False
    if peer[1] not in own_ports:
        return False
    host = peer[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or host == local[0]


def recv_when_readable(sock: Any, size: int = RECV) -> bytes:
    """recv for when data is probably not there yet (the next request, a response).

    gevent's recv tries first and waits on EAGAIN, which costs an exception per call on
    exactly these reads; waiting on the socket's own read watcher first skips it.
    """
    sock._wait(sock._read_event)
    try:
        return sock._sock.recv(size)
    except BlockingIOError:
        return sock.recv(size)


def send(sock: Any, data: bytes) -> None:
    """sendall, minus gevent's per-call setup when (as almost always) one send() takes it all."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def send_pieces(sock: Any, pieces: list[bytes]) -> int:
    """Send pieces in order; returns the byte count. Small ones are joined, big ones gathered."""
    if len(pieces) == 1:
        data = pieces[0]
        send(sock, data)
        return len(data)
    total = sum(map(len, pieces))
    if total <= JOIN_LIMIT:
        send(sock, b"".join(pieces))
        return total
    views = [memoryview(p) for p in pieces if p]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + IOV_MAX])
        while sent:  # step past what went out, keep the rest of a piece that went out in part
            size = len(views[first])
            if sent >= size:
                sent -= size
                first += 1
            else:
                views[first] = views[first][sent:]
                sent = 0
    return total


def shutdown(sock: Any, how: int = stdsocket.SHUT_RDWR) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def hostport(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_address(client: Client) -> str:
    """`host:port` of a client (for the tap's unmeshed ends); "-" when the socket cannot say."""
    try:
        return hostport(client.sock.getpeername())
    except (OSError, ValueError, TypeError):
        return "-"
