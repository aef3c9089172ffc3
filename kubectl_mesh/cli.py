"""`kubectl mesh`: the plugin's entry point.

Each subcommand lives in `kubectl_mesh/commands/<name>.py` and exposes
`register(subparsers) -> None`, adding its parser with `set_defaults(func=run)` where
`run(args) -> int`. Command modules import their heavy dependencies (the kubernetes client,
tabulate, yaml) inside `run`, so that start-up stays cheap. Commands turn flags into typed values
for the libraries (which never see argparse) and let every `MeshError` (kubectl_mesh.errors) rise:
`main` alone prints it, as `error: <message>` and, when it has one, `hint: <hint>`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kubectl_mesh import __version__
from kubectl_mesh.errors import MeshError

# Order here is the order in `--help`.
COMMANDS = (
    "install", "uninstall", "inject", "uninject", "check", "stat", "edges", "diagnose", "tap", "top",
    "version", "demo", "completion",
)  # fmt: skip


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line (and exit 1, as kubectl), naming the help to read."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)


EXAMPLES = """
Examples:
  # Is the mesh healthy?
  kubectl mesh check

  # Success rate, requests per second and latency of a deployment
  kubectl mesh stat -n emojivoto deploy web

  # Which services does web call, and who calls voting?
  kubectl mesh stat deploy -A --from web --from-namespace emojivoto
  kubectl mesh stat deploy -A --to voting --to-namespace emojivoto

  # Let the mesh follow web's failing calls to where they start
  kubectl mesh diagnose deploy/web -n emojivoto

Run `kubectl mesh COMMAND --help` for a command's flags and examples.
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with only `only` (when the command line names one:
    each command module's import then costs nothing to the others)."""
    parser = ArgumentParser(
        prog="kubectl mesh",
        description="kubectl-mesh: where is my traffic, and who is failing?",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-mesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"kubectl_mesh.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kubectl_mesh.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word, as global flags come after it)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 1
    try:
        return int(func(args) or 0)
    except MeshError as exc:  # every user-facing error, from any layer: caught here only
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: exit quietly, without a flush error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except ModuleNotFoundError as exc:
        # e.g. the single-file Krew build carries only pure-Python dependencies.
        command = getattr(args, "command", "")
        print(
            f"error: `kubectl mesh {command}` needs the Python package {exc.name!r}, which is not installed "
            f"here; install the full distribution: pip install kubectl-mesh",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # never a traceback for the user; MESH_DEBUG=1 shows it
        if os.environ.get("MESH_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set MESH_DEBUG=1 for details)", file=sys.stderr)
        return 1


def complete_main() -> int:
    """Entry point of `kubectl_complete-mesh`, called by kubectl's completion (>= 1.26)."""
    module = importlib.import_module("kubectl_mesh.commands.completion")
    return int(module.complete(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
