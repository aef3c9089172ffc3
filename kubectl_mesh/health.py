"""The mesh's health checks (like linkerd2's pkg/healthcheck): what `kubectl mesh check` runs.

A check is a function `(Context) -> str`: it returns what it found, or raises `CheckFailed` with
what is wrong and a hint that says what to run. `run_checks` runs a list of them in order; a
check that later ones depend on (the API server) stops the run when it fails, and with a wait
each failing check is retried until it passes or the time is up. Nothing here prints: the
command renders the results (and the spinner). The cluster is reached through `Context`, which
takes typed values (KubeOptions, a Prometheus URL) and connects on first use, so the checks can
run against any client.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubectl_mesh import __version__
from kubectl_mesh.contract import (
    CONTROL_PLANE_NAMESPACE,
    DOMAIN,
    EVENT_INJECTION_SKIPPED,
    INJECT_ENABLED,
    INJECT_LABEL,
    METRIC_WEBHOOK_ADMISSIONS,
    PROMETHEUS_SERVICE,
    SCRAPE_JOB,
    WEBHOOK_PATH,
    WEBHOOK_SCRAPE_JOB,
    WEBHOOK_SERVICE,
    WEBHOOK_TLS_SECRET,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.kube import KubeOptions

MIN_KUBERNETES = (1, 26)
CERT_MIN_DAYS = 30
# Hints name commands that work where users are: a Krew or pip install, no checkout of this
# repository (the chart's directory is not there; `kubectl mesh install` carries its snapshot).
INSTALL_HINT = "install the mesh: kubectl mesh install | kubectl apply -f -"
VERSION_LABELS = (f"{DOMAIN}/version", "app.kubernetes.io/version")

# What `kubectl mesh install` creates: (group, resource, namespaced)
MESH_OBJECTS = (
    ("", "namespaces", False),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", False),
    ("rbac.authorization.k8s.io", "clusterroles", False),
    ("rbac.authorization.k8s.io", "clusterrolebindings", False),
    ("apps", "deployments", True),
    ("", "services", True),
    ("", "serviceaccounts", True),
    ("", "secrets", True),
    ("", "configmaps", True),
    ("policy", "poddisruptionbudgets", True),
)


class CheckFailed(MeshError):
    """A failed check: the message is what is wrong, the hint what to run."""


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""
    hint: str = ""


@dataclass
class Context:
    """What the checks reach the cluster through; the clients are made on first use."""

    kube: KubeOptions = field(default_factory=KubeOptions)
    prometheus_url: str | None = None
    now: Callable[[], float] = time.time
    _client: Any = None
    _prometheus: Any = None
    facts: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Any:
        """The cluster through the `kubernetes` package (kubeapi.PackageClient): `check` is not
        latency-critical, so it need not avoid the package's import time."""
        if self._client is None:
            from kubectl_mesh import kubeapi
            from kubectl_mesh.kube import KubeError

            try:
                self._client = kubeapi.connect(self.kube)
            except KubeError as exc:
                raise CheckFailed(exc.message, "fix the kubeconfig: kubectl config view") from None
        return self._client

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        from kubectl_mesh.kube import KubeError

        try:
            return dict(self.client().get_json(path, params))
        except KubeError as exc:
            if exc.status == 404:
                raise
            raise CheckFailed(exc.message, exc.hint) from None

    def prometheus(self) -> Any:
        if self._prometheus is None:
            from kubectl_mesh import prom

            self._prometheus = prom.connect(self.prometheus_url, self.client, self.kube.request_timeout)
        return self._prometheus


Check = Callable[[Context], str]


# --- versions (also what `kubectl mesh version` prints) --------------------------------------------


def client_version() -> str:
    return f"v{__version__}"


def control_plane_version(client: Any) -> str | None:
    """The installed control plane's version, or None when it is not installed.

    Read from the webhook Deployment in mesh-system: the label `kubectl-mesh.io/version` (or
    `app.kubernetes.io/version`) the chart sets, else the tag of the webhook image."""
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


# --- the checks ------------------------------------------------------------------------------------


def check_api(ctx: Context) -> str:
    info = ctx.get("/version")
    ctx.facts["version"] = info  # for check_kubernetes_version, which runs only after this passed
    return f"{info.get('gitVersion', '?')} at {ctx.client().config.server}"


def check_kubernetes_version(ctx: Context) -> str:
    # The first try reuses check_api's answer; a --wait retry fetches it afresh.
    info = ctx.facts.pop("version", None) or ctx.get("/version")
    try:
        major = int(str(info.get("major", "0")).rstrip("+"))
        minor = int(str(info.get("minor", "0")).rstrip("+"))
    except ValueError:
        return f"unparsed version {info.get('gitVersion')}"
    if (major, minor) < MIN_KUBERNETES:
        raise CheckFailed(
            f"Kubernetes {major}.{minor} is older than {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}",
            "upgrade the cluster",
        )
    return f"{major}.{minor} >= {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}"


