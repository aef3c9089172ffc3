"""The lab cluster behaves like a cluster: Deployments become running pods with addresses, Services
route by name, scaling stops processes, failures are reported, the API server is reachable from
pods, and a pod injected with the real mesh runs its iptables init step and its proxy as 2102.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from kubectl_mesh.contract import PROXY_UID
from kubectl_mesh.prom import Vector
from lab.config import POD_CIDR, SERVICE_CIDR, bin_dir
from lab.pytest_plugin import Lab

pytestmark = [pytest.mark.lab, pytest.mark.root]

MARKER = "index.html"  # each server answers with its pod name


def web_manifest(name: str, replicas: int) -> str:
    """A Deployment of `python3 -m http.server` answering with its own pod name, and its Service."""
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          replicas: {replicas}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers:
              - name: web
                image: python:3.11
                command: [sh, -c, 'echo "$(POD_NAME)" > {MARKER} && exec python3 -m http.server 8080']
                workingDir: /srv/www
                env:
                - name: POD_NAME
                  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
                ports: [{{containerPort: 8080, name: http}}]
                readinessProbe: {{httpGet: {{path: /{MARKER}, port: http}}, periodSeconds: 2}}
                securityContext: {{runAsUser: 1000}}
                volumeMounts: [{{name: www, mountPath: /srv/www}}]
              volumes: [{{name: www, emptyDir: {{}}}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          selector: {{app: {name}}}
          ports: [{{name: http, port: 80, targetPort: http}}]
        """
    )


def client_pod(name: str, code: str, uid: int = 1000, labels: str = "{}") -> str:
    """A one-shot pod running Python `code` as a normal UID (restartPolicy Never)."""
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, labels: {labels}}}
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: python:3.11
            command: [python3, -c, {json.dumps(code)}]
            securityContext: {{runAsUser: {uid}}}
        """
    )


# Until both pods answered (bounded: 200 requests, 30 s): a pod that turned ready a moment ago
# may not be in the node's service rules yet, so the first requests can all meet the other one.
FETCH_NAMES = """
import sys, time, urllib.request
seen, deadline = [], time.time() + 30
for _ in range(200):
    try:
        seen.append(urllib.request.urlopen(URL, timeout=3).read().decode().strip())
    except OSError as err:
        if time.time() > deadline: raise
        print("retry:", err, flush=True); time.sleep(0.5)
    if len(set(seen)) > 1 and len(seen) >= 40 or time.time() > deadline:
        break
    if len(seen) >= 40:
        time.sleep(0.1)
