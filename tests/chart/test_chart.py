"""The chart as rendered by real helm: lint, schema, certificates, selectors, security, config."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kubectl_mesh import __version__
from kubectl_mesh import contract as c
from kubectl_mesh.inject.config import MeshConfig
from lab.config import CHART
from scripts.chart_snapshot import KUBE_VERSION
from tests.chart.helpers import Render, containers, find, run_helm

COMPONENT = "app.kubernetes.io/component"


def test_chart_version_follows_the_package() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == __version__
    assert meta["version"] == __version__


def test_helm_lint_strict_is_clean(helm: str) -> None:
    proc = run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_every_object_is_valid_for_kubernetes_1_33(defaults: list[dict[str, Any]]) -> None:
    for obj in defaults:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_schema_is_self_contained() -> None:
    text = (CHART / "values.schema.json").read_text()
    refs = [part.split('"')[0] for part in text.split('"$ref": "')[1:]]
    assert refs and all(ref.startswith("#/") for ref in refs)


@pytest.mark.parametrize(
    ("setting", "mentions"),
    [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.replicas=0", "replicas"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
        ("proxy.logLevel=loud", "logLevel"),
        ("proxy.image.name=Not An Image", "name"),
        ("proxy.opaquePorts[0]=70000", "opaquePorts"),
        ("prometheus.retention=forever", "retention"),
        ("grafana.prometheusUrl=ftp://prometheus", "prometheusUrl"),
        ("webhook.certs.mode=manual", "mode"),
        ("webhook.networkPolicy.apiServerCIDRs[0]=10.0.0.1", "apiServerCIDRs"),
        ("webhook.typo=1", "typo"),
        # The init step writes IPv4 iptables rules only: an IPv6 subnet would fail every pod's init.
        ("proxy.skipSubnets[0]=fd00::/8", "skipSubnets"),
    ],
)
def test_schema_rejects_bad_values(render_error: Any, setting: str, mentions: str) -> None:
    stderr = render_error("--set", setting)
    assert "schema" in stderr and mentions in stderr, stderr


CA_PEM_B64 = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["webhook.certs.mode=secret"], "needs webhook.certs.existingSecret"),
        (["webhook.certs.mode=secret", "webhook.certs.existingSecret=tls"], "needs webhook.certs.caBundle"),
        (
            [
                "webhook.certs.mode=secret",
                "webhook.certs.existingSecret=tls",
                "webhook.certs.caBundle=aGVsbG8=",
            ],
            "must be a base64-encoded PEM certificate",
        ),
        (["webhook.certs.existingSecret=tls"], "only used with webhook.certs.mode=secret"),
        (["webhook.certs.caBundle=" + CA_PEM_B64], "only used with webhook.certs.mode=secret"),
        (["webhook.certs.certManager.issuerRef.name=ca"], "only used with webhook.certs.mode=certManager"),
        (["prometheus.enabled=false"], "needs grafana.prometheusUrl"),
    ],
)
def test_invalid_combinations_fail_with_one_clear_line(
    render_error: Any, settings: list[str], message: str
) -> None:
    args = [arg for s in settings for arg in ("--set", s)]
    stderr = render_error(*args)
    assert message in stderr, stderr


def test_a_release_in_mesh_system_renders_no_namespace(render: Render) -> None:
    """`helm install kubectl-mesh charts/kubectl-mesh -n mesh-system --create-namespace` (issue #12):
    helm makes the namespace, so the chart must not render it (helm would refuse to adopt it);
    `namespace.create=false` still renders none; a release elsewhere still renders it."""
    for args in ((), ("--set", "namespace.create=false")):
        objects = render("--namespace", "mesh-system", *args)
        assert not [o for o in objects if o["kind"] == "Namespace"]
        assert {o["metadata"].get("namespace", c.CONTROL_PLANE_NAMESPACE) for o in objects} == {"mesh-system"}
    (namespace,) = [o for o in render("--namespace", "default") if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_namespaced_object_is_in_mesh_system(defaults: list[dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    for obj in defaults:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == c.CONTROL_PLANE_NAMESPACE, obj["metadata"]
    assert defaults[0]["kind"] == "Namespace"  # created first by helm and by kubectl apply


# --- certificates ---------------------------------------------------------------------------


def _verify_serving_cert(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """The cert is signed by the CA, names the webhook Service, and matches the key."""
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    public = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
        )
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"{c.WEBHOOK_SERVICE}.{c.CONTROL_PLANE_NAMESPACE}.svc" in names  # what the API server dials
    assert f"{c.WEBHOOK_SERVICE}.{c.CONTROL_PLANE_NAMESPACE}.svc.cluster.local" in names
    return cert


def webhook_tls(objects: list[dict[str, Any]]) -> tuple[bytes, bytes, bytes, list[bytes]]:
    secret = find(objects, "Secret", "mesh-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    mwc = find(objects, "MutatingWebhookConfiguration", "kubectl-mesh-injector")
    bundles = [base64.b64decode(h["clientConfig"]["caBundle"]) for h in mwc["webhooks"]]
    return data["ca.crt"], data["tls.crt"], data["tls.key"], bundles


def test_generated_certificate_is_trusted_by_the_webhook_configuration(
    defaults: list[dict[str, Any]],
) -> None:
    ca, cert, key, bundles = webhook_tls(defaults)
    assert bundles and all(b == ca for b in bundles)
    _verify_serving_cert(ca, cert, key)
    deployment = find(defaults, "Deployment", "mesh-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mesh-webhook-tls"


def test_secret_mode_uses_the_supplied_secret_and_ca(render: Render) -> None:
    objects = render(
        "--set", "webhook.certs.mode=secret",
        "--set", "webhook.certs.existingSecret=my-webhook-tls",
        "--set", f"webhook.certs.caBundle={CA_PEM_B64}",
    )  # fmt: skip
    assert not [o for o in objects if o["kind"] == "Secret"]
    mwc = find(objects, "MutatingWebhookConfiguration", "kubectl-mesh-injector")
    assert {h["clientConfig"]["caBundle"] for h in mwc["webhooks"]} == {CA_PEM_B64}
    volumes = {
        v["name"]: v
        for v in find(objects, "Deployment", "mesh-webhook")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["tls"]["secret"]["secretName"] == "my-webhook-tls"


def test_cert_manager_mode_lets_cert_manager_issue_and_inject(render: Render) -> None:
    objects = render("--set", "webhook.certs.mode=certManager")
    assert not [o for o in objects if o["kind"] == "Secret"]
    certificate = find(objects, "Certificate", "mesh-webhook")
    assert certificate["spec"]["secretName"] == "mesh-webhook-tls"
    assert f"{c.WEBHOOK_SERVICE}.{c.CONTROL_PLANE_NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert (
        certificate["spec"]["issuerRef"]["name"]
        == find(objects, "Issuer", "mesh-webhook-selfsigned")["metadata"]["name"]
    )
    mwc = find(objects, "MutatingWebhookConfiguration", "kubectl-mesh-injector")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "mesh-system/mesh-webhook"
    assert all("caBundle" not in h["clientConfig"] for h in mwc["webhooks"])

    own = render(
        "--set", "webhook.certs.mode=certManager",
        "--set", "webhook.certs.certManager.issuerRef.name=corp-ca",
        "--set", "webhook.certs.certManager.issuerRef.kind=ClusterIssuer",
    )  # fmt: skip
    assert not [o for o in own if o["kind"] == "Issuer"]
    assert find(own, "Certificate", "mesh-webhook")["spec"]["issuerRef"]["name"] == "corp-ca"


# --- the injection rules in the webhook's selectors --------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's matchExpressions, as the API server evaluates them."""
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _calls(mwc: dict[str, Any], namespace: str, ns_labels: dict[str, str], pod_labels: dict[str, str]) -> int:
    ns_labels = {**ns_labels, "kubernetes.io/metadata.name": namespace}
    return sum(
        1
        for hook in mwc["webhooks"]
        if _matches(hook["namespaceSelector"], ns_labels) and _matches(hook["objectSelector"], pod_labels)
    )


ENABLED = {c.INJECT_LABEL: c.INJECT_ENABLED}
DISABLED = {c.INJECT_LABEL: c.INJECT_DISABLED}


@pytest.mark.parametrize(
    ("namespace", "ns_labels", "pod_labels", "calls"),
    [
        ("shop", ENABLED, {"app": "web"}, 1),  # namespace opt-in
        ("shop", ENABLED, DISABLED, 0),  # pod opt-out
        ("shop", ENABLED, ENABLED, 1),  # both: called once, not twice
        ("plain", {}, {"app": "web"}, 0),  # unlabelled namespace, unlabelled pod
        ("plain", {}, ENABLED, 1),  # pod opt-in in an unlabelled namespace
        ("off", DISABLED, ENABLED, 0),  # a namespace that opted out wins
        *[(ns, ENABLED, ENABLED, 0) for ns in sorted(c.NEVER_INJECT_NAMESPACES)],
    ],
)
def test_webhook_is_called_only_for_pods_the_rules_mesh(
    defaults: list[dict[str, Any]],
    namespace: str,
    ns_labels: dict[str, str],
    pod_labels: dict[str, str],
    calls: int,
) -> None:
    mwc = find(defaults, "MutatingWebhookConfiguration", "kubectl-mesh-injector")
    assert _calls(mwc, namespace, ns_labels, pod_labels) == calls


def test_webhook_configuration_settings(defaults: list[dict[str, Any]], render: Render) -> None:
    mwc = find(defaults, "MutatingWebhookConfiguration", "kubectl-mesh-injector")
    for hook in mwc["webhooks"]:
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 10
        assert hook["clientConfig"]["service"] == {
            "name": c.WEBHOOK_SERVICE,
            "namespace": c.CONTROL_PLANE_NAMESPACE,
            "path": c.WEBHOOK_PATH,
            "port": c.WEBHOOK_PORT,
        }
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
    strict = render("--set", "webhook.failurePolicy=Fail", "--set", "webhook.timeoutSeconds=5")
    hooks = find(strict, "MutatingWebhookConfiguration", "kubectl-mesh-injector")["webhooks"]
    assert {(h["failurePolicy"], h["timeoutSeconds"]) for h in hooks} == {("Fail", 5)}


# --- the webhook -----------------------------------------------------------------------------


def test_webhook_deployment_service_and_budget(defaults: list[dict[str, Any]]) -> None:
    deployment = find(defaults, "Deployment", "mesh-webhook")
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(defaults, "PodDisruptionBudget", "mesh-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert all(pod_labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    service = find(defaults, "Service", c.WEBHOOK_SERVICE)
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    (port,) = service["spec"]["ports"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == c.WEBHOOK_PORT and named[port["targetPort"]] == c.WEBHOOK_CONTAINER_PORT
    assert container["command"] == ["gunicorn", "-c", "python:webhook.gunicorn_conf", "webhook.wsgi:app"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MESH_WEBHOOK_BIND"].endswith(f":{c.WEBHOOK_CONTAINER_PORT}")
    # The metrics port: on the pod (Prometheus discovers pods), not on the admission Service.
    assert env["MESH_WEBHOOK_METRICS_BIND"].endswith(f":{c.WEBHOOK_METRICS_PORT}")
    assert named["metrics"] == c.WEBHOOK_METRICS_PORT
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for var, name in (("MESH_TLS_CERT", "tls"), ("MESH_TLS_KEY", "tls"), ("MESH_CONFIG", "config")):
        assert mounts[str(Path(env[var]).parent)] == name
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_network_policy_admits_the_api_server_and_prometheus_each_to_its_port(
    defaults: list[dict[str, Any]], render: Render
) -> None:
    deployment = find(defaults, "Deployment", "mesh-webhook")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    policy = find(defaults, "NetworkPolicy", "mesh-webhook")
    spec = policy["spec"]
    assert all(pod_labels[k] == v for k, v in spec["podSelector"]["matchLabels"].items())
    assert spec["policyTypes"] == ["Ingress"]  # egress open: the webhook calls the API server
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    api_server, prometheus = spec["ingress"]
    assert [named[p["port"]] for p in api_server["ports"]] == [c.WEBHOOK_CONTAINER_PORT]
    assert [named[p["port"]] for p in prometheus["ports"]] == [c.WEBHOOK_METRICS_PORT]
    assert "from" not in api_server  # by default: any source, on the admission port alone
    prometheus_pods = find(defaults, "Deployment", "prometheus")["spec"]["template"]["metadata"]["labels"]
    (peer,) = prometheus["from"]
    assert peer["podSelector"]["matchLabels"].items() <= prometheus_pods.items()
    restricted = find(
        render("--set-json", 'webhook.networkPolicy.apiServerCIDRs=["10.0.0.0/24","fd00::/64"]'),
        "NetworkPolicy",
        "mesh-webhook",
    )
    assert restricted["spec"]["ingress"][0]["from"] == [
        {"ipBlock": {"cidr": "10.0.0.0/24"}},
        {"ipBlock": {"cidr": "fd00::/64"}},
    ]
    off = render("--set", "webhook.networkPolicy.enabled=false")
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]


def _mesh_config(objects: list[dict[str, Any]]) -> MeshConfig:
    data = find(objects, "ConfigMap", "mesh-config")["data"]["mesh-config.json"]
    return MeshConfig.from_mapping(json.loads(data))


def test_proxy_values_reach_the_webhook_as_a_mesh_config_it_accepts(
    defaults: list[dict[str, Any]], render: Render
) -> None:
    config = _mesh_config(defaults)
    assert config.proxy_image_ref == f"ghcr.io/kubectl-mesh/proxy:{__version__}"
    assert config.native_sidecar is True
    assert config.control_plane_namespace == c.CONTROL_PLANE_NAMESPACE
    custom = _mesh_config(
        render(
            "--set", "proxy.image.name=registry.example/mesh/proxy",
            "--set-string", "proxy.image.version=1.2.3",
            "--set", "proxy.logLevel=debug",
            "--set", "proxy.nativeSidecar=false",
            "--set", "proxy.skipInboundPorts={9090,8080}",
            "--set", "proxy.skipOutboundPorts={3306}",
            "--set", "proxy.skipSubnets={10.96.0.0/12}",
            "--set", "proxy.opaquePorts={5432}",
            "--set", "proxy.resources.limits.memory=64Mi",
        )
    )  # fmt: skip
    assert custom.proxy_image_ref == "registry.example/mesh/proxy:1.2.3"
    assert custom.proxy_version == "1.2.3"
    assert (custom.log_level, custom.native_sidecar) == ("debug", False)
    assert (str(custom.skip_inbound_ports), str(custom.skip_outbound_ports)) == ("8080,9090", "3306")
    assert (custom.skip_subnets, str(custom.opaque_ports)) == ("10.96.0.0/12", "5432")
    assert custom.proxy_resources["limits"]["memory"] == "64Mi"


def test_changed_proxy_settings_roll_the_webhook_pods(defaults: list[dict[str, Any]], render: Render) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        return str(
            find(objects, "Deployment", "mesh-webhook")["spec"]["template"]["metadata"]["annotations"][
                "checksum/mesh-config"
            ]
        )

    assert checksum(defaults) == checksum(render())
    assert checksum(defaults) != checksum(render("--set", "proxy.logLevel=debug"))


# --- Prometheus and Grafana --------------------------------------------------------------------


def test_prometheus_runs_the_shared_scrape_job_with_in_cluster_discovery(
    defaults: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = find(defaults, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == c.SCRAPE_INTERVAL
    job, webhook_job = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    assert job == yaml.safe_load((CHART / "files" / "scrape-config.yaml").read_text())
    # Debian's promtool lacks kubernetes_sd_configs (the lab's upstream Prometheus runs the real
    # thing in test_lab.py): check everything else, the relabelling included.
    config["scrape_configs"][0] = {**job, "static_configs": [{"targets": ["127.0.0.1:4191"]}]}
    assert webhook_job["job_name"] == c.WEBHOOK_SCRAPE_JOB
    del webhook_job["kubernetes_sd_configs"]
    config["scrape_configs"][1] = {**webhook_job, "static_configs": [{"targets": ["127.0.0.1:9995"]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (container,) = find(defaults, "Deployment", "prometheus")["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "prometheus"
    assert "--storage.tsdb.retention.time=6h" in container["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in container["command"]
    service = find(defaults, "Service", c.PROMETHEUS_SERVICE)
    assert service["spec"]["ports"][0]["port"] == c.PROMETHEUS_PORT


def test_grafana_provisions_the_prometheus_datasource_and_every_dashboard(
    defaults: list[dict[str, Any]],
) -> None:
    datasources = yaml.safe_load(
        find(defaults, "ConfigMap", "grafana-datasources")["data"]["prometheus.yaml"]
    )
    (source,) = datasources["datasources"]
    assert (
        source["url"] == f"http://{c.PROMETHEUS_SERVICE}.{c.CONTROL_PLANE_NAMESPACE}.svc:{c.PROMETHEUS_PORT}"
    )
    assert source["uid"] == "mesh-prometheus"
    dashboards = find(defaults, "ConfigMap", "grafana-dashboards")["data"]
    files = sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json"))
    assert sorted(dashboards) == files == ["deployment.json", "namespace.json", "pod.json", "top-line.json"]
    for name, text in dashboards.items():
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / name).read_text())


def test_prometheus_and_grafana_can_be_left_out(render: Render) -> None:
    objects = render(
        "--set", "prometheus.enabled=false", "--set", "grafana.prometheusUrl=http://my-prometheus.monitoring:9090"
    )  # fmt: skip
    components = {o["metadata"]["labels"].get(COMPONENT) for o in objects if o["kind"] != "Namespace"}
    assert components == {"webhook", "grafana"}
    source = yaml.safe_load(find(objects, "ConfigMap", "grafana-datasources")["data"]["prometheus.yaml"])
    assert source["datasources"][0]["url"] == "http://my-prometheus.monitoring:9090"
    bare = render("--set", "prometheus.enabled=false", "--set", "grafana.enabled=false")
    assert {o["metadata"]["labels"].get(COMPONENT) for o in bare if o["kind"] != "Namespace"} == {"webhook"}


# --- security ----------------------------------------------------------------------------------


def test_rbac_is_least_privilege(defaults: list[dict[str, Any]]) -> None:
    roles = {o["metadata"]["name"]: o["rules"] for o in defaults if o["kind"] in ("Role", "ClusterRole")}
    assert roles == {
        "kubectl-mesh-webhook": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "get", "patch"]},
        ],
        "kubectl-mesh-prometheus": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
        ],
    }
    bindings = {
        o["metadata"]["name"]: o for o in defaults if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
    }
    for name, account in (
        ("kubectl-mesh-webhook", "mesh-webhook"),
        ("kubectl-mesh-prometheus", "prometheus"),
    ):
        assert bindings[name]["roleRef"]["name"] == name
        assert bindings[name]["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "mesh-system"}
        ]
    assert len(bindings) == 2
    for obj in defaults:
        if obj["kind"] == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            # Prometheus (pod discovery) and the webhook (namespaces, Events) talk to the API server.
            talks = obj["metadata"]["name"] in ("prometheus", "mesh-webhook")
            assert spec.get("automountServiceAccountToken", True) is talks


def test_prometheus_scrapes_the_webhook_on_its_metrics_port(defaults: list[dict[str, Any]]) -> None:
    config = yaml.safe_load(find(defaults, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == c.WEBHOOK_SCRAPE_JOB]
    assert job["scheme"] == "http" and job["metrics_path"] == "/metrics" and "tls_config" not in job
    assert job["kubernetes_sd_configs"] == [
        {"role": "pod", "namespaces": {"names": [c.CONTROL_PLANE_NAMESPACE]}}
    ]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == "kubectl-mesh;webhook;metrics"
    webhook = find(defaults, "Deployment", "mesh-webhook")["spec"]["template"]
    labels = webhook["metadata"]["labels"]
    ports = {
        p["name"]: p["containerPort"] for ct in webhook["spec"]["containers"] for p in ct.get("ports", [])
    }
    assert (labels["app.kubernetes.io/name"], labels["app.kubernetes.io/component"]) == (
        "kubectl-mesh",
        "webhook",
    )
    assert ports["metrics"] == c.WEBHOOK_METRICS_PORT
    # Plain HTTP: Prometheus no longer mounts anything of the webhook's TLS Secret.
    prometheus = find(defaults, "Deployment", "prometheus")["spec"]["template"]["spec"]
    assert c.WEBHOOK_TLS_SECRET not in json.dumps(prometheus)


def test_one_log_format_for_the_webhook_and_the_proxies(render: Render) -> None:
    for value in ("logfmt", "json"):
        objects = render("--set", f"logFormat={value}")
        webhook = find(objects, "Deployment", "mesh-webhook")["spec"]["template"]["spec"]["containers"][0]
        assert {e["name"]: e.get("value") for e in webhook["env"]}[c.ENV_LOG_FORMAT] == value
        config = json.loads(find(objects, "ConfigMap", "mesh-config")["data"]["mesh-config.json"])
        assert MeshConfig.from_mapping(config).log_format == value


def test_every_container_is_non_root_read_only_and_has_requests(defaults: list[dict[str, Any]]) -> None:
    deployments = [o for o in defaults if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"mesh-webhook", "prometheus", "grafana"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        for container in containers(deployment):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "readinessProbe" in container and "livenessProbe" in container
