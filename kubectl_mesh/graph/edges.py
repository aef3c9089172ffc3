"""The call graph from Prometheus: who calls whom, how well. Queries and results are pure.

    compute_edges(request, query) -> list[Edge]

One kind at a time (the rows of `kubectl mesh edges deploy` are deployments at both ends).
An edge is counted from the caller's outbound side when the caller is meshed, as `stat --from`
counts, so the numbers of `edges`, `stat --from X` and `stat --to Y` agree. Two more sources
name the unmeshed ends (Linkerd's `edges` shows them too):

- meshed → meshed: `response_total{direction="outbound", K!="", dst_namespace!="", dst_K!=""}`
  by (namespace, K, dst_namespace, dst_K);
- meshed → unmeshed: `response_total{direction="outbound", K!="", dst_namespace=""}` by
  (namespace, K, authority);
- unmeshed → meshed: `response_total{direction="inbound", K!="", src_namespace=""}` by
  (namespace, K): the callee's proxy saw it.

(W = the window, K = the kind.) A meshed client always sends its identity (`src_namespace`
on the server's inbound series) and a meshed server always answers with its own
(`dst_namespace` on the client's outbound series), so an empty one means the other end has no
proxy. Each source is queried for the counts (by `classification`) and the p99 latency; the six
queries run concurrently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kubectl_mesh.contract import METRIC_LATENCY, METRIC_RESPONSES
from kubectl_mesh.stat.model import StatInputError, check_name, duration_seconds

Labels = dict[str, str]
Vector = list[tuple[Labels, float]]
QueryFn = Callable[[str], Vector]

EDGE_KINDS = ("deployment", "statefulset", "daemonset", "job", "replicaset", "pod")
OUTPUT_FORMATS = ("table", "json", "dot", "svg")
UNMESHED = "(unmeshed)"


@dataclass(frozen=True)
class EdgesRequest:
    """Edges between objects of `kind`, touching `namespace` (either end) unless all_namespaces."""

    kind: str
    namespace: str = "default"
    all_namespaces: bool = False
    window: str = "1m"
    output: str = "table"

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)


@dataclass(frozen=True)
class Edge:
    """src → dst over the window. An unmeshed end has an empty namespace; an unmeshed
    destination is named by the authority its caller asked for, an unmeshed source by nothing."""

    src_namespace: str
    src: str
    dst_namespace: str
    dst: str
    requests: int
    success: float  # 0..1 (an edge exists only with requests in the window)
    rps: float
    latency_ms_p99: float | None

    @property
    def src_meshed(self) -> bool:
        return bool(self.src_namespace)

    @property
    def dst_meshed(self) -> bool:
        return bool(self.dst_namespace)

    def to_dict(self) -> dict[str, object]:
        return {
            "src": self.src if self.src_meshed else None,
            "src_namespace": self.src_namespace or None,
            "src_meshed": self.src_meshed,
            "dst": self.dst,
            "dst_namespace": self.dst_namespace or None,
            "dst_meshed": self.dst_meshed,
            "requests": self.requests,
            "success": self.success,
            "rps": self.rps,
            "latency_ms_p99": self.latency_ms_p99,
        }


def build_edges_request(
    *, kind: str, namespace: str, all_namespaces: bool, namespace_given: bool, window: str, output: str
) -> EdgesRequest:
    """Validate the flags together; StatInputError (one line) on anything wrong."""
    from kubectl_mesh.contract import SCRAPE_INTERVAL
    from kubectl_mesh.stat.model import canonical_kind

    canonical = canonical_kind(kind)
    if canonical not in EDGE_KINDS:
        raise StatInputError(f'edges are between workloads: "{kind}" is not one of {", ".join(EDGE_KINDS)}')
    if all_namespaces and namespace_given:
        raise StatInputError("-A/--all-namespaces and -n/--namespace cannot be used together")
    if output not in OUTPUT_FORMATS:
        raise StatInputError(
            f'unknown output format "{output}"; expected one of: {", ".join(OUTPUT_FORMATS)}'
        )
    if duration_seconds(window) <= duration_seconds(SCRAPE_INTERVAL):
        raise StatInputError(
            f"time window {window} must be longer than the {SCRAPE_INTERVAL} scrape interval "
            f"(Prometheus needs two samples in it); use e.g. -t 30s or -t 1m"
        )
    check_name(namespace)
    return EdgesRequest(canonical, namespace, all_namespaces, window, output)


def plan_edges(request: EdgesRequest) -> dict[str, str]:
    """The six queries: `<source>` counts and `<source>_p99`, for meshed, to_unmeshed, from_unmeshed."""
    k, w = request.kind, request.window
    sources = {
        "meshed": (
            f'direction="outbound", {k}!="", dst_namespace!="", dst_{k}!=""',
            f"namespace, {k}, dst_namespace, dst_{k}",
        ),
        "to_unmeshed": (f'direction="outbound", {k}!="", dst_namespace=""', f"namespace, {k}, authority"),
        "from_unmeshed": (f'direction="inbound", {k}!="", src_namespace=""', f"namespace, {k}"),
    }
    queries: dict[str, str] = {}
    for name, (sel, group) in sources.items():
        queries[name] = f"sum(increase({METRIC_RESPONSES}{{{sel}}}[{w}])) by ({group}, classification)"
        queries[f"{name}_p99"] = (
            f"histogram_quantile(0.99, sum(rate({METRIC_LATENCY}_bucket{{{sel}}}[{w}])) by (le, {group}))"
        )
    return queries


EdgeKey = tuple[str, str, str, str]  # src_namespace, src, dst_namespace, dst


def _edge_key(source: str, labels: Labels, kind: str) -> EdgeKey | None:
    ns, name = labels.get("namespace", ""), labels.get(kind, "")
    if not ns or not name:
        return None
    if source == "meshed":
        dst_ns, dst = labels.get("dst_namespace", ""), labels.get(f"dst_{kind}", "")
        return (ns, name, dst_ns, dst) if dst_ns and dst else None
    if source == "to_unmeshed":
        return ns, name, "", labels.get("authority", "") or "unknown"
    return "", UNMESHED, ns, name  # from_unmeshed: the proxy's own pod is the destination


def edges_from_results(request: EdgesRequest, results: dict[str, Vector]) -> list[Edge]:
    """Pure: query results → edges with requests in the window, touching the namespace asked for."""
    edges: list[Edge] = []
    for source in ("meshed", "to_unmeshed", "from_unmeshed"):
        ok: dict[EdgeKey, float] = {}
        bad: dict[EdgeKey, float] = {}
        for labels, value in results.get(source, []):
            key = _edge_key(source, labels, request.kind)
            if key is None or not math.isfinite(value):
                continue
            bucket = ok if labels.get("classification") == "success" else bad
            bucket[key] = bucket.get(key, 0.0) + value
        p99: dict[EdgeKey, float] = {}
        for labels, value in results.get(f"{source}_p99", []):
            key = _edge_key(source, labels, request.kind)
            if key is not None and math.isfinite(value) and value >= 0:
                p99[key] = value
        for key in ok.keys() | bad.keys():
            good, failed = round(ok.get(key, 0.0)), round(bad.get(key, 0.0))
            total = good + failed
            if total == 0:
                continue
            if not request.all_namespaces and request.namespace not in (key[0], key[2]):
                continue
            edges.append(Edge(*key, total, good / total, total / request.window_seconds, p99.get(key)))
    edges.sort(key=lambda e: (e.src_namespace, e.src, e.dst_namespace, e.dst))
    return edges


def compute_edges(request: EdgesRequest, query: QueryFn) -> list[Edge]:
    """Run the queries concurrently (the wall time of the slowest), then build the edges."""
    queries = plan_edges(request)
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        futures = {name: pool.submit(query, promql) for name, promql in queries.items()}
        results = {name: f.result() for name, f in futures.items()}
    return edges_from_results(request, results)
