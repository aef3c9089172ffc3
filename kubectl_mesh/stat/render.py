"""Rows -> text. Pure: `render(rows, request) -> str` for table/wide (tabulate), JSON and YAML.

Table formats follow the Conduit walkthrough: `90.00%`, `2.0rps`, `2ms`, TCP connections as an
integer, bytes as `1.5B/s`; `-` where a value is unknown (no traffic). The NAMESPACE column shows
with -A, and whenever a row lives outside the requested namespace (--from/--to across namespaces).
Several kinds (`stat all`) print one table per kind, names prefixed `deploy/`, `po/`, …
JSON/YAML give numbers (success 0..1, rps, milliseconds, bytes per second) and null when unknown.
An empty result renders as "" (the caller prints `No traffic found.` on stderr).
"""

from __future__ import annotations

import json
import math

from kubectl_mesh.stat.model import SHORT_NAMES, StatRequest, StatRow

HEADERS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN")
WIDE_HEADERS = ("READ_BYTES/SEC", "WRITE_BYTES/SEC")
NO_VALUE = "-"


def fmt_success(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value * 100:.2f}%"


def fmt_rps(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:.1f}rps"


def fmt_latency(value: float | None) -> str:
    """Whole milliseconds. Below 1 ms, histogram_quantile only interpolates inside the first
    bucket (le="1"): all that is known is "within 1 ms", so it shows as 1ms, not 0ms."""
    if value is None or not math.isfinite(value) or value < 0:
        return NO_VALUE
    return f"{math.ceil(value) if value < 1 else round(value)}ms"


def fmt_count(value: float | None) -> str:
    return NO_VALUE if value is None or not math.isfinite(value) else str(round(value))


def fmt_bytes_rate(value: float | None) -> str:
    return NO_VALUE if value is None or not math.isfinite(value) else f"{value:.1f}B/s"


def fmt_meshed(row: StatRow) -> str:
    if row.meshed is None or row.running is None:
        return NO_VALUE
    return f"{row.meshed}/{row.running}"


def show_namespace_column(rows: list[StatRow], request: StatRequest) -> bool:
    if request.kind == "namespace" or all(r.kind == "namespace" for r in rows):
        return False
    return request.all_namespaces or any(r.namespace != request.namespace for r in rows)


def sort_rows(rows: list[StatRow]) -> list[StatRow]:
    """Kinds in first-seen order (the order `stat all` asked for), then namespace and name."""
    order = {kind: i for i, kind in enumerate(dict.fromkeys(r.kind for r in rows))}
    return sorted(rows, key=lambda r: (order[r.kind], r.namespace, r.name))


def render_table(rows: list[StatRow], request: StatRequest, *, wide: bool = False) -> str:
    import tabulate as tabulate_module  # imported here: only tables need it

    tabulate_module.MIN_PADDING = 0  # columns two spaces apart, as kubectl prints them
    tabulate = tabulate_module.tabulate

    rows = sort_rows(rows)
    with_namespace = show_namespace_column(rows, request)
    several_kinds = len({r.kind for r in rows}) > 1 or request.kind == "all"
    tables: list[str] = []
    kinds_in_order = list(dict.fromkeys(r.kind for r in rows))
    for kind in kinds_in_order:
        headers = list(HEADERS) + (list(WIDE_HEADERS) if wide else [])
        if with_namespace:
            headers.insert(0, "NAMESPACE")
        body: list[list[str]] = []
        for row in (r for r in rows if r.kind == kind):
            name = f"{SHORT_NAMES[kind]}/{row.name}" if several_kinds else row.name
            cells = [
                name,
                fmt_meshed(row),
                fmt_success(row.success),
                fmt_rps(row.rps),
                fmt_latency(row.latency_ms_p50),
                fmt_latency(row.latency_ms_p95),
                fmt_latency(row.latency_ms_p99),
                fmt_count(row.tcp_open_connections),
            ]
            if wide:
                cells += [fmt_bytes_rate(row.tcp_read_bytes_rate), fmt_bytes_rate(row.tcp_write_bytes_rate)]
            if with_namespace:
                cells.insert(0, row.namespace)
            body.append(cells)
        left = 2 if with_namespace else 1  # NAMESPACE and NAME are left-aligned, numbers right
        colalign = ["left"] * left + ["right"] * (len(headers) - left)
        tables.append(
            tabulate(body, headers=headers, tablefmt="plain", colalign=colalign, disable_numparse=True)
        )
    return "\n\n".join(tables)


def render_json(rows: list[StatRow]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)


def render_yaml(rows: list[StatRow]) -> str:
    import yaml

    return str(yaml.safe_dump([r.to_dict() for r in rows], sort_keys=False))


def render(rows: list[StatRow], request: StatRequest) -> str:
    """The output for `request.output`; "" for no rows in table/wide form."""
    if request.output == "json":
        return render_json(sort_rows(rows))
    if request.output == "yaml":
        return render_yaml(sort_rows(rows))
    if not rows:
        return ""
    return render_table(rows, request, wide=request.output == "wide")
