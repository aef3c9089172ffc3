"""`python -m lab up|down|status` (make cluster / make cluster-down)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from lab import cluster
from lab.config import KUBECONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description="The local lab cluster of kubectl-mesh.")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--no-prometheus", action="store_true", help="up: skip the lab's Prometheus")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `python -m lab status | head` ends quietly
    try:
        if args.command == "up":
            t0 = time.monotonic()
            state = cluster.up(owner="cli", prometheus=not args.no_prometheus)
            print(f"lab up in {time.monotonic() - t0:.1f}s: kubeconfig {KUBECONFIG}")
            print(f"  API server  {state.api_url}")
            print(f"  Prometheus  {state.prometheus_url}")
            print(f"  binaries    {state.bin_dir}")
            print(f"  try: kubectl --kubeconfig {KUBECONFIG} get nodes")
        elif args.command == "down":
            print(f"lab down in {cluster.down():.1f}s")
        else:
            print(cluster.dump_status())
    except cluster.LabError as err:
        print(f"lab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
