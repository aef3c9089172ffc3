"""StatRequest + two injectable sources -> rows. The only place stat's numbers are derived.

    compute_stat(request, query, workloads) -> list[StatRow]

- `query(promql) -> [(labels, value), …]`: a Prometheus instant query returning a vector. The
  CLI and the demo pass `kubectl_mesh.prom.PrometheusClient.query` (the demo's on its own
  Prometheus). Values may be NaN or ±Inf (histogram_quantile does that): they become None.
- `workloads(request) -> [Workload, …]`: the objects of `request.kind` (one concrete kind) in
  `request.namespace` (or all namespaces), with meshed/running pod counts. The CLI lists them
  from the Kubernetes API (kubectl_mesh.stat.sources); the demo from its process table.

The queries and the listing run concurrently (threads), so the wall time is about the slowest
of them, not their sum; both callables must therefore be thread-safe.

Rows (linkerd's semantics): with no --to/--from, every object the lister returns is a row, idle
ones with `-`; with --to/--from only objects with metrics are rows. Rows whose objects have no
meshed pod are hidden unless `--unmeshed` (not in --from mode, whose rows are destinations that
were seen meshed by their caller).

SUCCESS = success / (success + failure) and RPS = (success + failure) / window, from the rounded
counts of `increase()` over the window (as linkerd); a row with no request in the window shows
`-` for SUCCESS, RPS and the latencies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from kubectl_mesh.stat.model import StatRequest, StatRow, Workload
from kubectl_mesh.stat.planner import QUANTILES, QueryPlan, plan

Labels = dict[str, str]
Vector = list[tuple[Labels, float]]
QueryFn = Callable[[str], Vector]
WorkloadsFn = Callable[[StatRequest], list[Workload]]
Key = tuple[str, str]  # (namespace, name)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _key(labels: Labels, qp: QueryPlan) -> Key | None:
    namespace = labels.get(qp.namespace_label, "")
    name = labels.get(qp.name_label, "")
    if not namespace or not name:
        return None
    return namespace, name


def rows_from_results(
    request: StatRequest, qp: QueryPlan, results: dict[str, Vector], workloads: list[Workload]
) -> list[StatRow]:
    """Pure: query results + listed workloads -> sorted rows for one kind."""
    kind = request.kind
    known = {(w.namespace, w.name): w for w in workloads}
    success: dict[Key, float] = {}
    failure: dict[Key, float] = {}
    seen: set[Key] = set()
    for labels, value in results.get("responses", []):
        key = _key(labels, qp)
        if key is None or not math.isfinite(value):
            continue
        seen.add(key)
        bucket = success if labels.get("classification") == "success" else failure
        bucket[key] = bucket.get(key, 0.0) + value

    per_key: dict[str, dict[Key, float | None]] = {}
    for field_name in (*QUANTILES, "tcp_open_connections", "tcp_read_bytes_rate", "tcp_write_bytes_rate"):
        values: dict[Key, float | None] = {}
        for labels, value in results.get(field_name, []):
            key = _key(labels, qp)
            if key is not None:
                values[key] = _finite(value)
                if not field_name.startswith("latency"):
                    seen.add(key)
        per_key[field_name] = values

    if request.mode == "inbound":
        keys = set(known)
    else:
        keys = seen if request.selector is None else seen & set(known)
    if request.names:
        keys = {k for k in keys if k[1] in request.names}

    rows: list[StatRow] = []
    window = request.window_seconds
    for key in keys:
        workload = known.get(key)
        meshed = workload.meshed if workload else None
        hidden = workload is not None and workload.meshed == 0 and not request.unmeshed
        if hidden and request.mode != "from":
            continue  # no meshed pod: clutter unless --unmeshed (linkerd2#3871)
        row = StatRow(
            namespace=key[0],
            kind=kind,
            name=key[1],
            meshed=meshed,
            running=workload.running if workload else None,
        )
        ok = round(success.get(key, 0.0))
        bad = round(failure.get(key, 0.0))
        total = ok + bad
        if total > 0:
            row.requests = total
            row.success = ok / total
            row.rps = total / window
            row.latency_ms_p50 = _latency(per_key["latency_ms_p50"].get(key))
            row.latency_ms_p95 = _latency(per_key["latency_ms_p95"].get(key))
            row.latency_ms_p99 = _latency(per_key["latency_ms_p99"].get(key))
        row.tcp_open_connections = per_key["tcp_open_connections"].get(key)
        row.tcp_read_bytes_rate = per_key["tcp_read_bytes_rate"].get(key)
        row.tcp_write_bytes_rate = per_key["tcp_write_bytes_rate"].get(key)
        rows.append(row)
    rows.sort(key=lambda r: (r.namespace, r.name))
    return rows


def _latency(value: float | None) -> float | None:
    if value is None or value < 0:
        return None
    return value


def compute_stat(request: StatRequest, query: QueryFn, workloads: WorkloadsFn) -> list[StatRow]:
    """Rows for every kind of `request` (several for `all`), kinds in request order."""
    kinds = request.kinds()
    plans = [(request.for_kind(k), plan(request.for_kind(k))) for k in kinds]
    jobs = sum(len(qp.queries) + 1 for _, qp in plans)
    with ThreadPoolExecutor(max_workers=min(16, jobs)) as pool:
        pending: list[tuple[StatRequest, QueryPlan, dict[str, Future[Vector]], Future[list[Workload]]]] = []
        for kind_request, qp in plans:
            listed = pool.submit(workloads, kind_request)
            futures = {name: pool.submit(query, promql) for name, promql in qp.queries.items()}
            pending.append((kind_request, qp, futures, listed))
        rows: list[StatRow] = []
        try:
            for kind_request, qp, futures, listed in pending:
                results = {name: f.result() for name, f in futures.items()}
                rows.extend(rows_from_results(kind_request, qp, results, listed.result()))
        except BaseException:
            # The first failure is the answer: drop the queries not started yet (a hung
            # Prometheus would otherwise be asked again, wave after wave).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return rows
