"""Edges and diagnoses → text. Pure: tables (tabulate, as `stat`), JSON, and Graphviz DOT.

DOT colours each edge by its success rate (green ≥ 99%, orange ≥ 95%, red below), labels it
with success and RPS, and draws unmeshed ends dashed; `kubectl mesh edges -o svg` pipes it
through Graphviz's `dot` (the command does the I/O).
"""

from __future__ import annotations

import json

from kubectl_mesh.graph.diagnose import Culprit, Diagnosis
from kubectl_mesh.graph.edges import UNMESHED, Edge, EdgesRequest
from kubectl_mesh.stat.model import SHORT_NAMES
from kubectl_mesh.stat.render import fmt_latency, fmt_rps, fmt_success

EDGE_HEADERS = ("SRC", "DST", "SRC_NS", "DST_NS", "SUCCESS", "RPS", "LATENCY_P99")
HOP_HEADERS = ("CALLER", "CALLEE", "SUCCESS", "RPS", "LATENCY_P99")


def _tabulate(headers: tuple[str, ...], body: list[list[str]], left: int) -> str:
    import tabulate as tabulate_module  # imported here: only tables need it

    tabulate_module.MIN_PADDING = 0  # columns two spaces apart, as kubectl prints them
    colalign = ["left"] * left + ["right"] * (len(headers) - left)
    return str(
        tabulate_module.tabulate(
            body, headers=list(headers), tablefmt="plain", colalign=colalign, disable_numparse=True
        )
    )


def _dst_name(edge: Edge) -> str:
    return edge.dst if edge.dst_meshed else f"{edge.dst} {UNMESHED}"


def render_edges(edges: list[Edge], request: EdgesRequest) -> str:
    """`-o table|json|dot`; "" for no edges in table form (the caller says so on stderr)."""
    if request.output == "json":
        return json.dumps([e.to_dict() for e in edges], indent=2)
    if request.output in ("dot", "svg"):
        return render_dot(edges, request.kind)
    if not edges:
        return ""
    body = [
        [
            e.src,
            _dst_name(e),
            e.src_namespace or "-",
            e.dst_namespace or "-",
            fmt_success(e.success),
            fmt_rps(e.rps),
            fmt_latency(e.latency_ms_p99),
        ]
        for e in edges
    ]
    return _tabulate(EDGE_HEADERS, body, left=4)


def edge_colour(success: float) -> str:
    if success >= 0.99:
        return "#2e7d32"  # green
    if success >= 0.95:
        return "#ef6c00"  # orange
    return "#c62828"  # red


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(edges: list[Edge], kind: str) -> str:
    """A Graphviz digraph: one node per workload (namespace/name), edges coloured by success."""
    short = SHORT_NAMES.get(kind, kind)
    lines = [
        "digraph mesh {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    nodes: dict[str, bool] = {}  # id -> meshed
    for e in edges:
        nodes.setdefault(_node_id(e.src_namespace, e.src, short), e.src_meshed)
        nodes.setdefault(_node_id(e.dst_namespace, e.dst, short), e.dst_meshed)
    for node, meshed in sorted(nodes.items()):
        style = "" if meshed else ', style="rounded,dashed", fontcolor="#616161"'
        lines.append(f"  {_dot_id(node)} [label={_dot_id(node)}{style}];")
    for e in edges:
        colour = edge_colour(e.success)
        label = f"{fmt_success(e.success)}\\n{fmt_rps(e.rps)}"
        style = "" if e.src_meshed and e.dst_meshed else ", style=dashed"
        lines.append(
            f"  {_dot_id(_node_id(e.src_namespace, e.src, short))} -> "
            f'{_dot_id(_node_id(e.dst_namespace, e.dst, short))} [color="{colour}", fontcolor="{colour}", '
            f'label="{label}", penwidth={1.0 if e.success >= 0.99 else 2.5}{style}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_id(namespace: str, name: str, short: str) -> str:
    """`emojivoto/deploy/web`; an unmeshed caller is `(unmeshed)`, an unmeshed callee its authority."""
    if namespace:
        return f"{namespace}/{short}/{name}"
    return name if name == UNMESHED else f"{name} {UNMESHED}"


def render_diagnosis(d: Diagnosis, window: str, output: str = "table") -> str:
    """The verdict in words, and for each culprit the failing hops that lead to it."""
    if output == "json":
        return json.dumps(d.to_dict(), indent=2)
    short = SHORT_NAMES.get(d.kind, d.kind)
    target = f"{short}/{d.target[1]}"
    inbound = d.inbound
    lines: list[str] = []
    if inbound is None or inbound.success is None:
        lines.append(f"{target}: no inbound requests in the last {window}")
    else:
        lines.append(
            f"{target}: {fmt_success(inbound.success)} success, {fmt_rps(inbound.rps)} inbound "
            f"over the last {window} (threshold {fmt_success(d.threshold)})"
        )
    if d.healthy:
        lines.append(
            f"Nothing is failing: every call from {target} and onwards succeeds at least "
            f"{fmt_success(d.threshold)} of the time."
        )
        return "\n".join(lines)
    if len(d.culprits) > 1:
        names = ", ".join(_culprit_name(c, short) for c in d.culprits)
        lines.append(f"Failures start in {len(d.culprits)} places: {names}.")
    for culprit in d.culprits:
        lines.append("")
        if culprit.path:
            body = [
                [
                    _hop_name(e.src_namespace, e.src, d.target[0]),
                    _hop_name(e.dst_namespace, e.dst, d.target[0]) + ("" if e.dst_meshed else f" {UNMESHED}"),
                    fmt_success(e.success),
                    fmt_rps(e.rps),
                    fmt_latency(e.latency_ms_p99),
                ]
                for e in culprit.path
            ]
            lines.append(_tabulate(HOP_HEADERS, body, left=2))
        lines.append("→ " + _verdict(culprit, d, short))
    return "\n".join(lines)


def _hop_name(namespace: str, name: str, target_namespace: str) -> str:
    return name if namespace in ("", target_namespace) else f"{namespace}/{name}"


def _culprit_name(c: Culprit, short: str) -> str:
    return f"{short}/{c.node[1]}" if c.meshed else f"{c.node[1]} {UNMESHED}"


def _verdict(c: Culprit, d: Diagnosis, short: str) -> str:
    name = _culprit_name(c, short)
    if not c.path:
        rate = d.inbound.success if d.inbound is not None and d.inbound.success is not None else 1.0
        return (
            f"{name} fails {fmt_success(1 - rate)} of its requests, and every call it makes is "
            f"healthy → look at {c.node[1]}"
        )
    last = c.path[-1]
    caller = last.src
    evidence = f"fails {fmt_success(1 - last.success)} of {caller}'s calls ({fmt_rps(last.rps)})"
    if not c.meshed:
        return f"{name} {evidence}; it has no proxy, so the mesh cannot see inside it → look at {c.node[1]}"
    if c.cycle_to:
        back = ", ".join(f"{short}/{n}" for _, n in c.cycle_to)
        return (
            f"{name} {evidence}; its own failing calls go back to {back} (a cycle: the mesh cannot tell "
            f"which started) → look at {c.node[1]} and {back}"
        )
    return f"{name} {evidence}; its own callees are healthy → look at {c.node[1]}"
