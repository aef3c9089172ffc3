"""The webhook worker's book of connections: phases, deadlines, a cap and a byte budget.

Pure bookkeeping (no sockets, no greenlets: a connection is an opaque `handle`), so the rules are
tested apart from the server that acts on them (`webhook/worker.py`).

A connection is always in one phase. Each waiting phase has a deadline, counted from the phase's
start (not from the last byte: a client that sends one byte a second still runs out of time):

| phase | waits for | deadline |
| --- | --- | --- |
| `handshake` | the client's first byte and the TLS handshake | `tls_timeout` |
| `idle` | the first byte of the next request (keep-alive) | `keepalive` |
| `head` | the rest of the request line and headers | `header_timeout` |
| `body` | the whole body | `body_timeout` |
| `busy` | the app and the response: never expired or evicted | none |

Every waiting connection is evictable. At `max_connections` a new connection makes the one that
has waited longest in its phase go (whatever the phase): the newcomer has just arrived, and a
real admission passes through the waiting phases in milliseconds, so it is the last to go. The
bodies being read hold at most `body_budget` bytes, each reserving its `Content-Length` (or the
largest body allowed, when chunked) before the first byte is read; a body that does not fit makes
the oldest bodies in flight go, and is refused only if the bodies left are all being answered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

HANDSHAKE = "handshake"
IDLE = "idle"
HEAD = "head"
BODY = "body"
BUSY = "busy"
WAITING = (HANDSHAKE, IDLE, HEAD, BODY)


@dataclass(frozen=True)
class Limits:
    """Per worker. Times in seconds, sizes in bytes."""

    tls_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive: float = 30.0
    max_connections: int = 1000
    body_budget: int = 16 * 1024 * 1024

    def timeout(self, phase: str) -> float:
        return {
            HANDSHAKE: self.tls_timeout,
            IDLE: self.keepalive,
            HEAD: self.header_timeout,
            BODY: self.body_timeout,
        }[phase]


@dataclass(eq=False)
class Conn:
    handle: Hashable
    phase: str = HANDSHAKE
    since: float = 0.0
    reserved: int = 0  # bytes of body budget held
    gone: bool = False  # expired or evicted: its handle has been told to stop
    why: str = ""  # "timeout" or "evicted", once gone
    _key: object = field(default_factory=object)


class ConnectionTable:
    """The connections of one worker. Callers act on what the methods return (close, refuse)."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._waiting: dict[str, OrderedDict[object, Conn]] = {p: OrderedDict() for p in WAITING}
        self.count = 0  # open connections, those told to stop included (they hold a descriptor)
        self.live = 0  # those not told to stop: the cap applies to these
        self.body_bytes = 0  # reserved by bodies in flight
        self._shed = {"expired": 0, "evicted": 0}

    def open(self, handle: Hashable) -> tuple[Conn, list[Conn]]:
        """A new connection, and the ones that must go to make room for it (at the cap)."""
        victims: list[Conn] = []
        while self.live >= self.limits.max_connections:
            oldest = self._oldest(WAITING)
            if oldest is None:
                break  # every connection is being answered: a short wait, not an eviction
            victims.append(self._drop(oldest, "evicted"))
        conn = Conn(handle, since=self._clock())
        self.count += 1
        self.live += 1
        self._waiting[HANDSHAKE][conn._key] = conn
        return conn, victims

    def enter(self, conn: Conn, phase: str) -> bool:
        """Move `conn` to `phase`; False if it has been told to stop (it must, then)."""
        if conn.gone:
            return False
        if conn.phase != BUSY:
            self._waiting[conn.phase].pop(conn._key, None)
        conn.phase = phase
        conn.since = self._clock()
        if phase != BUSY:
            self._waiting[phase][conn._key] = conn
        return True

    def reserve(self, conn: Conn, nbytes: int) -> tuple[bool, list[Conn]]:
        """Reserve budget for `conn`'s body: (granted, bodies that must go to make room)."""
        victims: list[Conn] = []
        while self.body_bytes + nbytes > self.limits.body_budget:
            oldest = self._oldest((BODY,), skip=conn)
            if oldest is None:
                return False, victims
            victims.append(self._drop(oldest, "evicted"))
        self.release(conn)
        conn.reserved = nbytes
        self.body_bytes += nbytes
        return True, victims

    def release(self, conn: Conn) -> None:
        self.body_bytes -= conn.reserved
        conn.reserved = 0

    def close(self, conn: Conn) -> None:
        """The connection ended (on its own or after being told to): forget it."""
        if not conn.gone:
            self._drop(conn, "")
        self.count -= 1

    def expired(self) -> list[Conn]:
        """Connections past their phase's deadline, now dropped: tell them to stop."""
        now = self._clock()
        out = []
        for phase, queue in self._waiting.items():
            limit = self.limits.timeout(phase)
            while queue:
                conn = next(iter(queue.values()))  # oldest first: one timeout per phase
                if now - conn.since < limit:
                    break
                out.append(self._drop(conn, "timeout"))
        return out

    def drop_waiting(self, phases: tuple[str, ...] = (HANDSHAKE, IDLE)) -> list[Conn]:
        """At shutdown: the connections with no request under way, now dropped: tell them to stop."""
        out = []
        for phase in phases:
            queue = self._waiting[phase]
            while queue:
                out.append(self._drop(next(iter(queue.values())), "closing"))
        return out

    def take_shed(self) -> dict[str, int]:
        """Connections expired and evicted since the last call."""
        shed, self._shed = self._shed, {"expired": 0, "evicted": 0}
        return shed

    def _oldest(self, phases: tuple[str, ...], skip: Conn | None = None) -> Conn | None:
        best = None
        for phase in phases:
            for conn in self._waiting[phase].values():
                if conn is skip:
                    continue
                if best is None or conn.since < best.since:
                    best = conn
                break
        return best

    def _drop(self, conn: Conn, why: str) -> Conn:
        """Take `conn` out of the waiting queues and the budget; it still counts until `close`."""
        if why in ("timeout", "evicted"):
            self._shed["expired" if why == "timeout" else "evicted"] += 1
        conn.why = why
        if conn.phase != BUSY:
            self._waiting[conn.phase].pop(conn._key, None)
        self.release(conn)
        conn.gone = True
        self.live -= 1
        return conn
