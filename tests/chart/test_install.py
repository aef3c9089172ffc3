"""`kubectl mesh install` renders what `helm template` renders, object by object (certificates
aside), for the defaults and for every flag; `uninstall` lists every object to delete."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh.install import manifest
from kubectl_mesh.install.certs import generate_webhook_certs
from kubectl_mesh.install.manifest import InstallError, Settings, WebhookTLS, go_json, load_snapshot, render
from lab.config import REPO
from scripts.chart_snapshot import OUTPUT
from scripts.chart_snapshot import main as snapshot_main
from tests.chart.helpers import Render, find
from tests.chart.test_chart import _verify_serving_cert

CERT = "<certificate>"


def kubectl_mesh(*args: str) -> subprocess.CompletedProcess[str]:
    env_free = ["--ignore-cluster"] if args and args[0] == "install" else []
    return subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", *args, *env_free],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def comparable(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Objects by (kind, namespace, name), generated certificates and the managed-by label masked."""
    out = {}
    for obj in copy.deepcopy(objects):
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == manifest.TLS_SECRET:
            assert set(obj["data"]) == {"tls.crt", "tls.key", "ca.crt"}
            obj["data"] = dict.fromkeys(obj["data"], CERT)
        for hook in obj.get("webhooks", []):
            if "caBundle" in hook["clientConfig"]:
                hook["clientConfig"]["caBundle"] = CERT
        for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
            (meta.get("labels") or {}).pop(manifest.MANAGED_BY_LABEL, None)
        out[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
    return out


def assert_same_objects(helm_objects: list[dict[str, Any]], cli_objects: list[dict[str, Any]]) -> None:
    want, got = comparable(helm_objects), comparable(cli_objects)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], f"{key} differs from helm template's"
    # Same order too: the Namespace first, as helm installs it.
    assert [o["kind"] for o in cli_objects] == [o["kind"] for o in helm_objects]


def test_packaged_snapshot_is_the_chart_rendered_now(helm: str) -> None:
    assert snapshot_main(["--helm", helm, "--check"]) == 0, (
        "kubectl_mesh/data/chart-snapshot.json is stale: run `python -m scripts.chart_snapshot`"
    )


