"""`kubectl mesh version`: the client's version, and the control plane's when it is reachable.

The control plane's version is read from its webhook Deployment in mesh-system: the label
`kubectl-mesh.io/version` (or `app.kubernetes.io/version`) the chart sets, else the tag of the
webhook image. Never imports the `kubernetes` package.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kubectl_mesh import __version__
from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, DOMAIN, WEBHOOK_SERVICE
from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, kube_options

VERSION_LABELS = (f"{DOMAIN}/version", "app.kubernetes.io/version")

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


def client_version() -> str:
    return f"v{__version__}"


def control_plane_version(client: Any) -> str | None:
    """The installed control plane's version, or None when it is not installed."""
    from kubectl_mesh.kube import KubeError

    path = f"/apis/apps/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/deployments/{WEBHOOK_SERVICE}"
    try:
        deployment = client.get_json(path)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    for key in VERSION_LABELS:
        if labels.get(key):
            value = str(labels[key])
            return value if value.startswith("v") else f"v{value}"
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    for container in containers:
        image = str(container.get("image", ""))
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if tag:
            return tag if tag.startswith("v") else f"v{tag}"
    return "unknown"


def run(args: argparse.Namespace) -> int:
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
