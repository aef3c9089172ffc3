"""`kubectl mesh demo`: the walkthrough on this machine, no cluster and no root needed.

Starts emojivoto with a mesh-proxy beside each service and a real Prometheus, all on
127.0.0.1, waits for the bot's traffic, and prints the three `stat` tables of the walkthrough.
"""

from __future__ import annotations

import argparse

from kubectl_mesh.demo.topology import TOPOLOGIES

EMOJIVOTO = "emojivoto"

EXAMPLES = """\
examples:
  # the walkthrough's three tables, refreshed live until Ctrl-C
  kubectl mesh demo

  # print them once and exit (everything started is stopped)
  kubectl mesh demo --once

  # fixed ports 20000-20024 instead of free ones picked by the system
  kubectl mesh demo --base-port 20000

  # another call graph: the failure three calls deep, behind healthy middles
  kubectl mesh demo --topology depth3 --once
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run emojivoto in a local mesh (no cluster) and show where its traffic fails",
        description=(
            "Run the emojivoto demo app on 127.0.0.1, each service with a mesh-proxy beside it, and\n"
            "a real Prometheus scraping them; then print the `kubectl mesh stat` tables of the\n"
            "walkthrough (docs/walkthrough.md) that find the failing dependency, refreshed until\n"
            "Ctrl-C. Needs the `prometheus` binary; no cluster, no root.\n\n"
            "With --topology NAME, one of the call graphs below runs instead, each workload with its\n"
            "mesh-proxy, entered at `frontend` by a meshed `client`: the demo prints `stat` of its\n"
            "namespace, then where `kubectl mesh diagnose deploy/frontend` leads."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="print the tables once and exit")
    parser.add_argument(
        "--topology",
        choices=(EMOJIVOTO, *TOPOLOGIES),
        default=EMOJIVOTO,
        metavar="NAME",
        help="the app to run (default emojivoto, the walkthrough's); or a call graph to try `diagnose` "
        "on, all in plain Python: " + "; ".join(f"{t.name}: {t.summary}" for t in TOPOLOGIES.values()),
    )
    parser.add_argument(
        "--base-port",
        type=int,
        metavar="PORT",
        help="use consecutive ports from PORT on (emojivoto: 25; checked free) instead of free ports "
        "picked by the system",
    )
    parser.add_argument("--prometheus", metavar="PATH", help="the Prometheus binary (default: from PATH)")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="traffic per second: vote-bot loops (one list + one vote), or a topology's client requests "
        "(default 1)",
    )
    parser.add_argument(
        "--refresh", type=float, default=2.0, metavar="SECONDS", help="live refresh period (default 2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="give up when no traffic shows this long after the window filled (default 90)",
    )
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="also write the tables' rows and the services' own counters (at the start and the end of "
        "the stat window) to FILE as JSON, to check the mesh's numbers against the truth",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.commands.stat import parse_request
    from kubectl_mesh.demo.plan import WALKTHROUGH_STAT, WINDOW, Walkthrough
    from kubectl_mesh.demo.runner import DemoOptions, run_demo
    from kubectl_mesh.errors import MeshError

    if not 0 < args.rate <= 50:
        raise MeshError("--rate must be above 0 and at most 50 loops per second")
    if args.refresh < 0.5:
        raise MeshError("--refresh must be at least 0.5 seconds")
    if args.timeout <= 0:
        raise MeshError("--timeout must be positive")
    options = DemoOptions(
        once=args.once,
        base_port=args.base_port,
        prometheus=args.prometheus,
        request_rate=args.rate,
        refresh_seconds=args.refresh,
        traffic_timeout=args.timeout,
        record=args.record,
        # The walkthrough's commands over the demo's shorter window, read by stat's own parser.
        walkthrough=tuple(
            Walkthrough(argv, parse_request(argv)) for argv in ((*a, "-t", WINDOW) for a in WALKTHROUGH_STAT)
        ),
    )
    if args.topology != EMOJIVOTO:
        return _run_topology(args.topology, options)
    return run_demo(options)  # a DemoError is a MeshError: cli.main prints it


def _run_topology(name: str, options: object) -> int:
    """A topology shows `stat` of all its Deployments, then `diagnose` from its entry point."""
    import dataclasses

    from kubectl_mesh.commands.stat import parse_request
    from kubectl_mesh.demo.plan import WINDOW, Walkthrough
    from kubectl_mesh.demo.runner import DemoOptions
    from kubectl_mesh.demo.topology_runner import run_topology_demo

    assert isinstance(options, DemoOptions)
    argv = ("deploy", "-n", name, "-t", WINDOW)
    return run_topology_demo(
        TOPOLOGIES[name], dataclasses.replace(options, walkthrough=(Walkthrough(argv, parse_request(argv)),))
    )
