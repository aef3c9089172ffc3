"""kubectl_mesh.health: the checks against a fake cluster client, the framework's order, blocking
and waiting with a fake clock, and certificates read with `cryptography`. No cluster needed."""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubectl_mesh import health
from kubectl_mesh.errors import MeshError
from kubectl_mesh.health import CheckFailed, Context, Result
from kubectl_mesh.kube import KubeConfig, KubeError

NOW = 1_750_000_000.0
DAY = 86400.0


def certificate(not_after: float) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-webhook.mesh-system.svc")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(NOW - 10 * DAY, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class FakeClient:
    """get_json/post_json over a dict of path -> document; a missing path is a 404."""

    def __init__(self, docs: dict[str, Any], allowed: bool = True) -> None:
        self.docs = docs
        self.allowed = allowed
        self.config = KubeConfig(server="https://api.lab:6443", context="lab")

    def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        doc = self.docs.get(path)
        if isinstance(doc, BaseException):
            raise doc
        if doc is None:
            raise KubeError(f"{path} not found", status=404)
        return dict(doc)

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        return {"status": {"allowed": self.allowed}}


def context(docs: dict[str, Any], **kwargs: Any) -> Context:
    return Context(now=lambda: NOW, _client=FakeClient(docs, **kwargs))


WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
SECRET = "/api/v1/namespaces/mesh-system/secrets/mesh-webhook-tls"
DEPLOYMENT = "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-webhook"


def webhook_config(ca_pem: bytes, path: str = "/mutate") -> dict[str, Any]:
    service = {"name": "mesh-webhook", "namespace": "mesh-system", "path": path}
    hook = {"clientConfig": {"service": service, "caBundle": base64.b64encode(ca_pem).decode()}}
    return {"items": [{"metadata": {"name": "kubectl-mesh"}, "webhooks": [hook]}]}


def test_certificate_expiry_is_read_with_cryptography() -> None:
    pem = certificate(NOW + 100 * DAY)
    assert health.certificate_not_after(pem) == NOW + 100 * DAY
    assert health.certificate_state("caBundle", pem, NOW) == "caBundle valid for 100 more days"
    with pytest.raises(ValueError):
        health.certificate_not_after(b"not a certificate")


def test_without_cryptography_the_check_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    pem = certificate(NOW + 100 * DAY)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as in the Krew zipapp: no C extensions
    with pytest.raises(CheckFailed, match="the Python package 'cryptography' is not installed") as err:
        health.certificate_state("caBundle", pem, NOW)
    assert "pip install kubectl-mesh" in err.value.hint


@pytest.mark.parametrize(
    ("not_after", "message"),
    [
        (NOW + 10 * DAY, "caBundle expires in 10 days"),
        (NOW - 3 * DAY, "caBundle expired 3 days ago"),
    ],
)
def test_expiring_and_expired_certificates_fail(not_after: float, message: str) -> None:
    with pytest.raises(CheckFailed, match=message) as err:
        health.certificate_state("caBundle", certificate(not_after), NOW)
    assert "rotate it" in err.value.hint


def test_webhook_certificate_check_reads_the_bundle_and_the_secret() -> None:
    ca, serving = certificate(NOW + 365 * DAY), certificate(NOW + 40 * DAY)
    docs: dict[str, Any] = {WEBHOOKS: webhook_config(ca)}
    assert health.check_webhook_certificate(context(docs)) == "caBundle valid for 365 more days"
    docs[SECRET] = {"data": {"tls.crt": base64.b64encode(serving).decode()}}
    assert health.check_webhook_certificate(context(docs)).endswith(
        "serving certificate valid for 40 more days"
    )
    docs[WEBHOOKS] = webhook_config(b"garbage")
    result = health.run_one(context(docs), "cert", health.check_webhook_certificate)
    assert not result.ok and result.detail.startswith("caBundle is not a PEM certificate")


def test_webhook_configuration_and_readiness() -> None:
    docs: dict[str, Any] = {WEBHOOKS: webhook_config(certificate(NOW + DAY), path="/other")}
    with pytest.raises(CheckFailed, match="calls path /other, not /mutate"):
        health.check_webhook_configured(context(docs))
    docs[DEPLOYMENT] = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1}}
    with pytest.raises(CheckFailed, match="has 1/2 ready pods"):
        health.check_webhook_ready(context(docs))
    with pytest.raises(CheckFailed, match="no MutatingWebhookConfiguration"):
        health.check_webhook_configured(context({WEBHOOKS: {"items": []}}))


