"""`kubectl mesh inject` / `uninject` as a user runs them: files, dirs, stdin, YAML/JSON, reports."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from kubectl_mesh.cli import main

SCHEMA = max(
    (v for v in all_versions() if tuple(int(x) for x in v.split(".")[:2]) <= (1, 33)),
    key=lambda v: tuple(int(x) for x in v.split(".")[:2]),
)

POD_SPEC = {"containers": [{"name": "app", "image": "app:1", "command": ["app"]}]}
TEMPLATE = {"metadata": {"labels": {"app": "x"}}, "spec": POD_SPEC}


def workload(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    api = {"Job": "batch/v1", "CronJob": "batch/v1", "Pod": "v1", "ReplicationController": "v1"}.get(
        kind, "apps/v1"
    )
    obj: dict[str, Any] = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "emojivoto"},
    }
    if kind == "Pod":
        obj["spec"] = POD_SPEC
    elif kind == "CronJob":
        job_template = {"metadata": TEMPLATE["metadata"], "spec": {**POD_SPEC, "restartPolicy": "OnFailure"}}
        obj["spec"] = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job_template}}}
    elif kind == "Job":
        obj["spec"] = {
            "template": {"metadata": TEMPLATE["metadata"], "spec": {**POD_SPEC, "restartPolicy": "Never"}}
        }
    elif kind == "DaemonSet":
        obj["spec"] = {"selector": {"matchLabels": {"app": "x"}}, "template": TEMPLATE}
    elif kind == "ReplicationController":
        obj["spec"] = {"selector": {"app": "x"}, "template": TEMPLATE}
    else:
        obj["spec"] = {"selector": {"matchLabels": {"app": "x"}}, "template": TEMPLATE, **extra}
    return obj


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {"ports": [{"port": 80}]},
}
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "cfg"},
    "data": {"script": "a\nb\n"},
}
ALL_KINDS = [
    workload("Deployment", "web"),
    workload("StatefulSet", "db"),
    workload("DaemonSet", "agent"),
    workload("ReplicaSet", "rs"),
    workload("Job", "once"),
    workload("CronJob", "nightly"),
    workload("Pod", "solo"),
    workload("ReplicationController", "legacy"),
]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(argv)
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def write_yaml(path: Path, docs: list[Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_injects_every_workload_kind_and_passes_others_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_yaml(tmp_path / "app.yaml", [SERVICE, *ALL_KINDS, CONFIGMAP])
    code, out, err = run_cli(["inject", str(src)], capsys)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert docs[0] == SERVICE and docs[-1] == CONFIGMAP
    expected_kinds = {
        "web": "deployment", "db": "statefulset", "agent": "daemonset", "rs": "replicaset",
        "once": "job", "nightly": "cronjob", "solo": "pod", "legacy": "replicationcontroller",
    }  # fmt: skip
    for obj in docs[1:-1]:
        kubernetes_validate.validate(obj, SCHEMA, strict=True)
        template = template_of(obj)
        names = [x["name"] for x in template["spec"]["initContainers"]]
        assert names == ["mesh-init", "mesh-proxy"]
        kind = expected_kinds[obj["metadata"]["name"]]
        assert template["metadata"]["labels"][f"kubectl-mesh.io/proxy-{kind}"] == obj["metadata"]["name"]
        assert template["metadata"]["labels"]["kubectl-mesh.io/workload-ns"] == "emojivoto"
        assert template["metadata"]["annotations"]["kubectl-mesh.io/injected-by"].startswith("kubectl-mesh/")
    lines = err.strip().splitlines()
    assert lines[0] == 'service "web" skipped: not a workload'
    assert 'deployment "web" injected' in lines and 'cronjob "nightly" injected' in lines
    assert 'pod "solo" injected' in lines and 'configmap "cfg" skipped: not a workload' in lines
    assert 'replicationcontroller "legacy" injected' in lines


def test_round_trip_uninject_removes_exactly_what_inject_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = [SERVICE, *ALL_KINDS]
    src = write_yaml(tmp_path / "app.yaml", original)
    _, injected, _ = run_cli(["inject", str(src)], capsys)
    assert injected != src.read_text()
    code, out, err = run_cli(["uninject", "-"], capsys, stdin=injected)
    assert code == 0
    assert list(yaml.safe_load_all(out)) == original
    assert 'deployment "web" uninjected' in err
    # Injecting twice changes nothing (idempotent) and says why.
    code, again, err = run_cli(["inject", "-"], capsys, stdin=injected)
    assert list(yaml.safe_load_all(again)) == list(yaml.safe_load_all(injected))
    assert 'deployment "web" skipped: pod already has the mesh proxy' in err


def test_json_input_list_kind_and_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    lst = {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment", "a"), SERVICE]}
    (tmp_path / "sub" / "list.json").write_text(json.dumps(lst, indent=2))
    (tmp_path / "two.json").write_text(json.dumps(workload("StatefulSet", "b")) + "\n" + json.dumps(SERVICE))
    (tmp_path / "notes.txt").write_text("ignored: not a manifest suffix")
    code, out, err = run_cli(["inject", str(tmp_path)], capsys)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == [
        "StatefulSet",
        "Service",
        "List",
    ]  # a directory's files, then subdirs
    assert docs[2]["items"][1] == SERVICE
    assert template_of(docs[2]["items"][0])["spec"]["initContainers"][1]["name"] == "mesh-proxy"
    assert err.splitlines() == [
        'statefulset "b" injected',
        'service "web" skipped: not a workload',
        'deployment "a" injected',
        'service "web" skipped: not a workload',
    ]


def test_opted_out_and_host_network_templates_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    opted = workload("Deployment", "quiet")
    opted["spec"]["template"] = {
        "metadata": {"labels": {"kubectl-mesh.io/inject": "disabled"}},
        "spec": POD_SPEC,
    }
    host = workload("DaemonSet", "node-agent")
    host["spec"]["template"] = {"metadata": {}, "spec": {**POD_SPEC, "hostNetwork": True}}
    code, out, err = run_cli(["inject", "-"], capsys, stdin=yaml.safe_dump_all([opted, host]))
    assert code == 0
    assert list(yaml.safe_load_all(out)) == [opted, host]
    assert err.splitlines() == [
        'deployment "quiet" skipped: pod label kubectl-mesh.io/inject=disabled',
        'daemonset "node-agent" skipped: pod uses hostNetwork',
    ]


def test_yaml_syntax_error_names_file_and_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_yaml(tmp_path / "good.yaml", [workload("Deployment", "web")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   labels: {a: b}\n")
    code, out, err = run_cli(["inject", str(good), str(bad)], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {bad}:5:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "stdin", "needle"),
    [
        (["inject", "/nonexistent/app.yaml"], "", "/nonexistent/app.yaml: No such file or directory"),
        (["inject", "-"], "- just\n- a list\n", "<stdin>: document 1 is not a Kubernetes object"),
        (["inject", "-", "-"], "", "stdin can be read only once"),
        (["inject", "--skip-inbound-ports", "http", "-"], "", "skipInboundPorts"),
        (["inject", "--config", "/nonexistent.json", "-"], "", "cannot read --config"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    argv: list[str], stdin: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(argv, capsys, stdin=stdin)
    assert code == 1 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def test_config_file_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "mesh.json"
    cfg.write_text(
        json.dumps({"proxyImage": "reg.local/proxy", "proxyVersion": "2.0.0", "logLevel": "debug"})
    )
    code, out, _ = run_cli(
        ["inject", "--config", str(cfg), "--proxy-version", "2.0.1", "--no-native-sidecar", "-"],
        capsys,
        stdin=yaml.safe_dump(workload("Deployment", "web")),
    )
    assert code == 0
    spec = template_of(yaml.safe_load(out))["spec"]
    proxy = spec["containers"][0]
    assert proxy["name"] == "mesh-proxy" and proxy["image"] == "reg.local/proxy:2.0.1"
    assert {"name": "MESH_LOG_LEVEL", "value": "debug"} in proxy["env"]
    assert [x["name"] for x in spec["initContainers"]] == ["mesh-init"]


def test_pipeline_through_the_installed_command(tmp_path: Path) -> None:
    """`kubectl mesh inject app.yaml | kubectl mesh uninject -` as processes, like a shell pipe."""
    src = write_yaml(tmp_path / "app.yaml", [workload("Deployment", "web"), SERVICE])
    exe = str(Path(sys.executable).parent / "kubectl-mesh")
    inject = subprocess.run([exe, "inject", str(src)], capture_output=True, text=True, timeout=60, check=True)
    assert 'deployment "web" injected' in inject.stderr
    un = subprocess.run(
        [exe, "uninject", "-"], input=inject.stdout, capture_output=True, text=True, timeout=60
    )
    assert un.returncode == 0
    assert list(yaml.safe_load_all(un.stdout)) == [workload("Deployment", "web"), SERVICE]


def test_dates_and_multiline_strings_survive(capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  annotations:\n    released: 2024-01-02\n"
        "data:\n  script: |\n    echo one\n    echo two\n"
    )
    code, out, _ = run_cli(["inject", "-"], capsys, stdin=text)
    assert code == 0
    assert "released: '2024-01-02'" in out and "script: |" in out
    assert yaml.safe_load(out)["data"]["script"] == "echo one\necho two\n"


def _namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_pod_security_of_a_namespace_in_the_same_input(capsys: pytest.CaptureFixture[str]) -> None:
    """A Namespace in the input tells inject its Pod Security levels: `enforce` at baseline or
    restricted would refuse mesh-init, so its workloads are left as they are, with the reason;
    `warn`/`audit` levels are reported. The opt-in label does not matter: inject is explicit."""
    strict = _namespace("strict", **{"pod-security.kubernetes.io/enforce": "restricted"})
    loose = _namespace("loose", **{"pod-security.kubernetes.io/warn": "baseline"})
    web = workload("Deployment", "web")
    web["metadata"]["namespace"] = "strict"
    api = workload("Deployment", "api")
    api["metadata"]["namespace"] = "loose"
    other = workload("Deployment", "other")  # namespace emojivoto: not in the input, unknown
    code, out, err = run_cli(
        ["inject", "-"], capsys, stdin=yaml.safe_dump_all([strict, loose, web, api, other])
    )
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert docs[2] == web  # untouched
    assert (
        "initContainers" in template_of(docs[3])["spec"] and "initContainers" in template_of(docs[4])["spec"]
    )
    lines = err.splitlines()
    assert (
        'deployment "web" skipped: Pod Security enforce=restricted refuses mesh-init '
        "(root, NET_ADMIN, NET_RAW)" in lines
    )
    assert (
        'deployment "api" warning: mesh-init (root, NET_ADMIN, NET_RAW) violates Pod Security warn=baseline'
        in lines
    )
    assert 'deployment "api" injected' in lines and 'deployment "other" injected' in lines


def test_uninject_gives_back_the_docs_job_and_cronjob_byte_for_byte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The Kubernetes docs' job.yaml and cronjob.yaml: templates without metadata, empty and null
    maps and lists. uninject(inject(x)) is x, byte for byte on the YAML the CLI writes."""
    text = """apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl
      restartPolicy: Never
  backoffLimit: 4
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: '* * * * *'
  jobTemplate:
    spec:
      template:
        metadata:
          labels: {}
          annotations: null
        spec:
          initContainers: []
          containers:
          - name: hello
            image: busybox
          restartPolicy: OnFailure
          volumes: null
"""
    _, as_written, _ = run_cli(["uninject", "-"], capsys, stdin=text)  # the CLI's own rendering
    code, injected, _ = run_cli(["inject", "-"], capsys, stdin=text)
    assert code == 0 and "mesh-proxy" in injected
    code, restored, err = run_cli(["uninject", "-"], capsys, stdin=injected)
    assert code == 0 and 'job "pi" uninjected' in err
    assert restored == as_written
    assert list(yaml.safe_load_all(restored)) == list(yaml.safe_load_all(text))
