"""`kubectl mesh edges`: who talks to whom, how well, from Prometheus (kubectl_mesh.graph)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, add_prometheus_flag, kube_options

EXAMPLES = """
  # Every call between deployments that touches the emojivoto namespace
  kubectl mesh edges deploy -n emojivoto

  # The whole mesh, as a picture (needs Graphviz's dot: apt-get install -y graphviz)
  kubectl mesh edges deploy -A -o svg > mesh.svg

  # As a Graphviz graph, or as JSON
  kubectl mesh edges deploy -A -o dot
  kubectl mesh edges po -n emojivoto -t 10m -o json
"""

DESCRIPTION = """\
List every src -> dst pair of workloads of one TYPE that exchanged requests in the window, with
the success rate, requests per second and p99 latency seen by the caller's proxy. An end
without a proxy shows as (unmeshed): an unmeshed caller is seen by its callee's proxy, an
unmeshed callee is named by the authority its caller asked for.

TYPE is one of deploy|deployment(s), po|pod(s), sts|statefulset(s), ds|daemonset(s), job(s),
rs|replicaset(s). With -n, the edges with either end in that namespace. -o svg draws the graph
through Graphviz's `dot`, each edge coloured by its success rate."""


def register(sub: Any) -> None:
    parser = add_command(
        sub, "edges", help="who calls whom, with success rate and latency", description=DESCRIPTION,
        examples=EXAMPLES,
    )  # fmt: skip
    parser.add_argument("kind", metavar="TYPE", help="workload type of both ends, e.g. deploy")
    parser.add_argument("-t", "--time-window", default="1m", metavar="DURATION", help="window (default: 1m)")
    add_kube_flags(parser, namespace=True, all_namespaces=True)
    add_output_flag(parser, ("table", "json", "dot", "svg"))
    add_prometheus_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh import kube, prom
    from kubectl_mesh.graph.edges import build_edges_request, compute_edges
    from kubectl_mesh.graph.render import render_edges

    options = kube_options(args)
    namespace, given = kube.resolve_namespace(options)
    request = build_edges_request(
        kind=args.kind,
        namespace=namespace,
        all_namespaces=args.all_namespaces,
        namespace_given=given,
        window=args.time_window,
        output=args.output,
    )
    prometheus = prom.connect(
        args.prometheus_url, lambda: kube.connect(options), timeout=options.request_timeout
    )
    edges = compute_edges(request, prometheus.query)
    text = render_edges(edges, request)
    if request.output == "svg":
        sys.stdout.write(draw_svg(text))
        return 0
    if text:
        print(text)
    if not edges and request.output == "table":
        print("No edges found.", file=sys.stderr)
    return 0


def draw_svg(dot_source: str) -> str:
    """DOT → SVG through Graphviz's `dot`; a MeshError naming the package when it is missing."""
    import shutil
    import subprocess

    from kubectl_mesh.errors import MeshError

    dot = shutil.which("dot")
    if dot is None:
        raise MeshError(
            "-o svg needs Graphviz's `dot`, which is not installed", "apt-get install -y graphviz"
        )
    done = subprocess.run([dot, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MeshError(f"dot -Tsvg failed: {last}")
    return done.stdout
