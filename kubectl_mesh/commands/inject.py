"""`kubectl mesh inject`: add the mesh proxy to the pod templates of manifests.

    kubectl mesh inject app.yaml | kubectl apply -f -

The same pure injector as the admission webhook (`kubectl_mesh.inject`), applied to each
workload's pod template. Other objects pass through unchanged. The YAML goes to stdout only
once every input has been read and parsed (a bad file leaves stdout empty); a per-object report
goes to stderr, like `linkerd inject`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubectl_mesh import __version__
from kubectl_mesh.contract import LOG_LEVELS
from kubectl_mesh.errors import MeshError

if TYPE_CHECKING:
    from kubectl_mesh.inject import MeshConfig, Workload

INJECTED_BY = f"kubectl-mesh/{__version__}"

# kind -> path from the object to its pod template ([] for a Pod: the object is the pod).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class Target:
    """Where a pod template sits: its namespace, the labels of that namespace when the input
    holds the Namespace object (else None: unknown, no cluster call), and the workload."""

    namespace: str | None
    namespace_labels: Mapping[str, str] | None
    workload: Workload | None


@dataclass(frozen=True)
class Outcome:
    """A transformed pod, or the skip reason; plus warnings for the report."""

    pod: dict[str, Any]
    skipped: str | None = None
    warnings: tuple[str, ...] = ()


# (pod or template, where it sits) -> what became of it
PodAction = Callable[[dict[str, Any], Target], Outcome]


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
        loaded = read_config_file(args.config, "--config")  # a MeshConfigError is a MeshError
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
    return MeshConfig.from_mapping(mapping)  # MeshConfigError is a MeshError: cli.main prints it


def transform_files(paths: list[str], action: PodAction, done: str) -> int:
    """Apply `action` to every pod template of every input, one document at a time; the YAML
    goes to stdout once every input has been read (a bad one leaves stdout empty), the report
    to stderr. Documents wait in a temporary file, not in memory: inputs may be large."""
    import io
    import shutil
    import tempfile

    from kubectl_mesh import manifests

    report: list[str] = []
    namespaces: dict[str, dict[str, str]] = {}  # Namespace objects met so far in the input
    with tempfile.TemporaryFile(prefix="kubectl-mesh-") as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8")
        for source in manifests.open_sources(paths, sys.stdin):  # a ManifestError is a MeshError
            for number, doc in manifests.iter_documents(source):
                if not isinstance(doc, dict):
                    raise MeshError(f"{source.name}: document {number} is not a Kubernetes object")
                namespaces.update(namespace_labels([doc]))
                try:
                    manifests.dump_document(transform_object(doc, action, done, report, namespaces), out)
                except RecursionError:
                    raise MeshError(manifests.too_deep(source.name, number)) from None
        out.flush()
        raw.seek(0)
        if hasattr(sys.stdout, "buffer"):  # bytes to bytes: no decoding and encoding again
            sys.stdout.flush()
            shutil.copyfileobj(raw, sys.stdout.buffer)
        else:
            sys.stdout.write(raw.read().decode())
        out.detach()
    sys.stdout.flush()
    if report:
        print("\n".join(report), file=sys.stderr)
    return 0


def namespace_labels(docs: list[Any]) -> dict[str, dict[str, str]]:
    """The labels of every Namespace object in the input (in Lists too), by name."""
    found: dict[str, dict[str, str]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        items = doc.get("items")
        if str(doc.get("kind", "")).endswith("List") and isinstance(items, list):
            found.update(namespace_labels(items))
        elif doc.get("kind") == "Namespace" and isinstance(doc.get("metadata"), dict):
            meta = doc["metadata"]
            labels = meta.get("labels")
            if isinstance(meta.get("name"), str):
                found[meta["name"]] = {
                    str(k): str(v) for k, v in (labels if isinstance(labels, dict) else {}).items()
                }
    return found


def transform_object(
    obj: dict[str, Any],
    action: PodAction,
    done: str,
    report: list[str],
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """One object (or List) with `action` applied to its pod template; appends report lines."""
    namespaces = namespaces or {}
    kind = obj.get("kind")
    items = obj.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        new_items = [
            transform_object(item, action, done, report, namespaces) if isinstance(item, dict) else item
            for item in items
        ]
        return {**obj, "items": new_items}
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    label = f'{str(kind or "object").lower()} "{name}"'
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        report.append(f"{label} skipped: not a workload")
        return obj
    path = TEMPLATE_PATHS[kind]
    template = _get(obj, path)
    if not isinstance(template, dict):
        report.append(f"{label} skipped: no pod template")
        return obj
    from kubectl_mesh.inject import Workload

    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else None
    workload = None if kind == "Pod" else Workload(kind.lower(), str(name))
    outcome = action(template, Target(namespace, namespaces.get(namespace or ""), workload))
    report.extend(f"{label} warning: {warning}" for warning in outcome.warnings)
    if outcome.skipped is not None:
        report.append(f"{label} skipped: {outcome.skipped}")
        return obj
    report.append(f"{label} {done}")
    return _set(obj, path, outcome.pod)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with `value` at `path`, copying only the dicts on the way."""
    if not path:
        return value
    return {**obj, path[0]: _set(obj[path[0]], path[1:], value)}
