"""The proxy's metrics: plain dict counters on the hot path, rendered straight to Prometheus text.

A request costs a few dict operations; label sets are built (and escaped) once per series, not
per request or per scrape. Each series only carries the labels it has (an unmeshed peer's
series has no src_*/dst_*).

Why not prometheus_client's Collector for these: its exposition formats every sample through
generic objects (~12 µs a sample here), and a scrape runs on the proxy's only thread — 2000
series took 0.7 s, stalling all traffic meanwhile. Rendering from cached label strings takes a
few percent of that. prometheus_client still renders the process metrics (admin.py); tests check
this text with prometheus_client's parser, `promtool check metrics` and a real Prometheus.

Cardinality is bounded (docs/architecture.md, "Proxy"): a series idle for `idle_seconds`
(default 10 minutes, Linkerd's rule) is dropped at the next scrape, and at most `max_series`
HTTP series and as many TCP series are kept; a new one beyond that first evicts the least
recently used tenth. Open TCP connections' series are never evicted.

TCP series name the peer workload like HTTP ones (src_* inbound, dst_* outbound), learnt from the
first request (inbound) or response (outbound) on the connection. Until then a connection counts
into a detached accumulator (`tcp_connection(..., wait_for_peer=True)`), folded into its labelled
series by `tcp_attach`: counters stay monotonic, and a connection that never says who it is lands
in the unlabelled one.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from kubectl_mesh.contract import (
    LATENCY_BUCKETS_MS,
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

_BUCKETS = tuple(float(b) for b in LATENCY_BUCKETS_MS)
_LE = [*(str(b) for b in LATENCY_BUCKETS_MS), "+Inf"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: Mapping[str, str]) -> str:
    """`a="x",b="y"`: the inside of a sample's braces, escaped per the text format."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def classify(status: int, error: str) -> str:
    """Linkerd's rule: a 5xx or a proxy error is a failure, everything else a success."""
    return "failure" if error or status >= 500 else "success"


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
        self.responses: dict[tuple[int, str, str], int] = {}  # (status, classification, error)
        self.latency: dict[int, list[float]] = {}  # status → bucket counts…, sum, count
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

    # --- hot path -----------------------------------------------------------------------------
    def response(
        self, direction: str, authority: str, peer: Labels, status: int, error: str, latency_ms: float
    ) -> None:
        """One finished request: counts the request, its response and its latency (to headers)."""
        key = (direction, authority, peer)
        now = self.clock()
        route = self.routes.get(key)
        if route is None:
            if len(self.routes) >= self.max_series:
                self._make_room(self.routes, now)
            route = self.routes[key] = Route(key, now)
        route.last = now
        route.requests += 1
        rkey = (status, classify(status, error), error)
        route.responses[rkey] = route.responses.get(rkey, 0) + 1
        hist = route.latency.get(status)
        if hist is None:
            hist = route.latency[status] = [0.0] * (len(_BUCKETS) + 3)
        hist[bisect_left(_BUCKETS, latency_ms)] += 1
        hist[-2] += latency_ms
        hist[-1] += 1

    def tcp_series(self, direction: str, peer: str, authority: str, workload: Labels = ()) -> Tcp:
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

    def _make_room(self, table: dict[Any, Any], now: float) -> None:
        """Drop idle series, then the least recently used tenth if still full."""
        self._evict_idle(table, now)
        if len(table) < self.max_series:
            return
        candidates = sorted((s.last, k) for k, s in table.items() if not (isinstance(s, Tcp) and s.open > 0))
        for _, key in candidates[: max(1, self.max_series // 10)]:
            del table[key]

    def _evict_idle(self, table: dict[Any, Any], now: float) -> None:
        cutoff = now - self.idle_seconds
        stale = [k for k, s in table.items() if s.last < cutoff and not (isinstance(s, Tcp) and s.open > 0)]
        for key in stale:
            del table[key]

    # --- exposition -----------------------------------------------------------------------------
    def render(self) -> str:
        """All series in the Prometheus text format (0.0.4), after dropping idle ones."""
        now = self.clock()
        self._evict_idle(self.routes, now)
        self._evict_idle(self.tcp, now)
        routes = list(self.routes.values())
        out: list[str] = []
        add = out.append
        add(_head(METRIC_REQUESTS, "Requests the proxy forwarded, by peer.", "counter"))
        for route in routes:
            add(f"{METRIC_REQUESTS}{{{route.text}}} {route.requests}\n")
        add(_head(METRIC_RESPONSES, "Responses, by status, classification and error.", "counter"))
        for route in routes:
            for (status, classification, error), count in list(route.responses.items()):
                extra = f',classification="{classification}"'
                if status:
                    extra += f',status_code="{status}"'
                if error:
                    extra += f',error="{_escape(error)}"'
                add(f"{METRIC_RESPONSES}{{{route.text}{extra}}} {count}\n")
        add(_head(METRIC_LATENCY, "Time to response headers, in milliseconds.", "histogram"))
        for route in routes:
            for status, hist in list(route.latency.items()):
                base = f'{route.text},status_code="{status}"' if status else route.text
                cumulative = 0
                for le, bucket in zip(_LE, hist[:-2], strict=True):
                    cumulative += int(bucket)
                    add(f'{METRIC_LATENCY}_bucket{{{base},le="{le}"}} {cumulative}\n')
                add(f"{METRIC_LATENCY}_sum{{{base}}} {hist[-2]!r}\n")
                add(f"{METRIC_LATENCY}_count{{{base}}} {int(hist[-1])}\n")
        tcp = list(self.tcp.values())
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
        return "".join(out)


def _head(name: str, doc: str, kind: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"
