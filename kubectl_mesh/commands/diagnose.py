"""`kubectl mesh diagnose`: where is my traffic failing? The seed's digging, done by the mesh."""

from __future__ import annotations

import argparse
from typing import Any

from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, add_prometheus_flag, kube_options

EXAMPLES = """
  # Why does web fail some of its requests? Follow its failing calls to where they start
  kubectl mesh diagnose deploy/web -n emojivoto

  # Over the last 10 minutes, calling anything below 99.9% success failing
  kubectl mesh diagnose deploy/web -n emojivoto -t 10m --threshold 99.9

  # The same facts as JSON
  kubectl mesh diagnose deploy/web -n emojivoto -o json
"""

DESCRIPTION = """\
Walk the call graph from one workload to where its failures start: take its inbound success
rate, follow each outbound call whose success rate is below the threshold, then that callee's
own failing calls, and so on, until workloads whose callees are all healthy. Those are the
culprits; for each, the failing hops that lead to it and the evidence. Says so when nothing
fails, when failures start in several places, when a failing call goes to a workload without a
proxy, and when failing calls form a cycle. RESOURCE is TYPE/NAME, TYPE NAME, or a bare NAME for
a deployment."""


def register(sub: Any) -> None:
    parser = add_command(
        sub, "diagnose", help="follow failing calls to where the failures start", description=DESCRIPTION,
        examples=EXAMPLES,
    )  # fmt: skip
    parser.add_argument("resource", nargs="+", metavar="RESOURCE", help="TYPE/NAME | TYPE NAME | NAME")
    parser.add_argument("-t", "--time-window", default="1m", metavar="DURATION", help="window (default: 1m)")
    parser.add_argument(
        "--threshold",
        default="99",
        metavar="PERCENT",
        help="a call fails when its success rate is below this (default: 99)",
    )
    add_kube_flags(parser, namespace=True)
    add_output_flag(parser, ("table", "json"))
    add_prometheus_flag(parser)
    parser.set_defaults(func=run)


def parse_threshold(text: str) -> float:
    """`99`, `99.5` or `99%` → 0.99…; StatInputError on anything outside (0, 100]."""
    from kubectl_mesh.stat.model import StatInputError

    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = float("nan")
    if not 0 < value <= 100:  # NaN fails too
        raise StatInputError(f'--threshold must be a percentage above 0 and at most 100, got "{text}"')
    return value / 100


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh import kube, prom
    from kubectl_mesh.commands.stat import require_object
    from kubectl_mesh.graph.diagnose import diagnose
    from kubectl_mesh.graph.edges import build_edges_request, compute_edges
    from kubectl_mesh.graph.render import render_diagnosis
    from kubectl_mesh.stat import StatInputError, build_request, compute_stat
    from kubectl_mesh.stat.sources import kube_workloads

    threshold = parse_threshold(args.threshold)
    options = kube_options(args)
    namespace, given = kube.resolve_namespace(options)
    words = args.resource
    if len(words) == 1 and "/" not in words[0]:
        words = ["deployment", words[0]]
    target = build_request(
        resources=words, namespace=namespace, namespace_given=given, window=args.time_window
    )
    if len(target.names) != 1 or target.kind in ("namespace", "all"):
        raise StatInputError("diagnose takes one workload: TYPE/NAME, e.g. deploy/web")
    name = target.names[0]
    edges_request = build_edges_request(
        kind=target.kind, namespace=namespace, all_namespaces=True, namespace_given=False,
        window=args.time_window, output=args.output,
    )  # fmt: skip
    client = kube.connect(options)
    require_object(client, target.kind, name, namespace)
    prometheus = prom.connect(args.prometheus_url, lambda: client, timeout=options.request_timeout)
    rows = compute_stat(target, prometheus.query, kube_workloads(client.get_json))
    edges = compute_edges(edges_request, prometheus.query)
    result = diagnose(target.kind, (namespace, name), rows[0] if rows else None, edges, threshold)
    print(render_diagnosis(result, args.time_window, args.output))
    return 0
