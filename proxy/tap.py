"""Tap: live request events for whoever subscribes, at no cost when nobody does.

Each proxied request can produce three events, each one JSON line (docs/architecture.md, "Tap"):

    {"id": 7, "type": "req", "proxy": "out", "src": "emojivoto/deployment/web/web-1-x", "dst":
     "voting-svc.emojivoto:8080", "method": "POST", "authority": "voting-svc.emojivoto:8080",
     "path": "/vote", "tls": false, "ts": 1764412345.123}
    {"id": 7, "type": "rsp", "status": 500, "grpc_status": null, "latency_us": 1234,
     "dst": "emojivoto/deployment/voting/voting-1-y", ...}
    {"id": 7, "type": "end", "duration_us": 1500, "response_bytes": 21, "error": null, ...}

The hot path asks `hub.request(...)` only when `hub.active` (a subscriber exists), so an untapped
proxy pays one attribute read per request. Filters run here, in the proxy: path prefix, method,
authority, direction, destination workload (`--to`, known from the response's `x-mesh-dst`, so a
request is held back until its response head when a subscriber filters on it), a rate limit
(requests per second, a token bucket) and a maximum number of requests. Every subscriber has a
bounded queue; what does not fit is dropped and counted, and the count is sent in a `dropped`
event as soon as there is room. At most `MAX_SUBSCRIBERS` at once.

Who may tap is not decided here: the tap listener binds the pod's loopback (127.0.0.1:4190, never
redirected), so only what runs in the pod, or `pods/portforward` through the API server, reaches it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from kubectl_mesh.ratelimit import TokenBucket

MAX_SUBSCRIBERS = 8
QUEUE_EVENTS = 2048  # per subscriber
MAX_RPS_DEFAULT = 100.0
MAX_FIELD = 2048  # bytes of a path or authority kept in an event
TAP_WRITE_TIMEOUT = 10.0  # seconds a tap client may take nothing before it is cut

Event = dict[str, Any]


class TapFilterError(ValueError):
    """A tap request the endpoint refuses (400), with a one-line reason."""


@dataclass(frozen=True)
class TapFilter:
    path_prefix: str = ""
    method: str = ""
    authority: str = ""
    direction: str = ""  # "in", "out" or "" for both
    to: tuple[str, str, str] | None = None  # (namespace, kind, name) of the destination workload
    max_rps: float = MAX_RPS_DEFAULT
    max_requests: int = 0  # 0: until the subscriber leaves

    @classmethod
    def from_query(cls, query: str) -> TapFilter:
        """`path=/api&method=GET&direction=out&to=emojivoto/deployment/voting&max_rps=10`."""
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = set(q) - {"path", "method", "authority", "direction", "to", "max_rps", "max_requests"}
        if unknown:
            raise TapFilterError(f"unknown tap parameter(s): {', '.join(sorted(unknown))}")
        direction = q.get("direction", "")
        if direction not in ("", "in", "out"):
            raise TapFilterError(f'direction must be "in" or "out", not {direction!r}')
        to = None
        if q.get("to"):
            parts = q["to"].split("/")
            if len(parts) != 3 or not all(parts):
                raise TapFilterError("to must be NAMESPACE/KIND/NAME")
            to = (parts[0], parts[1], parts[2])
        try:
            max_rps = float(q.get("max_rps", MAX_RPS_DEFAULT))
            max_requests = int(q.get("max_requests", "0"))
        except ValueError:
            raise TapFilterError("max_rps and max_requests must be numbers") from None
        if not 0 < max_rps <= 10_000 or max_requests < 0:
            raise TapFilterError("max_rps must be in (0, 10000] and max_requests at least 0")
        return cls(q.get("path", ""), q.get("method", "").upper(), q.get("authority", ""), direction, to,
                   max_rps, max_requests)  # fmt: skip

    def matches_request(self, direction: str, method: str, authority: str, path: str) -> bool:
        return (
            (not self.direction or self.direction == direction)
            and (not self.method or self.method == method)
            and (not self.authority or self.authority == authority)
            and path.startswith(self.path_prefix)
        )

    def matches_destination(self, dst: str) -> bool:
        """`dst` is a workload identity `ns/kind/name/pod`, or an authority when unmeshed."""
        if self.to is None:
            return True
        parts = dst.split("/")
        return len(parts) == 4 and (parts[0], parts[1], parts[2]) == self.to


class Subscriber:
    """One tap stream: its filter, its rate budget, and its bounded queue of encoded lines."""

    def __init__(self, tap_filter: TapFilter, wake: Callable[[], None], now: float) -> None:
        self.filter = tap_filter
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.requests = 0
        self.done = False  # max_requests reached, and every request it let through has ended
        self.open_requests = 0
        self._wake = wake
        # A request takes one token: below 1 rps the bucket still holds one (else none is shown).
        self._bucket = TokenBucket(tap_filter.max_rps, max(1.0, tap_filter.max_rps), now)

    def admit(self, now: float) -> bool:
        """Rate limit and request budget: may one more request be shown?"""
        f = self.filter
        if f.max_requests and self.requests >= f.max_requests:
            return False
        if not self._bucket.take(now):
            return False
        self.requests += 1
        self.open_requests += 1
        return True

    def push(self, event: Event) -> None:
        if len(self.queue) >= QUEUE_EVENTS:
            self.dropped += 1
            return
        if self.dropped:
            self.queue.append(_line({"type": "dropped", "count": self.dropped}))
            self.dropped = 0
        self.queue.append(_line(event))
        self._wake()

    def finished_request(self, shown: bool = True) -> None:
        """One admitted request is over. One never shown (`--to` another workload) gives its token
        and its place in max_requests back: calls elsewhere must not starve the ones asked for."""
        self.open_requests -= 1
        if not shown:
            self.requests -= 1
            self._bucket.give_back()
        if self.filter.max_requests and self.requests >= self.filter.max_requests and not self.open_requests:
            self.done = True
            self._wake()


def _line(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "…"


class TapRequest:
    """The tap's view of one request in flight: which subscribers show it, and what they wait for."""

    __slots__ = ("_held", "_hub", "_id", "_shown", "_start", "_subs")

    def __init__(self, hub: TapHub, subs: list[Subscriber], req: Event, start: float) -> None:
        self._hub = hub
        self._subs = subs
        self._id = req["id"]
        self._start = start
        self._held: Event | None = None
        self._shown: list[Subscriber] = []  # subscribers that were sent the req event
        for sub in subs:
            if sub.filter.to is None:
                sub.push(req)
                self._shown.append(sub)
            else:
                self._held = req  # shown with the response, once the destination is known

    def response(self, status: int, dst: str | None = None, grpc_status: int | None = None) -> None:
        now = time.monotonic()
        event: Event = {"id": self._id, "type": "rsp", "status": status, "grpc_status": grpc_status,
                        "latency_us": int((now - self._start) * 1e6), "ts": time.time()}  # fmt: skip
        if dst is not None:
            event["dst"] = _clip(dst)
        kept = []
        for sub in self._subs:
            if sub.filter.to is not None:
                if dst is None or not sub.filter.matches_destination(dst):
                    sub.finished_request(shown=False)
                    continue
                assert self._held is not None
                sub.push({**self._held, "dst": _clip(dst)})
                self._shown.append(sub)
            sub.push(event)
            kept.append(sub)
        self._subs = kept

    def end(self, response_bytes: int, error: str | None = None, grpc_status: int | None = None) -> None:
        duration_us = int((time.monotonic() - self._start) * 1e6)
        event: Event = {"id": self._id, "type": "end", "duration_us": duration_us,
                        "response_bytes": response_bytes, "error": error, "grpc_status": grpc_status,
                        "ts": time.time()}  # fmt: skip
        for sub in self._subs:
            shown = sub in self._shown  # a held request whose response never came stays untold
            if shown:
                sub.push(event)
            sub.finished_request(shown)
        self._subs = []


