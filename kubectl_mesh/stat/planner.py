"""The stat query planner: StatRequest (one concrete kind) -> PromQL. Pure and I/O-free.

Which series answer which question (linkerd viz's stat_summary semantics, our metric names):

| mode        | selector L                                                     | rows grouped by G       |
| ----------- | -------------------------------------------------------------- | ----------------------- |
| no filter   | direction="inbound", namespace=ns, <kind>=~names               | namespace, <kind>       |
| --to X      | direction="outbound", dst_namespace=X.ns, dst_<X.kind>=X.name, | namespace, <kind>       |
|             | namespace=ns, <kind>=~names  (rows: X's meshed clients)        |                         |
| --from X    | direction="outbound", namespace=X.ns, <X.kind>=X.name,         | dst_namespace,          |
|             | dst_namespace=ns, dst_<kind>=~names  (rows: what X calls)      | dst_<kind>              |

`namespace`, `pod` and `<kind>` are the scraped pod's own labels (added by Prometheus' relabelling,
see charts/kubectl-mesh/files/scrape-config.yaml); `dst_*` are emitted by the client's proxy.
With -A the row namespace matcher is dropped; for the namespace kind G is only the namespace.

Queries (W = the time window):
- responses: `sum(increase(response_total{L}[W])) by (G, classification)`, the counts behind
  SUCCESS and RPS;
- p50/p95/p99: `histogram_quantile(q, sum(rate(response_latency_ms_bucket{L}[W])) by (le, G))`.
  linkerd uses irate() here, which only sees the last two scrapes and makes the numbers jump
  (linkerd2#3918); rate() covers the same window as SUCCESS and RPS;
- tcp_open_connections: `sum(tcp_open_connections{L, peer}) by (G)`;
- tcp_read/write: `sum(rate(tcp_read_bytes_total{L, peer}[W])) by (G)` (bytes per second);
  `peer="src"` inbound, `peer="dst"` outbound, so that each connection is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubectl_mesh.contract import (
    METRIC_LATENCY,
    METRIC_RESPONSES,
    METRIC_TCP_OPEN_CONNECTIONS,
    METRIC_TCP_READ_BYTES,
    METRIC_TCP_WRITE_BYTES,
)
from kubectl_mesh.stat.model import ResourceRef, StatRequest

QUANTILES = {"latency_ms_p50": 0.5, "latency_ms_p95": 0.95, "latency_ms_p99": 0.99}


@dataclass(frozen=True)
class QueryPlan:
    """The PromQL for one kind, and which result labels name a row's namespace and name."""

    queries: dict[str, str]  # field name -> PromQL (see QUERY_FIELDS)
    namespace_label: str
    name_label: str  # equals namespace_label for the namespace kind


def _matcher(label: str, values: tuple[str, ...] | list[str]) -> str:
    # Names were validated as Kubernetes names ([a-z0-9.-]); only "." is special in a regex.
    if len(values) == 1:
        return f'{label}="{values[0]}"'
    alternatives = "|".join(v.replace(".", "\\\\.") for v in values)
    return f'{label}=~"{alternatives}"'


def _ref_matchers(ref: ResourceRef, prefix: str) -> list[str]:
    """Matchers selecting the series of one object; prefix "" (its own) or "dst_" (as target)."""
    if ref.kind == "namespace":
        return [_matcher(f"{prefix}namespace", [ref.name])]
    assert ref.namespace is not None
    return [_matcher(f"{prefix}namespace", [ref.namespace]), _matcher(f"{prefix}{ref.kind}", [ref.name])]


def plan(request: StatRequest) -> QueryPlan:
    """The queries answering `request` (a single concrete kind, not `all`)."""
    kind = request.kind
    if kind == "all":
        raise ValueError("plan() takes one kind; expand `all` with request.kinds()")
    mode = request.mode
    row_prefix = "dst_" if mode == "from" else ""
    ns_label = f"{row_prefix}namespace"
    name_label = ns_label if kind == "namespace" else f"{row_prefix}{kind}"

    matchers = ['direction="inbound"'] if mode == "inbound" else ['direction="outbound"']
    if mode == "to":
        assert request.to is not None
        matchers += _ref_matchers(request.to, "dst_")
    elif mode == "from":
        assert request.from_ is not None
        matchers += _ref_matchers(request.from_, "")
    if not request.all_namespaces and kind != "namespace":
        matchers.append(_matcher(ns_label, [request.namespace]))
    if request.names:
        matchers.append(_matcher(name_label, request.names))
    if kind != "namespace":
        # Only series that name the row object: outbound calls to unmeshed servers carry no dst_<kind>.
        matchers.append(f'{name_label}!=""')

    sel = ", ".join(matchers)
    group = ns_label if kind == "namespace" else f"{ns_label}, {name_label}"
    w = request.window
    queries = {
        "responses": f"sum(increase({METRIC_RESPONSES}{{{sel}}}[{w}])) by ({group}, classification)",
    }
    for field_name, q in QUANTILES.items():
        queries[field_name] = (
            f"histogram_quantile({q}, sum(rate({METRIC_LATENCY}_bucket{{{sel}}}[{w}])) by (le, {group}))"
        )
    # The proxy counts each connection once per peer (accepted from the client, opened to the
    # server): keep the side facing the other workload so each connection counts once.
    tcp_sel = f'{sel}, peer="{"src" if mode == "inbound" else "dst"}"'
    queries["tcp_open_connections"] = f"sum({METRIC_TCP_OPEN_CONNECTIONS}{{{tcp_sel}}}) by ({group})"
    queries["tcp_read_bytes_rate"] = f"sum(rate({METRIC_TCP_READ_BYTES}{{{tcp_sel}}}[{w}])) by ({group})"
    queries["tcp_write_bytes_rate"] = f"sum(rate({METRIC_TCP_WRITE_BYTES}{{{tcp_sel}}}[{w}])) by ({group})"
    return QueryPlan(queries=queries, namespace_label=ns_label, name_label=name_label)
