"""`mesh-proxy`: `run` serves (the sidecar), `init` writes the iptables rules (the init step).

Importing this module is cheap: gevent and the proxy are imported only by `run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="mesh-proxy", description="kubectl-mesh sidecar: `run` serves, `init` writes iptables rules."
    )
    parser.add_argument("command", choices=("run", "init"), help="what to do")
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] not in ("run", "init"):
        print(f"mesh-proxy: unknown command {args[0]!r} (expected run or init)", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    from kubectl_mesh.errors import MeshError

    from .config import ProxyConfigError

    try:
        if command == "init":
            from .init import main as init_main

            return init_main(rest)
        from .config import parse_run_args

        config = parse_run_args(rest)
    except MeshError as error:  # caught once: one line (and a hint), never a traceback
        print(f"mesh-proxy {command}: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return 2 if isinstance(error, ProxyConfigError) else 1
    from .server import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
