"""kubectl's flag conventions, shared by every `kubectl mesh` command. Cheap to import.

    parser = add_command(sub, "stat", help="…", description="…", examples=EXAMPLES)
    add_kube_flags(parser, namespace=True, all_namespaces=True, selector=True)
    add_output_flag(parser, ("table", "wide", "json", "yaml"))
    add_prometheus_flag(parser)
    ...
    client = kube.connect(kube_options(args))        # flags → typed values → libraries

Flags are added to each subcommand (not to `kubectl mesh` itself) so that they go after the
command as in kubectl (`kubectl mesh stat deploy -n emojivoto --context lab`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kubectl_mesh.contract import ENV_PROMETHEUS_URL

if TYPE_CHECKING:
    from kubectl_mesh.kube import KubeOptions


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; wider option column like kubectl's help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def add_command(
    sub: Any, name: str, *, help: str, description: str, examples: str, aliases: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """A subcommand parser with kubectl-like help: description, then `Examples:`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="Examples:\n" + examples.strip("\n"),
        formatter_class=HelpFormatter,
        aliases=list(aliases),
    )
    return parser


def add_kube_flags(
    parser: argparse.ArgumentParser,
    *,
    namespace: bool = False,
    all_namespaces: bool = False,
    selector: bool = False,
) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    group.add_argument(
        "--context", metavar="NAME", help="kubeconfig context to use (default: the current one)"
    )
    if namespace:
        group.add_argument(
            "-n",
            "--namespace",
            metavar="NS",
            help="namespace of the objects (default: the context's namespace)",
        )
    if all_namespaces:
        group.add_argument(
            "-A", "--all-namespaces", action="store_true", help="objects in every namespace (not with -n)"
        )
    if selector:
        group.add_argument(
            "-l", "--selector", metavar="SELECTOR", help="label selector for the listed objects, e.g. app=web"
        )
    group.add_argument(
        "--request-timeout",
        metavar="DURATION",
        help="give up on a single request (to the API server or Prometheus) after this long, e.g. 5s, 1m",
    )


def kube_options(args: argparse.Namespace) -> KubeOptions:
    """The typed values of add_kube_flags' flags, for kubectl_mesh.kube (which never sees argparse)."""
    from kubectl_mesh.kube import KubeOptions

    timeout = getattr(args, "request_timeout", None)
    return KubeOptions(
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
        namespace=getattr(args, "namespace", None),
        request_timeout=None if timeout is None else request_timeout(timeout),
    )


_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def request_timeout(text: str) -> float:
    """--request-timeout's value in seconds: a Go duration (`5s`, `1m30s`, `500ms`) or bare
    seconds, as kubectl takes it; more than zero (a request that may hang forever is no help)."""
    from kubectl_mesh.errors import MeshError

    seconds: float | None = None
    if re.fullmatch(r"\d+(\.\d*)?", text):
        seconds = float(text)
    elif _GO_DURATION.fullmatch(text):
        seconds = sum(
            float(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)", text)
        )
    if seconds is None or seconds <= 0:
        raise MeshError(f'--request-timeout "{text}" is not a duration above zero; use e.g. 5s, 1m')
    return seconds


def add_output_flag(
    parser: argparse.ArgumentParser, choices: Sequence[str], default: str | None = None
) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=list(choices),
        default=default or choices[0],
        metavar="FORMAT",
        help=f"output format: {'|'.join(choices)} (default: {default or choices[0]})",
    )


def add_prometheus_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prometheus-url",
        metavar="URL",
        help=(
            f"Prometheus to query (default: ${ENV_PROMETHEUS_URL}, else the mesh's Prometheus "
            "through the API server's service proxy)"
        ),
    )
