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


def kube_options(args: argparse.Namespace) -> KubeOptions:
    """The typed values of add_kube_flags' flags, for kubectl_mesh.kube (which never sees argparse)."""
    from kubectl_mesh.kube import KubeOptions

    return KubeOptions(
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
        namespace=getattr(args, "namespace", None),
    )


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
