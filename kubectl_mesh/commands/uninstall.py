"""`kubectl mesh uninstall`: print what `kubectl mesh install` (or the chart) created, to delete.

Prints references (apiVersion, kind, name, namespace) of every object of the chart in the order
to delete them, for `kubectl delete -f -`: the webhook configuration first, so that the API
server stops calling the webhook before it goes; the namespace last. Meshed pods keep their
proxy until they are restarted (`kubectl mesh uninject` removes it from manifests).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kubectl_mesh.flags import add_command

EXAMPLES = """
  # Remove the control plane (objects that were not installed are skipped)
  kubectl mesh uninstall | kubectl delete --ignore-not-found -f -

  # A control plane installed with helm
  helm uninstall kubectl-mesh
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "uninstall",
        help="print the control plane's objects to delete (pipe into kubectl delete -f -)",
        description=(
            "Print references to every object of the kubectl-mesh control plane, in the order to "
            "delete them. Nothing is changed in the cluster: pipe the output into kubectl delete."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["yaml", "name"],
        default="yaml",
        metavar="FORMAT",
        help="yaml: documents for kubectl delete -f -; name: one kind/name per line (default: yaml)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.install.manifest import delete_order, load_snapshot, to_yaml

    refs = delete_order(load_snapshot().objects)  # an InstallError rises to cli.main
    if args.output == "name":
        for ref in refs:
            meta = ref["metadata"]
            where = f" -n {meta['namespace']}" if "namespace" in meta else ""
            sys.stdout.write(f"{ref['kind'].lower()}/{meta['name']}{where}\n")
        return 0
    header = "# Delete with: kubectl mesh uninstall | kubectl delete --ignore-not-found -f -\n"
    sys.stdout.write(to_yaml(refs, header))
    return 0
