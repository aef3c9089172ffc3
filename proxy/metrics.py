"""The proxy's metrics: plain dict counters on the hot path, rendered straight to Prometheus text.

A request costs a few dict operations; label sets are built (and escaped) once per series, not
per request or per scrape. Each series only carries the labels it has (an unmeshed peer's
series has no src_*/dst_*).

Why not prometheus_client's Collector for these: its exposition formats every sample through
generic objects (~12 µs a sample here), and a scrape runs on the proxy's only thread — 2000
series took 0.7 s, stalling all traffic meanwhile. Rendering from cached label strings takes a
few percent of that. prometheus_client still renders the process metrics (admin.py); tests check
this text with prometheus_client's parser, `promtool check metrics` and a real Prometheus.

Cardinality and bytes are bounded (docs/architecture.md, "Metric labels and cardinality"): a
series idle for `idle_seconds` (default 10 minutes, Linkerd's rule) is dropped at the next scrape;
at most `max_series` latency histograms (one per route and status code: the HTTP series, ~28 lines
each) and as many TCP series are kept, and a new one beyond that first evicts the least recently
used routes (a tenth of the budget). Open TCP connections' series are never evicted, nor the
four of HTTP/2's open streams (`h2_streams`: direction x peer, no other label). Label values
the client controls are folded: an authority longer than a DNS name becomes a prefix plus a hash
(`authority_label`), a status code outside 100–599, or beyond a route's first
`STATUS_CODES_PER_ROUTE`, counts in the route's shared bucket (no `status_code`). A scrape is
rendered as a stream of chunks (`render_chunks`), so its memory is one chunk, not the whole text.

TCP series name the peer workload like HTTP ones (src_* inbound, dst_* outbound), learnt from the
first request (inbound) or response (outbound) on the connection. Until then a connection counts
into a detached accumulator (`tcp_connection(..., wait_for_peer=True)`), folded into its labelled
series by `tcp_attach`: counters stay monotonic, and a connection that never says who it is lands
in the unlabelled one.
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubectl_mesh.contract import (
    LATENCY_BUCKETS_MS,
    METRIC_H2_OPEN_STREAMS,
    METRIC_LATENCY,
    METRIC_REQUESTS,
    METRIC_RESPONSES,
    METRIC_TCP_CLOSE,
    METRIC_TCP_OPEN,
    METRIC_TCP_OPEN_CONNECTIONS,
    METRIC_TCP_READ_BYTES,
    METRIC_TCP_WRITE_BYTES,
)

from .identity import Labels

METRIC_H2_ERRORS = "h2_connection_errors_total"
# The series of METRIC_H2_OPEN_STREAMS: (direction, peer), fixed, so always four lines.
H2_STREAM_SERIES = (("inbound", "src"), ("inbound", "dst"), ("outbound", "src"), ("outbound", "dst"))
_BUCKETS = tuple(float(b) for b in LATENCY_BUCKETS_MS)
_LE = [*(str(b) for b in LATENCY_BUCKETS_MS), "+Inf"]

AUTHORITY_MAX = 253  # a DNS name's longest: the longest `authority` label value
_HASH_HEX = 16  # 64 bits of blake2b: distinct values stay distinct (no accidental merge)
_PREFIX = AUTHORITY_MAX - 1 - _HASH_HEX  # kept from a folded value, before "~" and the hash
# Characters kept as they are in an authority label: printable ASCII that never needs escaping.
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
STATUS_CODES_PER_ROUTE = 8  # status codes with their own series per route; more share one bucket
CHUNK_LINES = 512  # a scrape is sent in chunks of about this many lines (plus one route's)


def fold_authority(text: str) -> str:
    """`text` itself when it is at most 253 plain characters (printable ASCII but `"` and `\\`);
    otherwise its first 236 characters (others replaced by `?`), `~` and 16 hex digits of its
    blake2b hash. So a label value is ≤ 253 bytes, never needs escaping, and distinct values stay
    distinct (two values meet only if one was chosen to equal the other's fold)."""
    # isprintable() excludes \n; `"` and `\\` are the text format's other escaped characters.
    plain = text.isascii() and text.isprintable() and '"' not in text and "\\" not in text
    if plain and len(text) <= AUTHORITY_MAX:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_HASH_HEX // 2).hexdigest()
    prefix = "".join(c if c in _PLAIN else "?" for c in text[:_PREFIX])
    return f"{prefix}~{digest}"


def authority_label(raw: bytes) -> str:
    """The `authority` label for a request's Host (or absolute-form authority) bytes: latin-1,
    lowercased, then `fold_authority`. Pure and deterministic; callers may memoise it by `raw`."""
    return fold_authority(raw.decode("latin-1").lower())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: Mapping[str, str]) -> str:
    """`a="x",b="y"`: the inside of a sample's braces, escaped per the text format."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def classify(status: int, error: str, grpc_status: str = "") -> str:
    """Linkerd's rule: a 5xx or a proxy error is a failure, everything else a success; and a
    status code outside 100–599 (not HTTP) is a failure. A client that went away or stalled
    (`client_*`) fails only itself: the response is judged by its status alone. A gRPC response
    is judged by its `grpc-status` instead: 0 is a success, any other code a failure."""
    if grpc_status and not error.startswith("client_"):
        return "success" if grpc_status == "0" and not error else "failure"
    if not error:
        return "success" if 100 <= status < 500 else "failure"
    if error.startswith("client_"):
        return "failure" if status >= 500 else "success"
    return "failure"


RouteKey = tuple[str, str, Labels]  # direction, authority, peer labels
TcpKey = tuple[str, str, str, Labels]  # direction, peer (src|dst), authority, peer workload labels


class Route:
    """One (direction, authority, peer) series group: requests, responses and latency."""

    __slots__ = ("labels", "last", "latency", "requests", "responses", "text")

    def __init__(self, key: RouteKey, now: float) -> None:
        direction, authority, peer = key
        labels = {"direction": direction}
        if authority:
            labels["authority"] = authority
        labels.update(peer)
        self.labels = labels
        self.text = label_text(labels)
        self.requests = 0
        # (status, classification, error, grpc_status) → count; status 0 is the shared bucket
        # (no status_code); grpc_status "" for a response that is not gRPC
        self.responses: dict[tuple[int, str, str, str], int] = {}
        self.latency: dict[int, list[Any]] = {}  # status (0: shared) → bucket counts…, sum, count
        self.last = now


class Tcp:
    __slots__ = ("closes", "labels", "last", "open", "opens", "pending", "read", "text", "written")

    def __init__(self, key: TcpKey, now: float) -> None:
        direction, peer, authority, workload = key
        self.labels = {"direction": direction, "peer": peer}
        if authority:
            self.labels["authority"] = authority
        self.labels.update(workload)
        self.text = label_text(self.labels)
        self.opens = self.closes = self.open = self.read = self.written = 0
        self.last = now
        self.pending = False  # a detached accumulator of one connection, not rendered


class MeshMetrics:
    """Counters for every request and connection the proxy handles; collect() renders them."""

    def __init__(
        self, max_series: int = 2000, idle_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_series = max_series
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.routes: dict[RouteKey, Route] = {}
        self.tcp: dict[TcpKey, Tcp] = {}
        self.histograms = 0  # latency histograms over all routes: what max_series bounds for HTTP
        # HTTP/2 connections ended for what the peer did: (direction, error) → count. The labels
        # are the proxy's own words (h2proxy.py, h2rules.ERROR_LABELS): a bounded set.
        self.h2_errors: dict[tuple[str, str], int] = {}
        # HTTP/2 streams open now, by (direction, peer): h2proxy.Side.track and .forget add and
        # take one as a stream is kept and dropped, "src" on a client's connection, "dst" upstream.
        self.h2_streams: dict[tuple[str, str], int] = dict.fromkeys(H2_STREAM_SERIES, 0)

    # --- hot path -----------------------------------------------------------------------------
    def response(
        self,
        direction: str,
        authority: str,
        peer: Labels,
        status: int,
        error: str,
        latency_ms: float,
        grpc_status: str = "",
    ) -> None:
        """One finished request: counts the request, its response and its latency (to headers).

        `authority` should come from `authority_label` (memoised by the caller); a longer value is
        folded here too. A status outside 100–599, or a route's ninth distinct one, is counted in
        the route's shared bucket (no status_code label), classified by the status it had.
        `grpc_status` comes from `grpc_status_label` (one of 18 values, so it stays bounded)."""
        if len(authority) > AUTHORITY_MAX:
            authority = fold_authority(authority)
        key = (direction, authority, peer)
        now = self.clock()
        route = self.routes.get(key)
        if route is None:
            if self.histograms >= self.max_series:
                self._make_room(self.routes, now)
            route = self.routes[key] = Route(key, now)
        route.last = now
        route.requests += 1
        classification = classify(status, error, grpc_status)
        if error:  # the error says why: one line per error, not per error and gRPC code (bounds)
            grpc_status = ""
        hist = route.latency.get(status)
        if hist is None:
            status, hist = self._histogram(key, route, status, now)
        rkey = (status, classification, error, grpc_status)
        route.responses[rkey] = route.responses.get(rkey, 0) + 1
        hist[bisect_left(_BUCKETS, latency_ms)] += 1
        hist[-2] += latency_ms
        hist[-1] += 1

    def _histogram(self, key: RouteKey, route: Route, status: int, now: float) -> tuple[int, list[Any]]:
        """The status a response is counted under and its histogram, made if new (the rare path)."""
        own = len(route.latency) - (0 in route.latency)
        if not (100 <= status <= 599 and own < STATUS_CODES_PER_ROUTE):
            status = 0  # the shared bucket
            hist = route.latency.get(0)
            if hist is not None:
                return 0, hist
        if self.histograms >= self.max_series:
            self._make_room(self.routes, now, keep=key)
        hist = route.latency[status] = [0] * len(_LE) + [0.0, 0]
        self.histograms += 1
        return status, hist

    def h2_error(self, direction: str, error: str) -> None:
        key = (direction, error)
        self.h2_errors[key] = self.h2_errors.get(key, 0) + 1

    def tcp_series(self, direction: str, peer: str, authority: str, workload: Labels = ()) -> Tcp:
        if len(authority) > AUTHORITY_MAX:
            authority = fold_authority(authority)
        key = (direction, peer, authority, workload)
        series = self.tcp.get(key)
        now = self.clock()
        if series is None:
            if len(self.tcp) >= self.max_series:
                self._make_room(self.tcp, now)
            series = self.tcp[key] = Tcp(key, now)
        series.last = now
        return series

    def tcp_open(self, series: Tcp) -> None:
        series.opens += 1
        series.open += 1
        series.last = self.clock()

    def tcp_connection(self, direction: str, peer: str, authority: str, wait_for_peer: bool) -> Tcp:
        """The series a new connection counts into: its open series, or with `wait_for_peer` a
        detached accumulator (`pending`) until `tcp_attach` names the peer workload."""
        if not wait_for_peer:
            series = self.tcp_series(direction, peer, authority)
            self.tcp_open(series)
            return series
        pending = Tcp((direction, peer, authority, ()), 0.0)
        pending.pending = True
        return pending

    def tcp_attach(self, pending: Tcp, workload: Labels) -> Tcp:
        """Open the connection in its labelled series, carrying over the bytes counted so far."""
        direction, peer = pending.labels["direction"], pending.labels["peer"]
        series = self.tcp_series(direction, peer, pending.labels.get("authority", ""), workload)
        series.read += pending.read
        series.written += pending.written
        self.tcp_open(series)
        return series

    def tcp_close(self, series: Tcp) -> None:
        series.closes += 1
        series.open -= 1
        series.last = self.clock()

    def _size(self, table: dict[Any, Any]) -> int:
        return self.histograms if table is self.routes else len(table)

    def _drop(self, table: dict[Any, Any], key: Any) -> None:
        series = table.pop(key)
        if isinstance(series, Route):
            self.histograms -= len(series.latency)

    def _make_room(self, table: dict[Any, Any], now: float, keep: Any = None) -> None:
        """Drop idle series, then if still full the least recently used ones (but `keep`) until a
        tenth of the budget is free."""
        self._evict_idle(table, now)
        if self._size(table) < self.max_series:
            return
        goal = self.max_series - max(1, self.max_series // 10)
        candidates = sorted((s.last, k) for k, s in table.items() if k != keep and not _busy(s))
        for _, key in candidates:
            if self._size(table) <= goal:
                break
            self._drop(table, key)

    def _evict_idle(self, table: dict[Any, Any], now: float) -> None:
        cutoff = now - self.idle_seconds
        for key in [k for k, s in table.items() if s.last < cutoff and not _busy(s)]:
            self._drop(table, key)

    # --- exposition -----------------------------------------------------------------------------
    def render(self) -> str:
        """All series in the Prometheus text format (0.0.4), after dropping idle ones."""
        return "".join(self.render_chunks())

    def render_chunks(self) -> Iterator[str]:
        """`render()` as a stream of pieces of about `CHUNK_LINES` lines, each ending in a newline.

        The admin server sends each piece before the next is made, so a scrape holds one piece,
        not the whole text and its encoded copy. Series are taken at the first piece; a greenlet
        switch happens only between pieces (while one is sent), never inside a series."""
        now = self.clock()
        self._evict_idle(self.routes, now)
        self._evict_idle(self.tcp, now)
        routes = list(self.routes.values())
        tcp = list(self.tcp.values())
        out: list[str] = []
        add = out.append
        add(_head(METRIC_REQUESTS, "Requests the proxy forwarded, by peer.", "counter"))
        for route in routes:
            add(f"{METRIC_REQUESTS}{{{route.text}}} {route.requests}\n")
            if len(out) >= CHUNK_LINES:
                yield "".join(out)
                out.clear()
        add(_head(METRIC_RESPONSES, "Responses, by status, classification and error.", "counter"))
        for route in routes:
            for (status, classification, error, grpc_status), count in list(route.responses.items()):
                extra = f',classification="{classification}"'
                if status:
                    extra += f',status_code="{status}"'
                if error:
                    extra += f',error="{_escape(error)}"'
                if grpc_status:
                    extra += f',grpc_status="{grpc_status}"'
                add(f"{METRIC_RESPONSES}{{{route.text}{extra}}} {count}\n")
            if len(out) >= CHUNK_LINES:
                yield "".join(out)
                out.clear()
        add(_head(METRIC_LATENCY, "Time to response headers, in milliseconds.", "histogram"))
        for route in routes:
            for status, hist in list(route.latency.items()):
                base = f'{route.text},status_code="{status}"' if status else route.text
                bucket = f'{METRIC_LATENCY}_bucket{{{base},le="'
                cumulative = 0
                for le, count in zip(_LE, hist, strict=False):  # hist: the buckets, then sum, count
                    cumulative += count
                    add(f'{bucket}{le}"}} {cumulative}\n')
                add(f"{METRIC_LATENCY}_sum{{{base}}} {hist[-2]!r}\n")
                add(f"{METRIC_LATENCY}_count{{{base}}} {hist[-1]}\n")
            if len(out) >= CHUNK_LINES:
                yield "".join(out)
                out.clear()
        for name, doc, kind, attr in (
            (METRIC_TCP_OPEN, "Connections opened.", "counter", "opens"),
            (METRIC_TCP_CLOSE, "Connections closed.", "counter", "closes"),
            (METRIC_TCP_OPEN_CONNECTIONS, "Connections open now.", "gauge", "open"),
            (METRIC_TCP_READ_BYTES, "Bytes read from peers.", "counter", "read"),
            (METRIC_TCP_WRITE_BYTES, "Bytes written to peers.", "counter", "written"),
        ):
            add(_head(name, doc, kind))
            for series in tcp:
                add(f"{name}{{{series.text}}} {getattr(series, attr)}\n")
                if len(out) >= CHUNK_LINES:
                    yield "".join(out)
                    out.clear()
        add(_head(METRIC_H2_OPEN_STREAMS, "HTTP/2 streams open now.", "gauge"))
        for (direction, peer), count in list(self.h2_streams.items()):
            add(f'{METRIC_H2_OPEN_STREAMS}{{direction="{direction}",peer="{peer}"}} {count}\n')
        if self.h2_errors:
            add(
                _head(
                    METRIC_H2_ERRORS,
                    "HTTP/2 connections ended for a peer's protocol error or flood.",
                    "counter",
                )
            )
            for (direction, error), count in list(self.h2_errors.items()):
                add(f'{METRIC_H2_ERRORS}{{direction="{direction}",error="{error}"}} {count}\n')
        if out:
            yield "".join(out)


GRPC_CODES = frozenset(str(code) for code in range(17))  # OK (0) … UNAUTHENTICATED (16)


def grpc_status_label(value: bytes | str | None) -> str:
    """The `grpc_status` label of a `grpc-status` value: its code 0–16 as sent, any other value
    "other" (the peer chooses it: the label stays one of 18 values), "" when there is none."""
    if value is None:
        return ""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    return text if text in GRPC_CODES else "other"


def _busy(series: Route | Tcp) -> bool:
    """A TCP series with open connections: never dropped."""
    return isinstance(series, Tcp) and series.open > 0


def _head(name: str, doc: str, kind: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"
