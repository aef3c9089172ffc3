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
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from kubectl_mesh import __version__
from kubectl_mesh.errors import MeshError

# Order here is the order in `--help`.
COMMANDS = (
    "install", "uninstall", "inject", "uninject", "check", "stat", "edges", "diagnose", "tap", "top",
    "version", "demo", "completion",
)  # fmt: skip


# Flags that kubectl takes before the command too (`kubectl mesh --context lab stat deploy`).
GLOBAL_FLAGS = ("--kubeconfig", "--context")
HELP = "help"
COMPLETE = "__complete"  # hidden, as cobra's: `kubectl-mesh __complete WORDS… CURRENT`


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line (and exit 1, as kubectl), naming the help to read; no prefix
    abbreviations (`--name` is not `--namespace`), for this parser and every subparser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse, but an unknown flag is named with cobra's "Did you mean" suggestion."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = subparsers(self).get(getattr(parsed, "command", None) or "")
            flag = next((word for word in extras if word.startswith("-")), None)
            if flag is None:
                (command or self).error(f"unexpected arguments: {' '.join(extras)}")
            name = flag.split("=", 1)[0]
            known = [o for o in option_strings(command or self) if o.startswith("--")]
            unknown(f"unknown flag: {name}", suggestions(name, known), (command or self).prog)
        return parsed


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers of `parser`, by name (aliases included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions for opt in action.option_strings]


def suggestions(word: str, candidates: Sequence[str]) -> list[str]:
    """Cobra's "Did you mean this?": candidates within two edits of `word` (case aside), or
    starting with it (cobra's SuggestionsFor, SuggestionsMinimumDistance 2)."""
    typed = word.lower()
    return [c for c in candidates if _edits(typed, c.lower()) <= 2 or (typed and c.lower().startswith(typed))]


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def unknown(message: str, suggested: Sequence[str], prog: str) -> NoReturn:
    """The usage error of an unknown command or flag, shaped as cobra (kubectl) prints it."""
    text = f"error: {message}"
    if suggested:
        text += "\n\nDid you mean this?\n" + "".join(f"\t{s}\n" for s in suggested)
    print(f"{text}\nRun '{prog} --help' for usage.", file=sys.stderr)
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
    parser.add_argument(
        "--kubeconfig", dest="global_kubeconfig", metavar="PATH", help="kubeconfig file (here or after it)"
    )
    parser.add_argument(
        "--context", dest="global_context", metavar="NAME", help="kubeconfig context (here or after COMMAND)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"kubectl_mesh.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kubectl_mesh.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    help_parser = sub.add_parser(HELP, help="help about any command", description="Help about any command.")
    help_parser.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to show help for")
    return parser


def command_index(argv: Sequence[str]) -> int:
    """Where the command is in `argv`: after any global flags (`--context lab stat …`)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in GLOBAL_FLAGS:
            i += 2
        elif word.startswith(tuple(f"{flag}=" for flag in GLOBAL_FLAGS)):
            i += 1
        else:
            break
    return i


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line, if it is one of ours."""
    i = command_index(argv)
    return argv[i] if i < len(argv) and argv[i] in COMMANDS else None


_DURATION_VALUE = re.compile(r"-\d")
_VALUE_FLAGS = ("-t", "--time-window")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`-t -5m` reaches the duration check (argparse would take `-5m` for a flag)."""
    out: list[str] = []
    for word in argv:
        if out and out[-1] in _VALUE_FLAGS and _DURATION_VALUE.match(word):
            out[-1] = f"{out[-1]}={word}" if out[-1].startswith("--") else f"{out[-1]}{word}"
        else:
            out.append(word)
    return out


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    """`kubectl mesh help [COMMAND]`: the help on stdout, exit 0, as `kubectl help`."""
    if topic is None:
        parser.print_help(sys.stdout)
        return 0
    if topic not in COMMANDS and topic != HELP:
        unknown(f'unknown command "{topic}" for "kubectl mesh"', suggestions(topic, COMMANDS), parser.prog)
    command = subparsers(build_parser(only=topic) if topic != HELP else parser)[topic]
    command.print_help(sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [COMPLETE]:  # what kubectl_complete-mesh runs when it is a script (Krew)
        return complete(argv[1:])
    argv = _attach_negative_values(argv)
    index = command_index(argv)
    word = argv[index] if index < len(argv) else None
    if word is not None and not word.startswith("-") and word not in (*COMMANDS, HELP):
        unknown(f'unknown command "{word}" for "kubectl mesh"', suggestions(word, COMMANDS), "kubectl mesh")
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == HELP:
        return _help(parser, args.topic)
    for name in ("kubeconfig", "context"):  # the global form, unless the command's own was given
        if getattr(args, name, None) is None and getattr(args, f"global_{name}", None) is not None:
            setattr(args, name, getattr(args, f"global_{name}"))
    func = getattr(args, "func", None)
    if func is None:  # no command: the help, as kubectl with no arguments
        parser.print_help(sys.stdout)
        return 0
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
    return complete(sys.argv[1:])


def complete(words: Sequence[str]) -> int:
    """Cobra's completion protocol for the words after `mesh` (kubectl_mesh.commands.completion)."""
    module = importlib.import_module("kubectl_mesh.commands.completion")
    return int(module.complete(list(words)))


if __name__ == "__main__":
    sys.exit(main())
