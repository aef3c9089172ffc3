"""`kubectl mesh`: the plugin's entry point.

Each subcommand lives in `kubectl_mesh/commands/<name>.py` and exposes
`register(subparsers) -> None`, adding its parser with `set_defaults(func=run)` where
`run(args) -> int`. Command modules import their heavy dependencies (the kubernetes client,
tabulate, yaml) inside `run`, so that start-up stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kubectl_mesh import __version__

# Order here is the order in `--help`.
COMMANDS = ("install", "uninstall", "inject", "uninject", "check", "stat", "version", "demo", "completion")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1, never a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl mesh",
        description="kubectl-mesh: where is my traffic, and who is failing?",
    )
    parser.add_argument("--version", action="version", version=f"kubectl-mesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kubectl_mesh.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kubectl_mesh.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 1
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def complete_main() -> int:
    """Entry point of `kubectl_complete-mesh`, called by kubectl's completion (>= 1.26)."""
    module = importlib.import_module("kubectl_mesh.commands.completion")
    return int(module.complete(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
