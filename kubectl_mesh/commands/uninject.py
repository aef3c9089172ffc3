"""`kubectl mesh uninject`: remove exactly what `kubectl mesh inject` added to manifests.

kubectl get deploy web -o yaml | kubectl mesh uninject - | kubectl apply -f -
"""

from __future__ import annotations

import argparse
from typing import Any

from kubectl_mesh.commands.inject import Outcome, Target, add_input_arguments, transform_files


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

    def uninject(pod: dict[str, Any], target: Target) -> Outcome:
        new_pod, changed = uninject_pod(pod)
        return Outcome(new_pod, None if changed else "not injected")

    return transform_files(args.files, uninject, done="uninjected")
