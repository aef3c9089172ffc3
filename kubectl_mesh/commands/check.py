"""`kubectl mesh check [--pre]`: is the cluster ready for the mesh / is the mesh healthy?

Each check is a function `(Context) -> Result` and prints one line, ✔ or ✖, with a hint that
says what to run when it fails. A check that others depend on (the API server) stops the run when
it fails. `--wait` retries failing checks until they pass or the time is up, with a progress
indicator on stderr. `-o json` prints {"success": …, "checks": [{name, ok, detail, hint}]}.
Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubectl_mesh import __version__
from kubectl_mesh.cli import CliError
from kubectl_mesh.contract import (
    CONTROL_PLANE_NAMESPACE,
    PROMETHEUS_SERVICE,
    SCRAPE_JOB,
    WEBHOOK_PATH,
    WEBHOOK_SERVICE,
    WEBHOOK_TLS_SECRET,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, add_prometheus_flag, kube_options

MIN_KUBERNETES = (1, 26)
CERT_MIN_DAYS = 30
INSTALL_HINT = (
    "install the mesh: kubectl mesh install | kubectl apply -f -  "
    "(or: helm install kubectl-mesh charts/kubectl-mesh)"
)
OK_MARK, FAIL_MARK = "✔", "✖"

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

EXAMPLES = """
  # Before installing: can this cluster and this user run the mesh?
  kubectl mesh check --pre

  # After installing: is every part healthy?
  kubectl mesh check

  # Wait up to 5 minutes for the control plane to come up (e.g. right after install)
  kubectl mesh check --wait 5m

  # Machine-readable
  kubectl mesh check -o json
