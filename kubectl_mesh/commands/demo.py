"""`kubectl mesh demo`: the walkthrough on this machine, no cluster and no root needed.

Starts emojivoto with a mesh-proxy beside each service and a real Prometheus, all on
127.0.0.1, waits for the bot's traffic, and prints the three `stat` tables of the walkthrough.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  # the walkthrough's three tables, refreshed live until Ctrl-C
  kubectl mesh demo

  # print them once and exit (everything started is stopped)
  kubectl mesh demo --once

  # fixed ports 20000-20024 instead of free ones picked by the system
  kubectl mesh demo --base-port 20000
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run emojivoto in a local mesh (no cluster) and show where its traffic fails",
        description=(
            "Run the emojivoto demo app on 127.0.0.1, each service with a mesh-proxy beside it, and\n"
            "a real Prometheus scraping them; then print the `kubectl mesh stat` tables of the\n"
            "walkthrough (docs/walkthrough.md) that find the failing dependency, refreshed until\n"
            "Ctrl-C. Needs the `prometheus` binary; no cluster, no root."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="print the tables once and exit")
    parser.add_argument(
        "--base-port",
        type=int,
        metavar="PORT",
        help="use the 25 ports from PORT on (checked free) instead of free ports picked by the system",
    )
    parser.add_argument("--prometheus", metavar="PATH", help="the Prometheus binary (default: from PATH)")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="vote-bot loops per second, one list + one vote (default 1)"
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
    return run_demo(options)  # a DemoError is a MeshError: cli.main prints it
