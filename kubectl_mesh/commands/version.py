"""`kubectl mesh version`: the client's version, and the control plane's when it is reachable.

The control plane's version is read from its webhook Deployment in mesh-system
(kubectl_mesh.health.control_plane_version, which `check` compares with the client's). Never
imports the `kubernetes` package.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, kube_options

EXAMPLES = """
  # Client and control-plane versions
  kubectl mesh version

  # Only the client's, without contacting the cluster
  kubectl mesh version --client --short

  # As JSON
  kubectl mesh version -o json
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "version",
        help="client and control-plane versions",
        description="Print the client's version and, when the cluster is reachable, the control plane's.",
        examples=EXAMPLES,
    )
    parser.add_argument("--client", action="store_true", help="only the client's version")
    parser.add_argument("--short", action="store_true", help="only the version numbers")
    add_kube_flags(parser)
    add_output_flag(parser, ("text", "json", "yaml"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.health import client_version, control_plane_version

    info: dict[str, str | None] = {"client": client_version()}
    if not args.client:
        from kubectl_mesh import kube

        try:
            info["server"] = (
                control_plane_version(kube.connect(kube_options(args))) or "unavailable (not installed)"
            )
        except kube.KubeError as exc:
            info["server"] = f"unavailable ({exc})"
    if args.output == "json":
        print(json.dumps(info, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(info, sort_keys=False), end="")
    elif args.short:
        for value in info.values():
            print(value)
    else:
        print(f"Client version: {info['client']}")
        if "server" in info:
            print(f"Server version: {info['server']}")
    return 0