"""


class CheckFailed(MeshError):
    """A failed check: `detail` (the message) is what is wrong, `hint` what to run."""

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail, hint)
        self.detail = detail


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""
    hint: str = ""


@dataclass
class Context:
    args: argparse.Namespace
    _client: Any = None
    _prometheus: Any = None
    facts: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Any:
        if self._client is None:
            from kubectl_mesh import kube

            try:
                self._client = kube.connect(kube_options(self.args))
            except kube.KubeError as exc:
                raise CheckFailed(str(exc), "fix the kubeconfig: kubectl config view") from None
        return self._client

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        from kubectl_mesh.kube import KubeError

        try:
            return dict(self.client().get_json(path, params))
        except KubeError as exc:
            if exc.status == 404:
                raise
            raise CheckFailed(str(exc)) from None

    def prometheus(self) -> Any:
        if self._prometheus is None:
            from kubectl_mesh import prom

            self._prometheus = prom.connect(self.args.prometheus_url, self.client)
        return self._prometheus


Check = Callable[[Context], str]


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
    from kubectl_mesh.commands.version import client_version, control_plane_version

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


def _not_after(pem: bytes) -> float:
    """Expiry of the first certificate in `pem`, as a Unix time (stdlib only: no cryptography)."""
    import ssl

    with tempfile.TemporaryDirectory(prefix="kubectl-mesh-") as tmp:
        path = Path(tmp, "cert.pem")
        path.write_bytes(pem)
        decode = getattr(ssl._ssl, "_test_decode_cert")  # type: ignore[attr-defined]  # noqa: B009
        info = decode(str(path))
    return ssl.cert_time_to_seconds(info["notAfter"])


def _cert_state(label: str, pem: bytes, now: float) -> str:
    try:
        not_after = _not_after(pem)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckFailed(
            f"{label} is not a PEM certificate ({exc})", "reinstall: kubectl mesh install"
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
    now = time.time()
    states = [_cert_state("caBundle", base64.b64decode(bundle), now)]
    try:
        secret: dict[str, Any] | None = ctx.get(
            f"/api/v1/namespaces/{CONTROL_PLANE_NAMESPACE}/secrets/{WEBHOOK_TLS_SECRET}"
        )
    except (KubeError, CheckFailed):
        secret = None  # not readable with these credentials: the caBundle stands alone
    serving = ((secret or {}).get("data") or {}).get("tls.crt")
    if serving:
        states.append(_cert_state("serving certificate", base64.b64decode(serving), now))
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
            str(exc),
            f"kubectl -n {CONTROL_PLANE_NAMESPACE} get deploy/{PROMETHEUS_SERVICE}; or {PORT_FORWARD_HINT}",
        ) from None
    return f"Prometheus answers at {prometheus.where}"


def check_proxies_scraped(ctx: Context) -> str:
    from kubectl_mesh.prom import PrometheusError

    try:
        targets = ctx.prometheus().query(f'up{{job="{SCRAPE_JOB}"}}')
    except PrometheusError as exc:
        raise CheckFailed(str(exc), "see the Prometheus check above") from None
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
]


def run_one(ctx: Context, name: str, check: Check) -> Result:
    try:
        return Result(name, True, check(ctx))
    except CheckFailed as exc:
        return Result(name, False, exc.detail, exc.hint)
    except Exception as exc:  # a check must never crash the command
        from kubectl_mesh.kube import KubeError

        if isinstance(exc, KubeError):
            return Result(name, False, str(exc), "")
        return Result(name, False, f"{type(exc).__name__}: {exc}", "")


class Progress:
    """A spinner on a terminal; one line per waited check otherwise (logs stay readable)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.frame = 0
        self.announced: set[str] = set()

    def waiting(self, name: str, detail: str, elapsed: float) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.frame = (self.frame + 1) % len(self.FRAMES)
            sys.stderr.write(
                f"\r\x1b[K{self.FRAMES[self.frame]} waiting for: {name} ({elapsed:.0f}s) — {detail}"[:200]
            )
            sys.stderr.flush()
        elif name not in self.announced:
            self.announced.add(name)
            print(f"… waiting for: {name} ({detail})", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def run_checks(
    ctx: Context, checks: list[tuple[str, Check, bool]], wait_s: float, emit: Callable[[Result], None]
) -> list[Result]:
    results: list[Result] = []
    start = time.monotonic()
    progress = Progress(enabled=wait_s > 0)
    for name, check, blocking in checks:
        result = run_one(ctx, name, check)
        while not result.ok and time.monotonic() - start < wait_s:
            progress.waiting(name, result.detail, time.monotonic() - start)
            time.sleep(min(2.0, max(0.1, wait_s - (time.monotonic() - start))))
            result = run_one(ctx, name, check)
        progress.done()
        results.append(result)
        emit(result)
        if blocking and not result.ok:
            break
    return results


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "check",
        help="check the cluster (--pre) or the installed mesh",
        description=(
            "Check that the cluster can run the mesh (--pre), or that the installed mesh is healthy:\n"
            "the API server, versions, the webhook and its certificate, Prometheus and the proxies."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("--pre", action="store_true", help="checks before installing the mesh")
    parser.add_argument(
        "--wait",
        metavar="DURATION",
        nargs="?",
        const="5m",
        default=None,
        help="retry failing checks for up to DURATION (default when given: 5m)",
    )
    add_kube_flags(parser)
    add_output_flag(parser, ("table", "json"))
    add_prometheus_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.stat.model import StatInputError, duration_seconds

    wait_s = 0.0
    if args.wait:
        try:
            wait_s = duration_seconds(args.wait)
        except StatInputError as exc:
            raise CliError(f"--wait: {exc}") from None
    checks = PRE_CHECKS if args.pre else CHECKS
    as_json = args.output == "json"

    def emit(result: Result) -> None:
        if as_json:
            return
        mark = OK_MARK if result.ok else FAIL_MARK
        line = f"{mark} {result.name}"
        if result.detail:
            line += f": {result.detail}"
        print(line, flush=True)
        if not result.ok and result.hint:
            print(f"    hint: {result.hint}", flush=True)

    results = run_checks(Context(args), checks, wait_s, emit)
    success = len(results) == len(checks) and all(r.ok for r in results)
    if as_json:
        payload = {
            "success": success,
            "client_version": f"v{__version__}",
            "checks": [r.__dict__ for r in results],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        skipped = len(checks) - len(results)
        if skipped:
            print(f"({skipped} later checks skipped)")
        print(f"\nStatus check results are {OK_MARK if success else FAIL_MARK}")
    return 0 if success else 1
