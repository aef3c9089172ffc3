"""`kubectl mesh stat` in the real lab, through the real kubectl, against what the client counted.

The chart is installed with helm (webhook + Prometheus in mesh-system). Two namespaces labelled
for injection: `voting` (an HTTP server: /fail answers 500) in one, `web` (a client sending a
steady RATE requests per second to the voting Service, every FAIL_EVERY-th to /fail, printing
its running counts) in the other. Both pods get the proxy from the webhook; Prometheus discovers
and scrapes them; `kubectl mesh stat` reaches Prometheus through the API server's service proxy.

The same runs twice: over HTTP/1.1 (every FAIL_EVERY-th request answered 500), and over gRPC
(grpcio server and client, every FAIL_EVERY-th call ending with status UNKNOWN; the proxies
classify it by grpc-status, the HTTP status being 200).

For deploy, pod and ns, and for the plain, --from and --to forms, the row must show:
- MESHED 1/1 (from the Kubernetes API);
- SUCCESS within 3 percentage points of the client's own success share over the window;
- RPS within 15% of the client's own rate over the window. (Prometheus' increase() over a 1m
  window scraped every 10 s extrapolates to the window's edges; the client's pacing on a shared
  2-core machine jitters. Both are a few percent on steady traffic.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, INJECT_ENABLED, INJECT_LABEL
from kubectl_mesh.health import CHECKS
from lab.config import CHART, RELEASE
from lab.pytest_plugin import Lab  # the `lab` fixture: tests/conftest.py loads the plugin

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
LAB_VALUES = REPO / "lab" / "chart-values.yaml"  # the chart in the lab: no Grafana (no command)
VENV_BIN = Path(sys.executable).parent
KUBECTL = "/usr/bin/kubectl"
RATE = 10.0
FAIL_EVERY = 4
WINDOW_S = 60
SR_TOLERANCE = 0.03
RPS_TOLERANCE = 0.15

SERVER = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 500 if self.path.startswith("/fail") else 200
        self.send_response(code); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"no\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# The client: RATE calls a second, every FAIL_EVERY-th asking to fail, printing its running
# counts "time sent failed errors"; CALL_* defines `call(fail) -> "ok" | "failed" | "error"` for
# its protocol ("error": no answer from the server at all).
CLIENT = r"""
import os, time
target, rate, fail_every = os.environ["TARGET"], float(os.environ["RATE"]), int(os.environ["FAIL_EVERY"])
CALL
sent = failed = errors = 0
start = time.time()
i = 0
while time.time() - start < 1200:
    i += 1
    outcome = call(i % fail_every == 0)
    sent += outcome != "error"
    failed += outcome == "failed"
    errors += outcome == "error"
    print(f"{time.time():.3f} {sent} {failed} {errors}", flush=True)
    time.sleep(max(0.0, start + i / rate - time.time()))
"""

CALL_HTTP = r"""
import urllib.error, urllib.request
def call(fail):
    try:
        urllib.request.urlopen(target + ("/fail" if fail else "/ok"), timeout=5).read()
        return "ok"
    except urllib.error.HTTPError as e:
        return "failed" if e.code >= 500 else "ok"
    except OSError:
        return "error"
"""

GRPC_SERVER = r"""
from concurrent import futures
import grpc
def vote(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.UNKNOWN, "asked to fail")
    return b"ok"
handlers = {"Vote": grpc.unary_unary_rpc_method_handler(vote)}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("stat.Voting", handlers),))
server.add_insecure_port("0.0.0.0:8080")
server.start()
server.wait_for_termination()
"""

CALL_GRPC = r"""
import grpc
vote = grpc.insecure_channel(target).unary_unary("/stat.Voting/Vote")
def call(fail):
    try:
        vote(b"fail" if fail else b"ok", timeout=5)
        return "ok"
    except grpc.RpcError as e:  # UNKNOWN: the server's answer to b"fail"; others: no answer
        return "failed" if e.code() == grpc.StatusCode.UNKNOWN else "error"
