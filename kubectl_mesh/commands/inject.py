"""`kubectl mesh inject`: add the mesh proxy to the pod templates of manifests.

    kubectl mesh inject app.yaml | kubectl apply -f -

The same pure injector as the admission webhook (`kubectl_mesh.inject`), applied to each
workload's pod template. Other objects pass through unchanged. The YAML goes to stdout only
once every input has been read and parsed (a bad file leaves stdout empty); a per-object report
goes to stderr, like `linkerd inject`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kubectl_mesh import __version__
from kubectl_mesh.commands.transform import TEMPLATE_PATHS, Outcome, Target, transform_files
from kubectl_mesh.contract import LOG_LEVELS
from kubectl_mesh.errors import MeshError

if TYPE_CHECKING:
    from kubectl_mesh.inject import MeshConfig

__all__ = ["TEMPLATE_PATHS", "Outcome", "Target", "add_input_arguments", "register", "transform_files"]

INJECTED_BY = f"kubectl-mesh/{__version__}"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inject",
        help="add the mesh proxy to the workloads in manifests (YAML on stdout)",
        description="Add the mesh proxy to the pod templates of Deployments, StatefulSets, DaemonSets, "
        "ReplicaSets, Jobs, CronJobs and Pods. Other objects pass through unchanged. "
        "Example: kubectl mesh inject app.yaml | kubectl apply -f -",
    )
    add_input_arguments(parser)
    parser.add_argument("--config", metavar="FILE", help="mesh config JSON (the chart's ConfigMap keys)")
    parser.add_argument("--proxy-image", help="proxy image (default from the mesh config)")
    parser.add_argument("--proxy-version", help="proxy image tag and proxy-version annotation")
    parser.add_argument("--init-image", help="image of the mesh-init step (default: the proxy image)")
    parser.add_argument("--proxy-log-level", choices=LOG_LEVELS)
    parser.add_argument("--skip-inbound-ports", metavar="PORTS", help="e.g. 25,3306,8000-8100")
    parser.add_argument("--skip-outbound-ports", metavar="PORTS", help="e.g. 25,3306")
    parser.add_argument(
        "--no-native-sidecar",
        action="store_true",
        help="proxy as the first app container instead of a native sidecar (Kubernetes < 1.29)",
    )
    parser.set_defaults(func=run)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="manifest file, directory (walked for *.yaml, *.yml, *.json) or - for stdin",
    )


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.inject import inject_pod

    config = build_config(args)

    def inject(pod: dict[str, Any], target: Target) -> Outcome:
        decision = inject_pod(
            pod,
            target.namespace,
            target.namespace_labels,
            config,
            workload=target.workload,
            injected_by=INJECTED_BY,
            explicit=True,
        )
        return Outcome(decision.pod, None if decision.injected else decision.message, decision.warnings)

    return transform_files(args.files, inject, done="injected")


def build_config(args: argparse.Namespace) -> MeshConfig:
    """The mesh config: --config's JSON, then the flags on top; errors become one line."""
    from kubectl_mesh.inject import MeshConfig, read_config_file

    mapping: dict[str, Any] = {}
    if args.config:
        loaded = read_config_file(args.config, "--config")  # a ConfigError is a MeshError
        if not isinstance(loaded, dict):
            raise MeshError(f"--config {args.config} must hold a JSON object")
        mapping.update(loaded)
    flags = {
        "proxyImage": args.proxy_image,
        "proxyVersion": args.proxy_version,
        "initImage": args.init_image,
        "logLevel": args.proxy_log_level,
        "skipInboundPorts": args.skip_inbound_ports,
        "skipOutboundPorts": args.skip_outbound_ports,
    }
    mapping.update({k: v for k, v in flags.items() if v is not None})
    if args.no_native_sidecar:
        mapping["nativeSidecar"] = False
    return MeshConfig.from_mapping(mapping)  # ConfigError is a MeshError: cli.main prints it
