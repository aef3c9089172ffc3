"""`kubectl mesh install`: print the control plane's objects for `kubectl apply -f -`.

The objects are the chart's (charts/kubectl-mesh), as `helm template` renders them with the
default values, from the snapshot packaged with the plugin: no helm needed. The webhook's
certificates are made here, or reused from the cluster's Secret mesh-system/mesh-webhook-tls
as the chart's `lookup` does, so that re-running install keeps the running webhook's certificate.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from kubectl_mesh import __version__
from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE
from kubectl_mesh.flags import add_command, add_kube_flags, kube_options

if TYPE_CHECKING:
    from kubectl_mesh.kube import KubeOptions

EXAMPLES = """
  # Install the control plane (webhook, Prometheus, Grafana) into mesh-system
  kubectl mesh install | kubectl apply -f -

  # Refuse pods in meshed namespaces while the webhook is down, keep a day of metrics
  kubectl mesh install --webhook-failure-policy Fail --prometheus-retention 24h | kubectl apply -f -

  # Use your own Prometheus and no Grafana (add the mesh-proxy scrape job to your Prometheus)
  kubectl mesh install --no-prometheus --no-grafana | kubectl apply -f -

  # Check against the cluster without changing it
  kubectl mesh install | kubectl apply --dry-run=server -f -
"""


def register(sub: Any) -> None:
    from kubectl_mesh.install.manifest import OPTIONS

    parser = add_command(
        sub,
        "install",
        help="print the control plane's objects (pipe into kubectl apply -f -)",
        description=(
            "Print the kubectl-mesh control plane (namespace mesh-system) as YAML: the objects of the "
            "Helm chart with its default values, without helm. Flags set the common values."
        ),
        examples=EXAMPLES,
    )
    values = parser.add_argument_group("values (default: the chart's)")
    for option in OPTIONS:
        dest = "value_" + option.key.replace(".", "_")
        values.add_argument(option.flag, dest=dest, metavar="VALUE", help=option.help)
    values.add_argument("--no-prometheus", action="store_true", help="no Prometheus (bring your own)")
    values.add_argument("--no-grafana", action="store_true", help="no Grafana and dashboards")
    parser.add_argument(
        "--ignore-cluster",
        action="store_true",
        help="do not read the existing webhook certificate from the cluster: always make new ones",
    )
    add_kube_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.install.manifest import (
        OPTIONS,
        Settings,
        load_snapshot,
        render,
        resolve,
        to_yaml,
    )

    # An InstallError (a value the chart rejects) rises to cli.main as one line.
    snapshot = load_snapshot()
    settings = Settings(
        {o.key: getattr(args, "value_" + o.key.replace(".", "_")) for o in OPTIONS}
        | {"prometheus.enabled": not args.no_prometheus, "grafana.enabled": not args.no_grafana}
    )
    resolve(snapshot, settings)  # bad values fail before any certificate or cluster work
    tls = None if args.ignore_cluster else existing_tls(kube_options(args))
    if tls is None:
        tls = new_tls(int(snapshot.defaults["webhook.certs.validityDays"]))
    objects = render(snapshot, settings, tls)
    header = (
        f"# kubectl-mesh {__version__} control plane (chart {snapshot.chart_version}).\n"
        "# Apply with: kubectl mesh install | kubectl apply -f -\n"
    )
    sys.stdout.write(to_yaml(objects, header))
    return 0


def existing_tls(options: KubeOptions) -> Any:
    """The webhook's current certificates, if the cluster is reachable and has them."""
    from kubectl_mesh.install.manifest import TLS_SECRET, WebhookTLS
    from kubectl_mesh.kube import KubeError
    from kubectl_mesh.kubeapi import connect  # the kubernetes package: install is not latency-critical

    try:
        client = connect(options, timeout=5.0)
        secret = client.get_json(f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/secrets/{TLS_SECRET}")
    except KubeError as exc:
        if exc.status not in (None, 404):
            print(f"warning: new webhook certificates: cannot read the current ones: {exc}", file=sys.stderr)
        return None
    data = secret.get("data") or {}
    if not all(k in data for k in ("ca.crt", "tls.crt", "tls.key")):
        return None
    try:
        return WebhookTLS.from_secret_data(data)
    except ValueError:
        return None


def new_tls(valid_days: int) -> Any:
    """A new CA and serving certificate for mesh-webhook.mesh-system.svc (install/certs.py)."""
    from kubectl_mesh.install.certs import generate_webhook_certs
    from kubectl_mesh.install.manifest import WebhookTLS

    bundle = generate_webhook_certs(valid_days=valid_days)
    return WebhookTLS(ca_cert=bundle.ca_cert_pem, cert=bundle.cert_pem, key=bundle.key_pem)