def check_can_create(ctx: Context) -> str:
    missing = []
    for group, resource, namespaced in MESH_OBJECTS:
        attributes: dict[str, str] = {"verb": "create", "group": group, "resource": resource}
        if namespaced:
            attributes["namespace"] = CONTROL_PLANE_NAMESPACE
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = ctx.client().post_json("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        if not (answer.get("status") or {}).get("allowed"):
            missing.append(f"{resource}.{group}" if group else resource)
    if missing:
        raise CheckFailed(
            f"you cannot create: {', '.join(missing)}",
            "ask a cluster admin to install the mesh, or for a role that allows creating these",
        )
    return f"can create {len(MESH_OBJECTS)} kinds of the mesh's objects"


def _namespace_exists(ctx: Context) -> bool:
    from kubectl_mesh.kube import KubeError

    try:
        ctx.get(f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}")
    except KubeError:
        return False
    return True


def check_namespace_absent(ctx: Context) -> str:
    if _namespace_exists(ctx):
        raise CheckFailed(
            f"namespace {CONTROL_PLANE_NAMESPACE} already exists: the mesh seems installed",
            "check the installed mesh instead: kubectl mesh check",
        )
    return f"namespace {CONTROL_PLANE_NAMESPACE} is free"


def check_namespace_present(ctx: Context) -> str:
    if not _namespace_exists(ctx):
        raise CheckFailed(f"namespace {CONTROL_PLANE_NAMESPACE} does not exist", INSTALL_HINT)
    return f"namespace {CONTROL_PLANE_NAMESPACE} exists"


def check_version_skew(ctx: Context) -> str:
    server = control_plane_version(ctx.client())  # a KubeError fails the check via run_one
    client = client_version()
    if server is None:
        raise CheckFailed(f"no {WEBHOOK_SERVICE} deployment in {CONTROL_PLANE_NAMESPACE}", INSTALL_HINT)
    if server.split(".")[:2] != client.split(".")[:2]:
        raise CheckFailed(
            f"client {client}, control plane {server}",
            "use the kubectl-mesh matching the control plane (kubectl krew upgrade mesh) or upgrade the mesh",
        )
    return f"client {client}, control plane {server}"


def _mesh_webhook(ctx: Context) -> tuple[str, dict[str, Any]]:
    doc = ctx.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
    for config in doc.get("items") or []:
        for webhook in config.get("webhooks") or []:
            service = (webhook.get("clientConfig") or {}).get("service") or {}
            if service.get("name") == WEBHOOK_SERVICE and service.get("namespace") == CONTROL_PLANE_NAMESPACE:
                return str((config.get("metadata") or {}).get("name")), webhook
    raise CheckFailed(
        f"no MutatingWebhookConfiguration calls service {WEBHOOK_SERVICE}.{CONTROL_PLANE_NAMESPACE}",
        INSTALL_HINT,
    )


def check_webhook_configured(ctx: Context) -> str:
    name, webhook = _mesh_webhook(ctx)
    path = ((webhook.get("clientConfig") or {}).get("service") or {}).get("path")
    if path != WEBHOOK_PATH:
        raise CheckFailed(f"webhook {name} calls path {path}, not {WEBHOOK_PATH}", INSTALL_HINT)
    return f"MutatingWebhookConfiguration {name} → {WEBHOOK_SERVICE}.{CONTROL_PLANE_NAMESPACE}{WEBHOOK_PATH}"


def certificate_not_after(pem: bytes) -> float:
    """Expiry (notAfter) of the first certificate in `pem`, as a Unix time; ValueError if none."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def certificate_state(label: str, pem: bytes, now: float) -> str:
    """How long the certificate stays valid; CheckFailed when it is unreadable, expired or expiring."""
    try:
        not_after = certificate_not_after(pem)
    except ImportError as exc:  # the single-file Krew build carries no C extension
        raise CheckFailed(
            f"cannot read the {label} here: the Python package {exc.name!r} is not installed",
            "install the full distribution: pip install kubectl-mesh",
        ) from None
    except ValueError as exc:
        raise CheckFailed(
            f"{label} is not a PEM certificate ({exc})",
            "reinstall: kubectl mesh install | kubectl apply -f -",
        ) from None
    days = (not_after - now) / 86400
    if days < 0:
        raise CheckFailed(
            f"{label} expired {-days:.0f} days ago", "rotate it: kubectl mesh install | kubectl apply -f -"
        )
    if days < CERT_MIN_DAYS:
        raise CheckFailed(
            f"{label} expires in {days:.0f} days", "rotate it: kubectl mesh install | kubectl apply -f -"
        )
    return f"{label} valid for {days:.0f} more days"


def check_webhook_certificate(ctx: Context) -> str:
    from kubectl_mesh.kube import KubeError

    _, webhook = _mesh_webhook(ctx)
    bundle = (webhook.get("clientConfig") or {}).get("caBundle")
    if not bundle:
        raise CheckFailed("the webhook's caBundle is empty: the API server cannot trust it", INSTALL_HINT)
    now = ctx.now()
    states = [certificate_state("caBundle", base64.b64decode(bundle), now)]
    try:
        secret: dict[str, Any] | None = ctx.get(
            f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/secrets/{WEBHOOK_TLS_SECRET}"
        )
    except (KubeError, CheckFailed):
        secret = None  # not readable with these credentials: the caBundle stands alone
    serving = ((secret or {}).get("data") or {}).get("tls.crt")
    if serving:
        states.append(certificate_state("serving certificate", base64.b64decode(serving), now))
    return "; ".join(states)


def check_webhook_ready(ctx: Context) -> str:
    from kubectl_mesh.kube import KubeError

    try:
        deployment = ctx.get(
            f"/apis/apps/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/deployments/{WEBHOOK_SERVICE}"
        )
    except KubeError:
        raise CheckFailed(
            f"no deployment {WEBHOOK_SERVICE} in {CONTROL_PLANE_NAMESPACE}", INSTALL_HINT
        ) from None
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    if ready < 1 or ready < wanted:
        raise CheckFailed(
            f"deployment {WEBHOOK_SERVICE} has {ready}/{wanted} ready pods",
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} describe deploy/{WEBHOOK_SERVICE}; "
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} logs deploy/{WEBHOOK_SERVICE}",
        )
    return f"{ready}/{wanted} webhook pods ready"


def check_prometheus(ctx: Context) -> str:
    from kubectl_mesh.prom import PORT_FORWARD_HINT, PrometheusError

    try:
        prometheus = ctx.prometheus()
        prometheus.query("vector(1)")
    except PrometheusError as exc:
        raise CheckFailed(
            exc.message,
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} get deploy/{PROMETHEUS_SERVICE}; or {PORT_FORWARD_HINT}",
        ) from None
    return f"Prometheus answers at {prometheus.where}"


def check_proxies_scraped(ctx: Context) -> str:
    from kubectl_mesh.prom import PrometheusError

    try:
        targets = ctx.prometheus().query(f'up{{job="{SCRAPE_JOB}"}}')
    except PrometheusError as exc:
        raise CheckFailed(exc.message, "see the Prometheus check above") from None
    down = sorted(
        f"{labels.get('namespace', '?')}/{labels.get('pod', '?')}" for labels, value in targets if value < 1
    )
    if down:
        shown = ", ".join(down[:5]) + (" …" if len(down) > 5 else "")
        raise CheckFailed(
            f"{len(down)} of {len(targets)} proxies cannot be scraped: {shown}",
            "kubectl logs POD -c mesh-proxy; is port 4191 (mesh-admin) reachable from Prometheus?",
        )
    if not targets:
        return "no meshed pods yet (label a namespace kubectl-mesh.io/inject=enabled)"
    return f"{len(targets)} proxies scraped"


INJECTOR_ERRORS_WINDOW = "1h"


def check_injector_errors(ctx: Context) -> str:
    """Pods admitted without the proxy because the injector failed (fail-open), in the last hour,
    from the webhook's own metrics as the chart's Prometheus scrapes them (job mesh-webhook)."""
    from kubectl_mesh.prom import PrometheusError

    selector = f'job="{WEBHOOK_SCRAPE_JOB}"'
    try:
        prometheus = ctx.prometheus()
        scraped = prometheus.query(f"up{{{selector}}}")
        errors = prometheus.query(
            f'sum(increase({METRIC_WEBHOOK_ADMISSIONS}{{{selector},result="error"}}[{INJECTOR_ERRORS_WINDOW}]))'
        )
    except PrometheusError as exc:
        raise CheckFailed(exc.message, "see the Prometheus check above") from None
    if not any(value >= 1 for _, value in scraped):
        raise CheckFailed(
            f"Prometheus does not scrape the webhook's metrics (job {WEBHOOK_SCRAPE_JOB}): injector errors "
            "would go unseen",
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} get pods; with your own Prometheus, add the "
            f"{WEBHOOK_SCRAPE_JOB} job of the chart's README",
        )
    count = sum(value for _, value in errors)
    if count > 0:
        # increase() extrapolates over the window: 1 error may read 1.02; never report 0.
        shown = max(1, round(count))
        raise CheckFailed(
            f"the injector failed on {shown} pod{'s' if shown != 1 else ''} in the last hour: "
            "admitted without the mesh proxy (fail-open)",
            f"kubectl get events -A --field-selector reason={EVENT_INJECTION_SKIPPED}; "
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} logs deploy/{WEBHOOK_SERVICE} | grep injection_failed",
        )
    return f"none in the last hour ({len(scraped)} webhook pods scraped)"


def check_meshed_namespaces_pod_security(ctx: Context) -> str:
    """Meshed namespaces whose enforced Pod Security level refuses mesh-init (root, NET_ADMIN,
    NET_RAW): the injector skips their pods (reason `pod-security`), so they run without the proxy."""
    from kubectl_mesh.inject.guards import PSA_ENFORCE, PSA_REFUSING_LEVELS

    found = ctx.get("/api/v1/namespaces", {"labelSelector": f"{INJECT_LABEL}={INJECT_ENABLED}"})
    items = found.get("items") or []
    refusing = sorted(
        f"{ns['metadata']['name']} ({PSA_ENFORCE.rsplit('/', 1)[1]}={level})"
        for ns in items
        if (level := (ns.get("metadata", {}).get("labels") or {}).get(PSA_ENFORCE)) in PSA_REFUSING_LEVELS
    )
    if refusing:
        shown = ", ".join(refusing[:5]) + (" …" if len(refusing) > 5 else "")
        raise CheckFailed(
            f"{len(refusing)} meshed namespace(s) refuse mesh-init by Pod Security, "
            f"their pods stay unmeshed: {shown}",
            f"kubectl label namespace NAME {PSA_ENFORCE}=privileged --overwrite (or stop meshing it)",
        )
    return f"{len(items)} meshed namespace(s) admit mesh-init"


PRE_CHECKS: list[tuple[str, Check, bool]] = [
    # (name, check, later checks depend on it)
    ("Kubernetes API reachable", check_api, True),
    ("Kubernetes version supported", check_kubernetes_version, False),
    ("can create the mesh's objects (RBAC)", check_can_create, False),
    (f"namespace {CONTROL_PLANE_NAMESPACE} not yet present", check_namespace_absent, False),
]
CHECKS: list[tuple[str, Check, bool]] = [
    ("Kubernetes API reachable", check_api, True),
    (f"namespace {CONTROL_PLANE_NAMESPACE} present", check_namespace_present, True),
    ("control plane version matches the client", check_version_skew, False),
    ("webhook configured", check_webhook_configured, False),
    ("webhook certificate valid and not near expiry", check_webhook_certificate, False),
    ("webhook answering (deployment ready)", check_webhook_ready, False),
    ("Prometheus answering", check_prometheus, False),
    ("proxies being scraped", check_proxies_scraped, False),
    ("no injector errors (pods admitted without the proxy)", check_injector_errors, False),
    ("meshed namespaces admit mesh-init (Pod Security)", check_meshed_namespaces_pod_security, False),
]


def run_one(ctx: Context, name: str, check: Check) -> Result:
    """One check, never raising: a MeshError is a failure with its hint, anything else a bug shown."""
    try:
        return Result(name, True, check(ctx))
    except MeshError as exc:  # CheckFailed, or a KubeError/PrometheusError a check let through
        return Result(name, False, exc.message, exc.hint)
    except Exception as exc:  # a check must never crash the command
        return Result(name, False, f"{type(exc).__name__}: {exc}", "")


Waiting = Callable[[str, str, float], None]  # (check name, why it fails, seconds waited)


def run_checks(
    ctx: Context,
    checks: list[tuple[str, Check, bool]],
    wait_s: float,
    emit: Callable[[Result], None],
    *,
    waiting: Waiting | None = None,
    done_waiting: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Result]:
    """Run `checks` in order, retrying a failing one while less than `wait_s` has passed.

    `emit` gets each final result; `waiting` is told of each retry (the command's spinner) and
    `done_waiting` when a check is settled. Stops after a failed blocking check."""
    results: list[Result] = []
    start = clock()
    for name, check, blocking in checks:
        result = run_one(ctx, name, check)
        while not result.ok and clock() - start < wait_s:
            if waiting is not None:
                waiting(name, result.detail, clock() - start)
            sleep(min(2.0, max(0.1, wait_s - (clock() - start))))
            result = run_one(ctx, name, check)
        if done_waiting is not None:
            done_waiting()
        results.append(result)
        emit(result)
        if blocking and not result.ok:
            break
    return results