class TapHub:
    """The proxy's subscribers. `active` is the one thing the hot path reads when untapped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.subscribers: list[Subscriber] = []
        self.active = False
        self._next_id = 0
        self._clock = clock

    def subscribe(self, tap_filter: TapFilter, wake: Callable[[], None]) -> Subscriber | None:
        """A new stream, or None when MAX_SUBSCRIBERS already tap."""
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            return None
        sub = Subscriber(tap_filter, wake, self._clock())
        self.subscribers.append(sub)
        self.active = True
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        self.active = bool(self.subscribers)

    def request(
        self, direction: str, method: str, authority: str, path: str, src: str, dst: str
    ) -> TapRequest | None:
        """The request's tap, or None when no subscriber shows it (then the exchange forgets it)."""
        now = self._clock()
        subs = [
            s for s in self.subscribers
            if s.filter.matches_request(direction, method, authority, path) and s.admit(now)
        ]  # fmt: skip
        if not subs:
            return None
        self._next_id += 1
        req: Event = {"id": self._next_id, "type": "req", "proxy": direction, "src": _clip(src),
                      "dst": _clip(dst), "method": method, "authority": _clip(authority), "path": _clip(path),
                      "tls": False, "ts": time.time()}  # fmt: skip
        return TapRequest(self, subs, req, now)


StartResponse = Callable[..., Any]


def tap_app(hub: TapHub) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The tap listener's WSGI app: `GET /tap?<filters>` streams JSON lines until the client goes
    (or its max_requests are done); 400 for a bad filter, 503 when MAX_SUBSCRIBERS already tap."""
    import gevent.event

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/tap" or environ.get("REQUEST_METHOD") != "GET":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only GET /tap is served here\n"]
        try:
            tap_filter = TapFilter.from_query(environ.get("QUERY_STRING", ""))
        except TapFilterError as exc:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [f"{exc}\n".encode()]
        ready = gevent.event.Event()
        sub = hub.subscribe(tap_filter, ready.set)
        if sub is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"already {MAX_SUBSCRIBERS} taps on this proxy\n".encode()]
        start_response("200 OK", [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-store")])
        return _stream(hub, sub, ready)

    return app


def _stream(hub: TapHub, sub: Subscriber, ready: Any) -> Iterator[bytes]:
    """Lines as they come; a keep-alive newline every 5 s finds a client that left."""
    try:
        yield _line({"type": "hello", "max_rps": sub.filter.max_rps})
        while True:
            ready.wait(5.0)
            ready.clear()
            if not sub.queue:
                if sub.done:
                    return
                yield b"\n"
                continue
            lines = list(sub.queue)
            sub.queue.clear()
            yield b"".join(lines)
    finally:
        hub.unsubscribe(sub)


def serve_tap(hub: TapHub, address: tuple[str, int]) -> Any:
    """The tap listener (gevent's WSGI server, like the admin one); started, returned for stop().

    A client that takes nothing for TAP_WRITE_TIMEOUT seconds is cut: else a tap that stopped
    reading would hold its place (of MAX_SUBSCRIBERS) and keep the hub active for good."""
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class TapHandler(WSGIHandler):
        # A timed-out write ends the connection quietly, as a client that left does.
        ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, "timed out")

        def handle(self) -> None:
            self.socket.settimeout(TAP_WRITE_TIMEOUT)
            super().handle()

    server = WSGIServer(address, tap_app(hub), log=None, error_log=None, handler_class=TapHandler)
    server.start()
    return server
