"""`kubectl mesh uninject`: remove exactly what `kubectl mesh inject` added to manifests.

kubectl get deploy web -o yaml | kubectl mesh uninject - | kubectl apply -f -
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kubectl_mesh.commands.inject import add_input_arguments, transform_files

if TYPE_CHECKING:
    from kubectl_mesh.inject import Workload


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "uninject",
        help="remove the mesh proxy from the workloads in manifests (YAML on stdout)",
        description="Remove the containers, volume, labels and annotations that `kubectl mesh inject` "
        "added. Other objects pass through unchanged.",
    )
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.inject import uninject_pod

    def uninject(
        pod: dict[str, Any], namespace: str | None, workload: Workload | None
    ) -> tuple[dict[str, Any], str | None]:
        new_pod, changed = uninject_pod(pod)
        return new_pod, (None if changed else "not injected")

    return transform_files(args.files, uninject, done="uninjected")