"""

# protocol -> (server code, client code, client's TARGET for the Service `voting` in namespace {ns},
# the interpreter: grpcio is in the lab's venv, first on the pods' PATH; the system's has none)
PROTOCOLS = {
    "http": (SERVER, CLIENT.replace("CALL", CALL_HTTP), "http://voting.{ns}", "/usr/bin/python3"),
    "grpc": (GRPC_SERVER, CLIENT.replace("CALL", CALL_GRPC), "voting.{ns}:80", "python3"),
}


def deployment(
    name: str, namespace: str, code: str, env: dict[str, str] | None = None, python: str = "/usr/bin/python3"
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": "python:3.11",
        "command": [python, "-c", code],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    if name == "voting":
        container["ports"] = [{"name": "http", "containerPort": 8080}]
        container["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        },
    }


class Scenario:
    def __init__(self, lab: Lab, server_ns: str, client_ns: str) -> None:
        self.lab = lab
        self.server_ns = server_ns
        self.client_ns = client_ns
        self.env = lab.env(PATH=f"{VENV_BIN}:{lab.bin_dir}:/usr/bin:/bin")
        self.env.pop("MESH_PROMETHEUS_URL", None)

    def pod(self, namespace: str, app: str) -> str:
        (pod,) = [
            p for p in self.lab.pods(namespace, f"app={app}") if not p["metadata"].get("deletionTimestamp")
        ]
        return str(pod["metadata"]["name"])

    def stat(self, *args: str) -> list[dict[str, Any]]:
        """`kubectl mesh stat … -o json` through the real kubectl (plugin discovery on PATH)."""
        done = subprocess.run(
            [KUBECTL, "mesh", "stat", *args, "-o", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def table(self, *args: str) -> str:
        done = subprocess.run(
            [KUBECTL, "mesh", "stat", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def client_truth(self, end: float) -> tuple[float, float, int]:
        """(success share, requests per second, connection errors) the client counted in the
        WINDOW_S before `end` (epoch seconds)."""
        log = self.lab.container_log(self.client_ns, self.pod(self.client_ns, "web"), "web")
        samples = [tuple(float(x) for x in line.split()) for line in log.splitlines() if line.count(" ") == 3]
        before = [s for s in samples if s[0] <= end - WINDOW_S]
        inside = [s for s in samples if s[0] <= end]
        assert before and inside, "the client has not run for a full window"
        first, last = before[-1], inside[-1]
        sent, failed, errors = last[1] - first[1], last[2] - first[2], last[3] - first[3]
        elapsed = last[0] - first[0]
        return (sent - failed) / sent, sent / elapsed, int(errors)


def install_chart(lab: Lab) -> bool:
    """The chart as a user installs it (helm), unless a release is there already (the lab is shared:
    the suite that installed it uninstalls it). Returns whether it was installed here."""
    installed = False
    if RELEASE not in lab.run_helm("list", "-q", "-n", "default").stdout.split():
        values = ["-f", str(LAB_VALUES)] if LAB_VALUES.exists() else []
        done = lab.run_helm("install", RELEASE, str(CHART), *values, "--wait", "--timeout", "240s")
        assert done.returncode == 0 or "re-use a name" in done.stderr, done.stderr
        installed = done.returncode == 0
    for name in ("mesh-webhook", "prometheus"):
        lab.kubectl(
            "-n",
            CONTROL_PLANE_NAMESPACE,
            "rollout",
            "status",
            f"deploy/{name}",
            "--timeout=180s",
            timeout=200,
        )
    return installed


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def scenario(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    server_code, client_code, target_url, python = PROTOCOLS[request.param]
    installed = install_chart(lab)
    labels = {INJECT_LABEL: INJECT_ENABLED}
    server_ns = lab.create_namespace("stat-srv", labels)
    client_ns = lab.create_namespace("stat-cli", labels)
    try:
        lab.apply(json.dumps(deployment("voting", server_ns, server_code, python=python)))
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "voting", "namespace": server_ns},
            "spec": {"selector": {"app": "voting"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        lab.apply(json.dumps(service))
        lab.wait_pods_ready(server_ns, "app=voting", 1, timeout=120)
        target = {
            "TARGET": target_url.format(ns=server_ns),
            "RATE": str(RATE),
            "FAIL_EVERY": str(FAIL_EVERY),
            "GRPC_DNS_RESOLVER": "native",  # getaddrinfo reads /etc/hosts; the lab has no DNS server
        }
        lab.apply(json.dumps(deployment("web", client_ns, client_code, target, python=python)))
        lab.wait_pods_ready(client_ns, "app=web", 1, timeout=120)
        s = Scenario(lab, server_ns, client_ns)

        def seen() -> bool:
            done = subprocess.run(
                [KUBECTL, "mesh", "stat", "deploy", "-n", server_ns, "-o", "json"],
                env=s.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            rows = json.loads(done.stdout) if done.returncode == 0 else []
            return bool(rows and rows[0]["rps"])

        lab.wait(seen, 180, "voting's traffic in Prometheus", interval=5)
        time.sleep(WINDOW_S + 15)  # a full window of steady traffic, scraped
        yield s
    finally:
        if os.environ.get("MESH_KEEP_TEST_NAMESPACES") is None:
            lab.delete_namespace(server_ns)
            lab.delete_namespace(client_ns)
        if installed:
            lab.run_helm("uninstall", RELEASE, "--wait", "--timeout", "120s")


def check_row(s: Scenario, row: dict[str, Any]) -> None:
    success, rps, errors = s.client_truth(time.time())
    assert errors == 0, "the client could not connect for some requests"
    print(
        f"stat: success {row['success']:.4f} rps {row['rps']:.2f}; "
        f"client: success {success:.4f} rps {rps:.2f}"
    )
    assert (row["meshed"], row["running"]) == (1, 1), row
    assert row["success"] is not None and abs(row["success"] - success) <= SR_TOLERANCE, (row, success)
    assert row["rps"] is not None and abs(row["rps"] - rps) <= RPS_TOLERANCE * rps, (row, rps)
    for q in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99"):
        assert row[q] is not None and 0 <= row[q] < 5000, row


def forms(s: Scenario) -> list[tuple[str, tuple[str, ...], tuple[str, str]]]:
    srv, cli = s.server_ns, s.client_ns
    voting, web = s.pod(srv, "voting"), s.pod(cli, "web")
    return [
        ("deploy", ("deploy", "-n", srv), (srv, "voting")),
        ("deploy --from", ("deploy", "-A", "--from", "deploy/web", "--from-namespace", cli), (srv, "voting")),
        ("deploy --to", ("deploy", "-A", "--to", "deploy/voting", "--to-namespace", srv), (cli, "web")),
        ("po", ("po", "-n", srv), (srv, voting)),
        ("po --from", ("po", "-n", srv, "--from", f"po/{web}", "--from-namespace", cli), (srv, voting)),
        ("po --to", ("po", "-n", cli, "--to", f"po/{voting}", "--to-namespace", srv), (cli, web)),
        ("rs", ("rs", "-n", srv), (srv, voting.rsplit("-", 1)[0])),
        ("ns", ("ns", srv), (srv, srv)),
        ("ns --from", ("ns", "--from", f"ns/{cli}"), (srv, srv)),
        ("ns --to", ("ns", "--to", f"ns/{srv}"), (cli, cli)),
    ]


FORM_IDS = [
    "deploy",
    "deploy --from",
    "deploy --to",
    "po",
    "po --from",
    "po --to",
    "rs",
    "ns",
    "ns --from",
    "ns --to",
]


@pytest.mark.parametrize("form", FORM_IDS)
def test_stat_shows_what_the_client_counted(scenario: Scenario, form: str) -> None:
    (args, expected) = {f[0]: f[1:] for f in forms(scenario)}[form]
    rows = [r for r in scenario.stat(*args) if r["rps"] is not None]
    assert [(r["namespace"], r["name"]) for r in rows] == [expected], rows
    check_row(scenario, rows[0])


def test_the_table_as_users_see_it(scenario: Scenario) -> None:
    text = scenario.table("deploy", "-n", scenario.server_ns)
    header, row = text.splitlines()[:2]
    assert header.split() == [
        "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN",
    ]  # fmt: skip
    cells = row.split()
    assert cells[0] == "voting" and cells[1] == "1/1"
    assert cells[2].endswith("%") and cells[3].endswith("rps") and cells[4].endswith("ms")
    assert cells[7].isdigit() and int(cells[7]) >= 1, text  # web's proxy keeps a connection open


def test_check_passes_on_the_installed_mesh(scenario: Scenario) -> None:
    done = subprocess.run(
        [KUBECTL, "mesh", "check"], env=scenario.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len([line for line in lines if line.startswith("✔ ")]) == len(CHECKS) and "✖" not in done.stdout
    assert lines[-1] == "Status check results are ✔"


def test_version_reports_the_control_plane(scenario: Scenario) -> None:
    done = subprocess.run(
        [KUBECTL, "mesh", "version", "-o", "json"],
        env=scenario.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = json.loads(done.stdout)
    assert info["server"].startswith("v") and info["server"] != "unknown", info


def test_check_pre_asks_the_api_server_about_rbac(lab: Lab) -> None:
    env = lab.env(PATH=f"{VENV_BIN}:/usr/bin:/bin")
    done = subprocess.run(
        [KUBECTL, "mesh", "check", "--pre", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["Kubernetes API reachable"]["ok"]
    assert checks["Kubernetes version supported"]["ok"]
    rbac = checks["can create the mesh's objects (RBAC)"]
    assert rbac["ok"], rbac  # the lab's admin may create everything (SelfSubjectAccessReview says so)


def test_check_pre_names_what_a_user_without_rights_cannot_create(
    lab: Lab, lab_namespace: str, tmp_path: Path
) -> None:
    """A ServiceAccount with no role: its own token, its own kubeconfig, as a restricted user has."""
    from lab.cluster import PKI_DIR

    core = lab.kube.core
    core.create_namespaced_service_account(lab_namespace, {"metadata": {"name": "nobody"}})
    request = {"spec": {"audiences": [], "expirationSeconds": 600}}  # no audience: the API server's
    token = core.create_namespaced_service_account_token("nobody", lab_namespace, request).status.token
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "lab",
                        "cluster": {"server": lab.api_url, "certificate-authority": str(PKI_DIR / "ca.crt")},
                    }
                ],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [{"name": "nobody", "context": {"cluster": "lab", "user": "nobody"}}],
                "current-context": "nobody",
            }
        )
    )
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    done = subprocess.run(
        [KUBECTL, "mesh", "check", "--pre"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout
    line = next(x for x in done.stdout.splitlines() if "RBAC" in x)
    assert line.startswith("✖") and "namespaces" in line and "mutatingwebhookconfigurations" in line, line
    assert "hint: ask a cluster admin" in done.stdout