print("SEEN", sorted(set(seen)))
"""


def test_deployment_runs_pods_that_a_client_reaches_by_service_name(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    lab.apply(web_manifest("web", 2), ns)
    pods = lab.wait_pods_ready(ns, "app=web", count=2, timeout=60)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2, f"two pods, two addresses: {ips}"
    assert all(__import__("ipaddress").ip_address(ip) in POD_CIDR for ip in ips)
    cluster_ip = json.loads(lab.kubectl("-n", ns, "get", "svc", "web", "-o", "json"))["spec"]["clusterIP"]
    assert __import__("ipaddress").ip_address(cluster_ip) in SERVICE_CIDR

    for url in ("http://web/index.html", f"http://web.{ns}.svc.cluster.local/index.html"):
        code = f"URL = {url!r}\n" + FETCH_NAMES
        name = "client-short" if url.startswith("http://web/") else "client-fqdn"
        lab.apply(client_pod(name, code), ns)
        pod = lab.wait_pod_phase(ns, name, ("Succeeded", "Failed"), timeout=60)
        out = lab.kubectl("-n", ns, "logs", name)  # through the API server and the node's log endpoint
        assert pod["status"]["phase"] == "Succeeded", out
        names = {p["metadata"]["name"] for p in pods}
        assert f"SEEN {sorted(names)}" in out, f"random balancing over both pods through {url}: {out}"


def test_scaling_to_zero_stops_the_processes(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    lab.apply(web_manifest("web", 2), ns)
    pods = lab.wait_pods_ready(ns, "app=web", count=2, timeout=60)
    pids = [pid for p in pods for pid in lab.pod_pids(p)]
    assert pids, "each running pod has processes in its network namespace"
    lab.kubectl("-n", ns, "scale", "deployment/web", "--replicas=0")
    lab.wait(lambda: not lab.pods(ns, "app=web"), 30, "pods of web deleted")
    alive = lab.live(pids)
    assert not alive, f"processes still running after scale to 0: {alive}"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(lab.netns_of(p) in netns for p in pods), "the pods' network namespaces are gone"


def test_a_failing_command_fails_the_pod_with_its_exit_code(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    lab.apply(client_pod("fails", "import sys; print('bye'); sys.exit(3)"), ns)
    pod = lab.wait_pod_phase(ns, "fails", ("Succeeded", "Failed"), timeout=30)
    assert pod["status"]["phase"] == "Failed"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"
    assert "bye" in lab.container_log(ns, "fails", "main")


def test_a_container_without_command_is_reported_not_run(lab: Lab, lab_namespace: str) -> None:
    """Images are not pulled: such a pod waits with a clear reason (like Grafana's in the chart)."""
    ns = lab_namespace
    manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: image-only}\nspec:\n"
    manifest += "  containers: [{name: grafana, image: grafana/grafana:11.0.0}]\n"
    lab.apply(manifest, ns)

    def waiting() -> dict[str, str] | None:
        statuses = lab.pod(ns, "image-only").get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = lab.wait(
        lambda: (w := waiting()) and w.get("reason") == "CreateContainerError" and w, 30, "waiting"
    )
    assert "no command" in state["message"]
    assert lab.pod(ns, "image-only")["status"]["phase"] == "Pending"
    # ...and the node keeps running other pods.
    lab.apply(client_pod("after", "print('ok')"), ns)
    assert lab.wait_pod_phase(ns, "after", ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"


def test_restart_policy_always_restarts_with_back_off(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    manifest = client_pod("crashes", "import sys; sys.exit(1)").replace(
        "restartPolicy: Never", "restartPolicy: Always"
    )
    lab.apply(manifest, ns)

    def restarted() -> dict[str, object] | None:
        statuses = lab.pod(ns, "crashes").get("status", {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    status = lab.wait(restarted, 30, "two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 1  # type: ignore[index]
    assert lab.pod(ns, "crashes")["status"]["phase"] == "Running"


def test_a_pod_reaches_itself_through_its_service(lab: Lab, lab_namespace: str) -> None:
    """Hairpin: the Service's only endpoint is the caller."""
    ns = lab_namespace
    code = (
        "import subprocess, sys, time, urllib.request\n"
        "quiet = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
        "subprocess.Popen([sys.executable, '-m', 'http.server', '8080'], **quiet)\n"
        "deadline = time.time() + 30\n"
        "while True:\n"
        "    try:\n"
        "        print(urllib.request.urlopen('http://self/', timeout=2).status); break\n"
        "    except OSError as err:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(0.3)\n"
    )
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: self}\n"
    service += "spec: {selector: {app: self}, ports: [{port: 80, targetPort: 8080}]}\n"
    lab.apply(service, ns)
    lab.apply(client_pod("self", code, labels="{app: self}"), ns)
    pod = lab.wait_pod_phase(ns, "self", ("Succeeded", "Failed"), timeout=45)
    assert pod["status"]["phase"] == "Succeeded", lab.container_log(ns, "self", "main")


def test_pods_reach_the_api_server_in_cluster(lab: Lab, lab_namespace: str) -> None:
    """KUBERNETES_SERVICE_HOST, the service account token and ca.crt: an in-cluster client works."""
    ns = lab_namespace
    code = textwrap.dedent(
        """
        import json, os, ssl, urllib.error, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/kube-system/secrets")
        req.add_header("Authorization", "Bearer " + open(f"{sa}/token").read())
        try:
            urllib.request.urlopen(req, context=ctx, timeout=5)
        except urllib.error.HTTPError as err:
            print(err.code, json.loads(err.read())["message"])
        """
    )
    lab.apply(client_pod("incluster", code), ns)
    pod = lab.wait_pod_phase(ns, "incluster", ("Succeeded", "Failed"), timeout=30)
    out = lab.container_log(ns, "incluster", "main")
    assert pod["status"]["phase"] == "Succeeded", out
    # Authenticated as the pod's service account, which may not read secrets: RBAC says 403.
    assert out.startswith("403 ") and f"system:serviceaccount:{ns}:default" in out, out


def _mesh_missing() -> str | None:
    for module in ("kubectl_mesh.inject", "proxy.init", "kubectl_mesh.commands.inject"):
        if importlib.util.find_spec(module) is None:
            return f"{module} has not landed yet"
    if not shutil.which("kubectl-mesh", path=str(Path(__import__("sys").executable).parent)):
        return "kubectl-mesh is not installed in the venv"
    if not (bin_dir() / "prometheus").exists():
        return "the lab's Prometheus is not built yet"
    return None


@pytest.mark.slow
def test_an_injected_pod_runs_its_init_rules_and_proxy_and_is_scraped(lab: Lab, lab_namespace: str) -> None:
    reason = _mesh_missing()
    if reason:
        pytest.skip(reason)
    ns = lab_namespace
    inject = Path(__import__("sys").executable).parent / "kubectl-mesh"
    injected = subprocess.run(
        [str(inject), "inject", "-"], input=web_manifest("web", 1), capture_output=True, text=True, check=True
    ).stdout
    lab.apply(injected, ns)
    (pod,) = lab.wait_pods_ready(ns, "app=web", count=1, timeout=90)
    name = pod["metadata"]["name"]
    inits = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    assert inits["mesh-init"]["state"]["terminated"]["exitCode"] == 0
    assert inits["mesh-proxy"]["state"].get("running") and inits["mesh-proxy"]["ready"]

    rules = subprocess.run(
        ["ip", "netns", "exec", lab.netns_of(pod), "iptables", "-t", "nat", "-S"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--to-ports 4143" in rules and "--to-ports 4140" in rules, rules
    assert f"--uid-owner {PROXY_UID}" in rules, rules

    def uid_of(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))

    proxies = [
        pid for pid in lab.pod_pids(pod) if b"mesh-proxy\x00run" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert proxies and all(uid_of(pid) == PROXY_UID for pid in proxies)

    # A meshed client (its outbound redirected to its own proxy, which connects as 2102) by name.
    client_manifest = client_pod("client", "URL = 'http://web/index.html'\n" + FETCH_NAMES)
    client = subprocess.run(
        [str(inject), "inject", "-"], input=client_manifest, capture_output=True, text=True, check=True
    ).stdout
    lab.apply(client, ns)
    done = lab.wait_pod_phase(ns, "client", ("Succeeded", "Failed"), timeout=60)
    out = lab.container_log(ns, "client", "main")
    assert done["status"]["phase"] == "Succeeded" and f"SEEN ['{name}']" in out, out

    # The server's proxy counted the client's requests as coming from the client's proxy (which
    # set the identity header): the client's traffic went through its proxy, as UID 2102, to the
    # ClusterIP. Prometheus discovered the proxy through the API server and labelled it.
    def scraped() -> Vector:
        query = f'request_total{{namespace="{ns}", direction="inbound", src_pod="client"}}'
        return lab.prometheus_query(query)

    ((labels, value), *_) = lab.wait(scraped, 60, "Prometheus to scrape the proxy", interval=1.0)
    assert labels["namespace"] == ns and labels["deployment"] == "web" and labels["pod"] == name, labels
    assert value is not None and value >= 1


def test_init_containers_then_sidecar_by_startup_probe_then_app(lab: Lab, lab_namespace: str) -> None:
    """Init runs first, a native sidecar must pass its startup probe before the app starts, and the
    sidecar is stopped after the app finishes."""
    ns = lab_namespace
    sidecar = (
        "import socket, time\n"
        "time.sleep(1)\n"  # the startup probe must wait for this
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 9000)); s.listen(8)\n"
        "while True: s.accept()[0].close()\n"
    )
    app = (
        "import socket\n"
        "print(open('/shared/init').read().strip())\n"
        "socket.create_connection(('127.0.0.1', 9000), timeout=2).close()\n"
        "print('sidecar up before app')\n"
    )
    manifest = textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: ordered}}
        spec:
          restartPolicy: Never
          initContainers:
          - name: init
            image: busybox
            command: [sh, -c, 'echo init-ran > /shared/init']
            volumeMounts: [{{name: shared, mountPath: /shared}}]
          - name: sidecar
            image: python
            restartPolicy: Always
            command: [python3, -c, {json.dumps(sidecar)}]
            startupProbe: {{tcpSocket: {{port: 9000}}, periodSeconds: 1, failureThreshold: 30}}
          containers:
          - name: app
            image: python
            command: [python3, -c, {json.dumps(app)}]
            volumeMounts: [{{name: shared, mountPath: /shared}}]
          volumes: [{{name: shared, emptyDir: {{}}}}]
        """
    )
    lab.apply(manifest, ns)
    pod = lab.wait_pod_phase(ns, "ordered", ("Succeeded", "Failed"), timeout=60)
    out = lab.container_log(ns, "ordered", "app")
    assert pod["status"]["phase"] == "Succeeded", out
    assert out.splitlines() == ["init-ran", "sidecar up before app"]
    inits = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    assert inits["init"]["state"]["terminated"]["exitCode"] == 0
    assert "terminated" in inits["sidecar"]["state"], "the sidecar stops once the app is done"
    assert not lab.live(lab.pod_pids(pod))


def test_deleting_a_pod_terminates_then_kills_after_the_grace_period(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)\n"
    )
    manifest = client_pod("stubborn", stubborn).replace(
        "restartPolicy: Never", "terminationGracePeriodSeconds: 2"
    )
    lab.apply(manifest, ns)
    pod = lab.wait_pods_ready(ns, count=1, timeout=30)[0]
    pids = lab.pod_pids(pod)
    assert pids
    lab.kubectl("-n", ns, "delete", "pod", "stubborn", "--wait=true", "--timeout=20s")
    assert not lab.live(pids), "SIGKILL after the grace period"


def test_config_secret_and_token_reach_the_container(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    code = textwrap.dedent(
        """
        import os
        print(open("/etc/cfg/greeting").read())
        env = os.environ
        print(env["FROM_CM"], env["FROM_SECRET"], env["MY_IP"] == env["EXPECT_IP"])
        print(oct(os.stat("/etc/secret/password").st_mode & 0o777), open("/etc/secret/password").read())
        print(len(open("/var/run/secrets/tokens/api").read().split(".")))
        """
    )
    manifest = textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: cfg}}
        data: {{greeting: hello, word: cm-value}}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {{name: sec}}
        stringData: {{password: s3cret}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: reader}}
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: python
            command: [python3, -c, {json.dumps(code)}]
            securityContext: {{runAsUser: 1000}}
            env:
            - {{name: FROM_CM, valueFrom: {{configMapKeyRef: {{name: cfg, key: word}}}}}}
            - {{name: FROM_SECRET, valueFrom: {{secretKeyRef: {{name: sec, key: password}}}}}}
            - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
            - {{name: EXPECT_IP, value: "$(MY_IP)"}}
            volumeMounts:
            - {{name: cfg, mountPath: /etc/cfg}}
            - {{name: sec, mountPath: /etc/secret}}
            - {{name: tok, mountPath: /var/run/secrets/tokens}}
          volumes:
          - {{name: cfg, configMap: {{name: cfg}}}}
          - {{name: sec, secret: {{secretName: sec, defaultMode: 0440}}}}
          - name: tok
            projected:
              sources: [{{serviceAccountToken: {{path: api, audience: lab-test, expirationSeconds: 600}}}}]
        """
    )
    lab.apply(manifest, ns)
    pod = lab.wait_pod_phase(ns, "reader", ("Succeeded", "Failed"), timeout=30)
    out = lab.container_log(ns, "reader", "main")
    assert pod["status"]["phase"] == "Succeeded", out
    assert out.split() == ["hello", "cm-value", "s3cret", "True", "0o440", "s3cret", "3"], out


def test_an_unsupported_volume_is_a_clear_waiting_reason(lab: Lab, lab_namespace: str) -> None:
    ns = lab_namespace
    volumes = "  volumes: [{name: data, persistentVolumeClaim: {claimName: x}}]\n"
    manifest = client_pod("pvc", "print('never')") + volumes
    lab.apply(manifest, ns)

    def waiting() -> dict[str, str] | None:
        statuses = lab.pod(ns, "pvc").get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = lab.wait(lambda: (w := waiting()) and "unsupported" in w.get("message", "") and w, 30, "waiting")
    assert state["reason"] == "ContainerCreating" and "persistentVolumeClaim" in state["message"]


def test_a_service_created_later_resolves_in_a_running_pod(lab: Lab, lab_namespace: str) -> None:
    """The names in every pod's /etc/hosts follow the Services, without restarting the pod."""
    ns = lab_namespace
    code = (
        "import socket, time\n"
        "deadline = time.time() + 30\n"
        "while True:\n"
        "    try:\n"
        f"        print(socket.gethostbyname('late.{ns}.svc.cluster.local')); break\n"
        "    except OSError:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(0.2)\n"
    )
    lab.apply(client_pod("waiter", code), ns)
    lab.wait(lambda: lab.pod(ns, "waiter")["status"].get("phase") == "Running", 30, "waiter running")
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec: {ports: [{port: 80}]}\n"
    lab.apply(service, ns)
    cluster_ip = json.loads(lab.kubectl("-n", ns, "get", "svc", "late", "-o", "json"))["spec"]["clusterIP"]
    pod = lab.wait_pod_phase(ns, "waiter", ("Succeeded", "Failed"), timeout=40)
    out = lab.container_log(ns, "waiter", "main")
    assert pod["status"]["phase"] == "Succeeded" and out.strip() == cluster_ip, out


def test_a_second_lab_from_another_directory_refuses_and_leaves_the_running_one_alone(
    lab: Lab, lab_namespace: str, tmp_path: Path
) -> None:
    """`lab up` from another checkout (another MESH_LAB_DIR) must not clean up "a crashed run" that
    is in fact the live lab: it says so in one line, and the running lab keeps its network and pods."""
    import sys as _sys

    from lab.runtime import runtime_env

    lab.apply(client_pod("alive", "import time; time.sleep(120)"), lab_namespace)
    lab.wait_pod_phase(lab_namespace, "alive", ("Running",), timeout=60)
    checkout = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [_sys.executable, "-m", "lab", "up", "--no-prometheus"], capture_output=True, text=True, timeout=120,
        env=runtime_env(MESH_LAB_DIR=str(tmp_path / "other"), PYTHONPATH=checkout), cwd=checkout,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert done.stderr.startswith("lab: error: another lab runs on this machine"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    pod = lab.pod(lab_namespace, "alive")
    assert pod["status"]["phase"] == "Running"
    assert subprocess.run(["ip", "link", "show", "mlab0"], capture_output=True).returncode == 0
    assert Path(f"/var/run/netns/{lab.netns_of(pod)}").exists()