def test_versions() -> None:
    with pytest.raises(CheckFailed, match=r"Kubernetes 1\.25 is older than 1\.26"):
        health.check_kubernetes_version(context({"/version": {"major": "1", "minor": "25"}}))
    assert (
        health.check_kubernetes_version(context({"/version": {"major": "1", "minor": "31+"}}))
        == "1.31 >= 1.26"
    )
    labelled = {"metadata": {"labels": {"kubectl-mesh.io/version": "0.1.0"}}}
    assert health.control_plane_version(FakeClient({DEPLOYMENT: labelled})) == "v0.1.0"
    image = {"spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/x/webhook:v9.1.0"}]}}}}
    assert health.control_plane_version(FakeClient({DEPLOYMENT: image})) == "v9.1.0"
    assert health.control_plane_version(FakeClient({})) is None
    with pytest.raises(CheckFailed, match=r"control plane v9\.1\.0"):
        health.check_version_skew(context({DEPLOYMENT: image}))


def test_rbac_and_namespace_checks() -> None:
    with pytest.raises(CheckFailed, match="you cannot create: namespaces, mutatingwebhookconfigurations"):
        health.check_can_create(context({}, allowed=False))
    assert "10 kinds" in health.check_can_create(context({}))
    present = context({"/api/v1/namespaces/mesh-system": {}})
    with pytest.raises(CheckFailed, match="already exists"):
        health.check_namespace_absent(present)
    assert health.check_namespace_present(present) == "namespace mesh-system exists"


class FakePrometheus:
    where = "http://prometheus"

    def __init__(self, vector: list[tuple[dict[str, str], float]]) -> None:
        self.vector = vector

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        return self.vector


def test_proxies_scraped() -> None:
    ctx = context({})
    ctx._prometheus = FakePrometheus(
        [({"namespace": "a", "pod": "p1"}, 1.0), ({"namespace": "a", "pod": "p2"}, 0.0)]
    )
    with pytest.raises(CheckFailed, match="1 of 2 proxies cannot be scraped: a/p2"):
        health.check_proxies_scraped(ctx)
    ctx._prometheus = FakePrometheus([])
    assert "no meshed pods yet" in health.check_proxies_scraped(ctx)


def test_run_one_never_raises() -> None:
    def with_hint(ctx: Context) -> str:
        raise KubeError("the API server said no", status=500, hint="ask an admin")

    def buggy(ctx: Context) -> str:
        raise ZeroDivisionError("oops")

    assert health.run_one(context({}), "a", with_hint) == Result(
        "a", False, "the API server said no", "ask an admin"
    )
    assert health.run_one(context({}), "b", buggy) == Result("b", False, "ZeroDivisionError: oops", "")


def test_an_unusable_kubeconfig_fails_the_first_check(tmp_path: Any) -> None:
    from kubectl_mesh.kube import KubeOptions

    ctx = Context(kube=KubeOptions(kubeconfig=str(tmp_path / "none")))
    result = health.run_one(ctx, "api", health.check_api)
    assert not result.ok and "no kubeconfig found" in result.detail
    assert result.hint == "fix the kubeconfig: kubectl config view"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_a_failed_blocking_check_stops_the_run() -> None:
    def fails(ctx: Context) -> str:
        raise CheckFailed("down", "start it")

    ran: list[str] = []
    checks = [("first", fails, True), ("second", lambda ctx: ran.append("x") or "ok", False)]
    results = health.run_checks(context({}), checks, 0.0, lambda r: None)
    assert [r.name for r in results] == ["first"] and ran == []


def test_waiting_retries_until_a_check_passes_or_time_is_up() -> None:
    clock, emitted, waits = Clock(), [], []
    attempts = {"n": 0}

    def third_time(ctx: Context) -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise CheckFailed(f"not yet ({attempts['n']})")
        return "ready"

    def never(ctx: Context) -> str:
        raise MeshError("never")

    results = health.run_checks(
        context({}),
        [("slow", third_time, False), ("never", never, False)],
        10.0,
        emitted.append,
        waiting=lambda name, detail, elapsed: waits.append((name, detail, elapsed)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert [(r.name, r.ok, r.detail) for r in results] == [("slow", True, "ready"), ("never", False, "never")]
    assert emitted == results
    assert waits[:2] == [("slow", "not yet (1)", 0.0), ("slow", "not yet (2)", 2.0)]
    assert clock.t == pytest.approx(10.0)  # "never" was retried until the 10 s were up, no longer


CHECKOUT_ONLY = re.compile(r"\b(charts|lab|scripts|examples|bench|tests)/|\bmake\b|python3? -m|\.py\b")


def test_hints_name_commands_that_work_without_a_checkout() -> None:
    """Every hint that check and check --pre give on an empty (or forbidding) cluster names
    commands a Krew or pip user has: no path into this repository, no make."""
    hints: list[str] = []
    for docs, allowed in (({}, True), ({}, False), ({"/api/v1/namespaces/mesh-system": {}}, True)):
        ctx = context(docs, allowed=allowed)
        ctx._prometheus = FakePrometheus([])
        for name, check, _ in health.PRE_CHECKS + health.CHECKS:
            result = health.run_one(ctx, name, check)
            if result.hint:
                hints.append(result.hint)
    assert health.INSTALL_HINT in hints
    assert hints and not [h for h in hints if CHECKOUT_ONLY.search(h)], hints