def snapshot_step(*args: str) -> subprocess.CompletedProcess[str]:
    """The build step as the release workflow runs it: `python -m scripts.chart_snapshot`, from
    the checkout (scripts/ is not in the package)."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.chart_snapshot", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_build_step_runs_as_the_release_workflow_runs_it(helm: str, tmp_path: Path) -> None:
    """`--check` passes on the checkout; a fresh rendering written elsewhere is byte for byte the
    packaged snapshot; a stale one fails `--check` in one line naming the command to run."""
    assert snapshot_step("--helm", helm, "--check").returncode == 0
    fresh = tmp_path / "snapshot.json"
    done = snapshot_step("--helm", helm, "--output", str(fresh))
    assert done.returncode == 0, done.stderr
    assert fresh.read_bytes() == OUTPUT.read_bytes()
    fresh.write_text(fresh.read_text().replace("mesh-webhook", "mesh-webhoook", 1))
    done = snapshot_step("--helm", helm, "--output", str(fresh), "--check")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "is stale: run `python -m scripts.chart_snapshot`" in done.stderr


def test_the_build_step_without_a_working_helm_says_so_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-helm"
    done = snapshot_step("--helm", str(missing), "--check")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: cannot run {missing}") and done.stderr.count("\n") == 1, (
        done.stderr
    )


def test_snapshot_holds_no_private_key() -> None:
    text = OUTPUT.read_text()
    assert "PRIVATE KEY" not in text and base64.b64encode(b"-----BEGIN").decode() not in text


def test_install_with_defaults_is_helm_template_with_defaults(defaults: list[dict[str, Any]]) -> None:
    proc = kubectl_mesh("install")
    assert proc.returncode == 0, proc.stderr
    assert_same_objects(defaults, [d for d in yaml.safe_load_all(proc.stdout) if d])


FLAG_CASES = [
    (
        [
            "--proxy-image", "registry.example/mesh/proxy",
            "--proxy-version", "1.2.3",
            "--proxy-log-level", "debug",
            "--webhook-failure-policy", "Fail",
            "--prometheus-retention", "2d",
            "--no-grafana",
        ],
        [
            "--set", "proxy.image.name=registry.example/mesh/proxy",
            "--set-string", "proxy.image.version=1.2.3",
            "--set", "proxy.logLevel=debug",
            "--set", "webhook.failurePolicy=Fail",
            "--set", "prometheus.retention=2d",
            "--set", "grafana.enabled=false",
        ],
    ),
    (
        ["--no-prometheus", "--grafana-prometheus-url", "http://prometheus.monitoring.svc:9090"],
        ["--set", "prometheus.enabled=false", "--set", "grafana.prometheusUrl=http://prometheus.monitoring.svc:9090"],
    ),
    (
        ["--no-prometheus", "--no-grafana"],
        ["--set", "prometheus.enabled=false", "--set", "grafana.enabled=false"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "helm_args"), FLAG_CASES, ids=["proxy-webhook-prometheus", "own-prometheus", "bare"]
)
def test_install_flags_render_as_helm_values(render: Render, flags: list[str], helm_args: list[str]) -> None:
    proc = kubectl_mesh("install", *flags)
    assert proc.returncode == 0, proc.stderr
    assert_same_objects(render(*helm_args), [d for d in yaml.safe_load_all(proc.stdout) if d])


def test_every_option_is_exercised_against_helm() -> None:
    flags = {arg for flags, _ in FLAG_CASES for arg in flags if arg.startswith("--")}
    assert {o.flag for o in manifest.OPTIONS} | {"--no-prometheus", "--no-grafana"} <= flags


def test_install_certificates_are_new_valid_and_trusted() -> None:
    outputs = []
    for _ in range(2):
        proc = kubectl_mesh("install", "--no-grafana", "--no-prometheus")
        assert proc.returncode == 0, proc.stderr
        objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
        secret = find(objects, "Secret", manifest.TLS_SECRET)
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        hooks = find(objects, "MutatingWebhookConfiguration", "kubectl-mesh-injector")["webhooks"]
        assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks} == {data["ca.crt"]}
        _verify_serving_cert(data["ca.crt"], data["tls.crt"], data["tls.key"])
        outputs.append(data["tls.key"])
    assert outputs[0] != outputs[1]  # a fresh key each time when no cluster has one


def test_existing_certificates_are_reused_like_the_charts_lookup() -> None:
    bundle = generate_webhook_certs()
    data = {
        "ca.crt": base64.b64encode(bundle.ca_cert_pem).decode(),
        "tls.crt": base64.b64encode(bundle.cert_pem).decode(),
        "tls.key": base64.b64encode(bundle.key_pem).decode(),
    }
    objects = render(load_snapshot(), Settings(), WebhookTLS.from_secret_data(data))
    assert find(objects, "Secret", manifest.TLS_SECRET)["data"] == data


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--webhook-failure-policy", "Sometimes"],
            "--webhook-failure-policy 'Sometimes': must be one of Ignore, Fail",
        ),
        (["--proxy-image", "Not An Image"], "--proxy-image 'Not An Image': not a valid value"),
        (["--prometheus-retention", "forever"], "--prometheus-retention 'forever'"),
        (["--proxy-log-level", "loud"], "--proxy-log-level 'loud'"),
        (["--grafana-prometheus-url", "ftp://x"], "--grafana-prometheus-url 'ftp://x'"),
        (["--proxy-version", "__MESH_PROXY_IMAGE__"], "--proxy-version"),
        (["--no-prometheus"], "needs --grafana-prometheus-url"),
    ],
)
def test_bad_values_are_one_line_errors(flags: list[str], message: str) -> None:
    proc = kubectl_mesh("install", *flags)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_install_refuses_what_the_chart_refuses(render_error: Any) -> None:
    """--no-prometheus without a Grafana datasource: the same rule in the chart and in Python."""
    assert "needs grafana.prometheusUrl" in render_error("--set", "prometheus.enabled=false")
    with pytest.raises(InstallError, match="needs --grafana-prometheus-url"):
        manifest.resolve(load_snapshot(), Settings({"prometheus.enabled": False}))


def test_uninstall_lists_every_object_webhook_configuration_first_namespace_last(
    defaults: list[dict[str, Any]],
) -> None:
    proc = kubectl_mesh("uninstall")
    assert proc.returncode == 0, proc.stderr
    refs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert refs[0]["kind"] == "MutatingWebhookConfiguration"
    assert refs[-1] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh-system"}}
    listed = {(r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]) for r in refs}
    assert listed == set(comparable(defaults))
    names = kubectl_mesh("uninstall", "-o", "name").stdout.splitlines()
    assert names[0] == "mutatingwebhookconfiguration/kubectl-mesh-injector"
    assert "deployment/mesh-webhook -n mesh-system" in names


def test_go_json_matches_helm_to_json(helm: str, tmp_path: Path) -> None:
    """The checksum annotations hash Go's JSON: escapes included."""
    value = {"b": "<a & b>", "a": 'x\ny\t"q" \\ é \u2028', "c": "line\u0001"}
    chart = tmp_path / "c"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
        "data:\n  json: {{ .Values.v | toJson | quote }}\n"
    )
    (chart / "values.yaml").write_text(yaml.safe_dump({"v": value}, allow_unicode=True))
    out = subprocess.run(
        [helm, "template", str(chart)], capture_output=True, text=True, timeout=60, check=True
    )
    assert yaml.safe_load(out.stdout)["data"]["json"] == go_json(value)
