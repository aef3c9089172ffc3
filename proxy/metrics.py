"""The proxy's metrics: plain dict counters on the hot path, a prometheus_client Collector to expose them.

A request costs a few dict operations; label sets are built once per series, not per request.
Each series only carries the labels it has (an unmeshed peer's series has no src_*/dst_*).

Cardinality is bounded (docs/architecture.md, "Proxy"): a series idle for `idle_seconds`
(default 10 minutes, Linkerd's rule) is dropped at the next scrape, and at most `max_series`
HTTP series and as many TCP series are kept; a new one beyond that first evicts the least
recently used tenth. Open TCP connections' series are never evicted.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

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
RouteKey = tuple[str, str, Labels]  # direction, authority, peer labels
TcpKey = tuple[str, str, str]  # direction, peer (src|dst), authority


class Route:
    """One (direction, authority, peer) series group: requests, responses and latency."""

    __slots__ = ("labels", "last", "latency", "requests", "responses")

    def __init__(self, key: RouteKey, now: float) -> None:
        direction, authority, peer = key
        labels = {"direction": direction}
        if authority:
            labels["authority"] = authority
        labels.update(peer)
        self.labels = labels
        self.requests = 0
        self.responses: dict[tuple[int, str, str], int] = {}  # (status, classification, error)
        self.latency: dict[int, list[float]] = {}  # status → bucket counts…, sum, count
        self.last = now


class Tcp:
    __slots__ = ("closes", "labels", "last", "open", "opens", "read", "written")

    def __init__(self, key: TcpKey, now: float) -> None:
        direction, peer, authority = key
        self.labels = {"direction": direction, "peer": peer}
        if authority:
            self.labels["authority"] = authority
        self.opens = self.closes = self.open = self.read = self.written = 0
        self.last = now


class MeshMetrics(Collector):
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
        rkey = (status, "failure" if error or status >= 500 else "success", error)
        route.responses[rkey] = route.responses.get(rkey, 0) + 1
        hist = route.latency.get(status)
        if hist is None:
            hist = route.latency[status] = [0.0] * (len(_BUCKETS) + 3)
        hist[bisect_left(_BUCKETS, latency_ms)] += 1
        hist[-2] += latency_ms
        hist[-1] += 1

    def tcp_series(self, direction: str, peer: str, authority: str) -> Tcp:
        key = (direction, peer, authority)
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
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        self._evict_idle(self.routes, now)
        self._evict_idle(self.tcp, now)
        requests = _counter(METRIC_REQUESTS, "Requests the proxy forwarded, by peer.")
        responses = _counter(METRIC_RESPONSES, "Responses, by status, classification and error.")
        latency = Metric(METRIC_LATENCY, "Time to response headers, in milliseconds.", "histogram")
        for route in list(self.routes.values()):
            labels = route.labels
            requests.add_sample(METRIC_REQUESTS, labels, route.requests)
            for (status, classification, error), count in route.responses.items():
                extra = {"classification": classification}
                if status:
                    extra["status_code"] = str(status)
                if error:
                    extra["error"] = error
                responses.add_sample(METRIC_RESPONSES, {**labels, **extra}, count)
            for status, hist in route.latency.items():
                base = {**labels, "status_code": str(status)} if status else labels
                cumulative: float = 0.0
                for le, bucket in zip(_LE, hist[:-2], strict=True):
                    cumulative += bucket
                    latency.add_sample(METRIC_LATENCY + "_bucket", {**base, "le": le}, cumulative)
                latency.add_sample(METRIC_LATENCY + "_count", base, hist[-1])
                latency.add_sample(METRIC_LATENCY + "_sum", base, hist[-2])
        yield requests
        yield responses
        yield latency
        tcp_metrics = (
            (METRIC_TCP_OPEN, "Connections opened.", "counter", "opens"),
            (METRIC_TCP_CLOSE, "Connections closed.", "counter", "closes"),
            (METRIC_TCP_OPEN_CONNECTIONS, "Connections open now.", "gauge", "open"),
            (METRIC_TCP_READ_BYTES, "Bytes read from peers.", "counter", "read"),
            (METRIC_TCP_WRITE_BYTES, "Bytes written to peers.", "counter", "written"),
        )
        tcp = list(self.tcp.values())
        for name, doc, kind, attr in tcp_metrics:
            metric = _counter(name, doc) if kind == "counter" else Metric(name, doc, kind)
            for series in tcp:
                metric.add_sample(name, series.labels, getattr(series, attr))
            yield metric


def _counter(name: str, doc: str) -> Metric:
    """A counter family: prometheus_client names the family without `_total` and adds it on output."""
    return Metric(name.removesuffix("_total"), doc, "counter")
