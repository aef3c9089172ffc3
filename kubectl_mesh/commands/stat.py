"""`kubectl mesh stat`: success rate, request rate, latency and TCP per object, from Prometheus.

The numbers come from kubectl_mesh.stat (pure planner and renderer, compute_stat with the
Prometheus client and the Kubernetes lister injected); this module only parses flags and wires
the sources. Imports of the sources happen inside run() to keep `--help` fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kubectl_mesh.flags import (
    add_command,
    add_kube_flags,
    add_output_flag,
    add_prometheus_flag,
    kube_options,
)

if TYPE_CHECKING:
    from kubectl_mesh.stat import StatRequest

EXAMPLES = """
  # How is the web deployment doing? (success rate, requests per second, latency)
  kubectl mesh stat -n emojivoto deployment web

  # Every deployment in every namespace
  kubectl mesh stat deploy -A

  # What does web call, and how do those calls go? (only the calls made by web)
  kubectl mesh stat deploy --all-namespaces --from web --from-namespace emojivoto

  # Who calls voting? (rows are the meshed clients, counted from their side)
  kubectl mesh stat deploy --to voting --to-namespace emojivoto --all-namespaces

  # Pods of one namespace over the last 10 minutes, as JSON
  kubectl mesh stat po -n emojivoto -t 10m -o json

  # Traffic into namespaces, and into everything in one namespace
  kubectl mesh stat ns
  kubectl mesh stat all -n emojivoto
"""

DESCRIPTION = """\
Show the mesh's traffic statistics for Kubernetes objects.

RESOURCES: TYPE, TYPE NAME..., or TYPE/NAME... where TYPE is one of
  deploy|deployment(s), po|pod(s), ns|namespace(s), sts|statefulset(s), ds|daemonset(s),
  job(s), rs|replicaset(s), or all (every workload type; not namespaces).

Without --to/--from the rows are the objects and their inbound traffic (idle ones show "-").
With --to X the rows are the meshed clients of X, counted from their outbound side; with
--from X they are the objects X calls, counted from X's outbound side. X is TYPE/NAME, or a
bare NAME for a deployment. MESHED is meshed/running pods, from the Kubernetes API."""


def register(sub: Any) -> None:
    parser = add_command(
        sub, "stat", help="traffic statistics per object", description=DESCRIPTION, examples=EXAMPLES
    )
    parser.add_argument("resources", nargs="*", metavar="RESOURCES", help="TYPE [NAME...] | TYPE/NAME...")
    parser.add_argument("--from", dest="from_", metavar="TYPE/NAME", help="only traffic sent by this object")
    parser.add_argument("--from-namespace", metavar="NS", help="namespace of --from (default: -n's)")
    parser.add_argument("--to", metavar="TYPE/NAME", help="only traffic sent to this object")
    parser.add_argument("--to-namespace", metavar="NS", help="namespace of --to (default: -n's)")
    parser.add_argument(
        "-t",
        "--time-window",
        default="1m",
        metavar="DURATION",
        help="window of the statistics, longer than the 10s scrape interval (default: 1m)",
    )
    parser.add_argument("--unmeshed", action="store_true", help="also show objects with no meshed pod")
    add_kube_flags(parser, namespace=True, all_namespaces=True, selector=True)
    add_output_flag(parser, ("table", "wide", "json", "yaml"))
    add_prometheus_flag(parser)
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace, namespace: str, namespace_given: bool) -> StatRequest:
    """The stat request the parsed flags mean; `namespace` is -n's or the context's."""
    from kubectl_mesh.stat import build_request

    return build_request(
        resources=args.resources,
        namespace=namespace,
        namespace_given=namespace_given,
        all_namespaces=args.all_namespaces,
        to=args.to,
        to_namespace=args.to_namespace,
        from_=args.from_,
        from_namespace=args.from_namespace,
        window=args.time_window,
        unmeshed=args.unmeshed,
        output=args.output,
        selector=args.selector,
    )


def parse_request(argv: Sequence[str], default_namespace: str = "default") -> StatRequest:
    """What `kubectl mesh stat ARGV` means, read by this command's own parser, without a kubeconfig.

    For commands the mesh itself shows (the demo's walkthrough): one definition, parsed as typed.
    """
    root = argparse.ArgumentParser(prog="kubectl mesh", add_help=False)
    register(root.add_subparsers())
    args = root.parse_args(["stat", *argv])
    given = args.namespace is not None
    return request_from_args(args, args.namespace if given else default_namespace, given)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh import kube, prom
    from kubectl_mesh.stat import compute_stat, render
    from kubectl_mesh.stat.sources import kube_workloads

    # StatInputError, KubeError and PrometheusError are MeshErrors: cli.main prints them.
    options = kube_options(args)
    namespace, given = kube.resolve_namespace(options)
    request = request_from_args(args, namespace, given)
    client = kube.connect(options)
    prometheus = prom.connect(args.prometheus_url, lambda: client, timeout=options.request_timeout)
    for ref in (request.to, request.from_):
        if ref is not None:
            require_object(client, ref.kind, ref.name, ref.namespace)
    rows = compute_stat(request, prometheus.query, kube_workloads(client.get_json))

    text = render(rows, request)
    if text:
        print(text)
    if not rows and request.output in ("table", "wide"):
        print("No traffic found.", file=sys.stderr)
    return 0


def require_object(client: Any, kind: str, name: str, namespace: str | None) -> None:
    """--to/--from must name an object that exists: "No traffic found." would mislead (linkerd2#2328)."""
    from kubectl_mesh.errors import MeshError
    from kubectl_mesh.kube import KubeError
    from kubectl_mesh.stat.sources import list_path

    try:
        client.get_json(f"{list_path(kind, namespace)}/{name}")
    except KubeError as exc:
        if exc.status == 404:
            where = f' in namespace "{namespace}"' if namespace else ""
            raise MeshError(f'{kind} "{name}" not found{where}') from None
        raise
