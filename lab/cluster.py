"""Start and stop the whole lab: network, etcd, kube-apiserver, kube-controller-manager, node agent,
Prometheus. `up()` returns once the API server is ready and the node is registered; `down()`
removes everything the lab made, from the state file alone (works from a fresh shell and after a
crash of any part).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from kubectl_mesh.procs import free_ports, http_ok, prometheus_argv
from lab import network
from lab.config import (
    API_PORT,
    BRIDGE,
    BRIDGE_IP,
    KUBECONFIG,
    KUBERNETES_SERVICE_IP,
    LAB_DIR,
    LOCK_FILE,
    LOG_DIR,
    NODE_NAME,
    REPO,
    RUN_DIR,
    SCRAPE_CONFIG,
    SERVICE_CIDR,
    STATE_FILE,
    USERS_DIR,
    Proc,
    State,
    alive,
    bin_dir,
    missing_binaries,
    proc_start_time,
    publish_pod_binaries,
)

if TYPE_CHECKING:
    from lab.kube import Kube

PKI_DIR = RUN_DIR / "pki"
MOUNTPOINTS_FILE = RUN_DIR / "created-mountpoints"  # host paths the node made for volume mounts
API_URL = f"https://{BRIDGE_IP}:{API_PORT}"
# Alpha in 1.33 (off by default): on, so the lab's API server keeps and validates pod-level
# `spec.resources`, which the injector grows by the proxy's share (kubectl_mesh/inject/podresources.py).
# The controller-manager gets the same gates: components of one cluster should agree. The lab has
# no scheduler, and its node agent does not enforce resources.
FEATURE_GATES = "PodLevelResources=true"
CONTROLLERS = (
    "deployment,replicaset,statefulset,daemonset,job,cronjob,namespace,serviceaccount,garbagecollector,"
    "endpoint,endpointslice,endpointslicemirroring,root-ca-cert-publisher,ttl-after-finished,disruption"
)


class LabError(RuntimeError):
    """A one-line reason the lab could not start."""


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One `up`/`down` at a time on this machine (pytest sessions and make may race)."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def running() -> State | None:
    """The state of a lab whose control plane is alive, else None."""
    state = State.load()
    if state and state.procs and all(alive(p) for p in state.procs):
        return state
    return None


def _start(
    state: State, name: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(LOG_DIR / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    log.close()
    state.procs.append(Proc(name, proc.pid, proc_start_time(proc.pid)))
    state.save()
    return proc


def _log_tail(name: str, lines: int = 8) -> str:
    try:
        text = (LOG_DIR / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _wait(
    what: str,
    check: Callable[[], object],
    procs: dict[str, subprocess.Popen[bytes]],
    timeout: float,
    errors: tuple[type[Exception], ...] = (OSError, ValueError),
) -> None:
    """Poll `check()` until true (`errors` count as not yet); fail fast with the log tail when a
    watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise LabError(
                    f"{name} exited with {proc.returncode} while waiting for {what}: {_log_tail(name)}"
                )
        try:
            if check():
                return
        except errors:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _https_ok(url: str, ctx: ssl.SSLContext) -> bool:
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return bool(resp.status == 200)


def prometheus_config(kubeconfig_file: Path) -> dict[str, object]:
    """The chart's scrape job (loaded, not copied) with pod discovery through the lab's API server."""
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job["kubernetes_sd_configs"] = [{"role": "pod", "kubeconfig_file": str(kubeconfig_file)}]
    return {"global": {"scrape_interval": job.get("scrape_interval", "10s")}, "scrape_configs": [job]}


def up(owner: str = "cli", timeout: float = 90.0, prometheus: bool = True, user: int | None = None) -> State:
    """Start the lab (or return the running one). Raises LabError with a one-line reason.

    `user`: a pid registered (under the lock) as using the lab; see `release`.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, iptables, other UIDs)")
    for tool in ("ip", "iptables", "iptables-restore", "setpriv"):
        if not shutil.which(tool):
            raise LabError(f"{tool} is not installed: apt-get install -y iproute2 iptables util-linux")
    with locked():
        state = running()
        if not state:
            bins = bin_dir()
            missing = [b for b in missing_binaries(bins) if prometheus or b != "prometheus"]
            if missing:
                raise LabError(f"missing {', '.join(missing)} in {bins}: run `make binaries`")
            if _another_lab_answers():
                raise LabError(
                    f"another lab runs on this machine (an API server answers on {BRIDGE_IP}:{API_PORT}), "
                    f"not the one {LAB_DIR} names: set MESH_LAB_DIR to its directory to share it, "
                    "or stop it there"
                )
            _down_locked()  # whatever a crashed run left
            try:
                state = _up_locked(owner, bins, timeout, prometheus)
            except BaseException:
                _down_locked()
                raise
        elif prometheus and not state.prometheus_url and not missing_binaries(Path(state.bin_dir)):
            # A lab started with --no-prometheus (or before Prometheus was built): add it, and give
            # pods (the chart's Prometheus, any UID) the build `up` could not publish then.
            publish_pod_binaries()
            proc = _start_prometheus(state, Path(state.bin_dir))
            url = state.prometheus_url
            _wait("prometheus /-/ready", lambda: http_ok(f"{url}/-/ready"), {"prometheus": proc}, timeout)
        if user is not None:
            USERS_DIR.mkdir(parents=True, exist_ok=True)
            (USERS_DIR / str(user)).touch()
        return state


def _another_lab_answers() -> bool:
    """A live API server on the lab's address that this LAB_DIR did not start: cleaning up "what a
    crashed run left" would tear down that lab's network and pods under it. This LAB_DIR's own
    half-dead lab (an API server of ours alive, another part gone) is ours to clean up."""
    import socket

    state = State.load()
    if state and any(p.name == "kube-apiserver" and alive(p) for p in state.procs):
        return False
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        return False  # no bridge, no lab (and a connect could reach a sandbox's egress proxy instead)
    try:
        with socket.create_connection((str(BRIDGE_IP), API_PORT), timeout=0.5):
            return True
    except OSError:
        return False


def _live_users() -> list[int]:
    users = []
    for f in USERS_DIR.glob("*"):
        try:
            os.kill(int(f.name), 0)
            users.append(int(f.name))
        except (ValueError, ProcessLookupError):
            f.unlink(missing_ok=True)
    return users


def release(user: int, owner: str) -> bool:
    """`user` is done with the lab; stop it if `owner` started it and nobody else uses it."""
    with locked():
        (USERS_DIR / str(user)).unlink(missing_ok=True)
        state = State.load()
        if state is None or state.owner != owner or _live_users():
            return False
        _down_locked()
        return True


def _up_locked(owner: str, bins: Path, timeout: float, with_prometheus: bool) -> State:
    t0 = time.monotonic()
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    state = State(owner=owner, bin_dir=str(bins), api_url=API_URL, started_at=time.time())
    state.temp_dirs.append(str(RUN_DIR))
    state.save()
    publish_pod_binaries()  # pods (any UID) run the lab's prometheus and helm from there
    state.ip_forward = network.setup_host()
    state.save()

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    etcd_dir = Path(tempfile.mkdtemp(prefix="mesh-lab-etcd-", dir=base))
    state.temp_dirs.append(str(etcd_dir))
    client_port, peer_port = free_ports(2)
    etcd_url = f"http://127.0.0.1:{client_port}"
    etcd = _start(state, "etcd", [
        str(bins / "etcd"), "--name=lab", f"--data-dir={etcd_dir}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=lab=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync", "--log-level=warn",
    ])  # fmt: skip

    from lab.certs import Pki, kubeconfig  # cryptography and kubernetes: only `up` pays their import
    from lab.kube import ERRORS, JSON, Kube, data

    pki = Pki(PKI_DIR)
    serving = pki.issue(
        "apiserver", "kube-apiserver", server=True,
        dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local", "localhost"),
        ips=(str(BRIDGE_IP), str(KUBERNETES_SERVICE_IP), "127.0.0.1"),
    )  # fmt: skip
    admin = pki.issue("admin", "lab-admin", "system:masters")
    kcm = pki.issue("controller-manager", "system:kube-controller-manager", "system:masters")
    pki.issue("node-agent", f"system:node:{NODE_NAME}", "system:masters")
    kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    pki.issue("kubelet", NODE_NAME, server=True, ips=(str(BRIDGE_IP),))
    prom = pki.issue("prometheus", "mesh-lab:prometheus")
    sa = pki.service_account_keys()
    kubeconfig(KUBECONFIG, API_URL, pki.ca, admin, "lab-admin")
    kcm_kubeconfig = kubeconfig(RUN_DIR / "controller-manager.kubeconfig", API_URL, pki.ca, kcm, "kcm")
    kubeconfig(RUN_DIR / "prometheus.kubeconfig", API_URL, pki.ca, prom, "prometheus")

    apiserver = _start(state, "kube-apiserver", [
        str(bins / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={BRIDGE_IP}", f"--advertise-address={BRIDGE_IP}", f"--secure-port={API_PORT}",
        f"--cert-dir={PKI_DIR}", f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={pki.ca}",
        "--authorization-mode=RBAC",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,"
        "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
        "--allow-privileged=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}",
        f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
        "--kubelet-preferred-address-types=InternalIP",
        "--profiling=false", "--enable-priority-and-fairness=false",
        f"--feature-gates={FEATURE_GATES}",
    ])  # fmt: skip

    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(admin.cert), str(admin.key))
    _wait("kube-apiserver /readyz", lambda: _https_ok(f"{API_URL}/readyz", ctx),
          {"etcd": etcd, "kube-apiserver": apiserver}, timeout)  # fmt: skip

    controller_manager = _start(state, "kube-controller-manager", [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kcm_kubeconfig}", f"--authentication-kubeconfig={kcm_kubeconfig}",
        f"--authorization-kubeconfig={kcm_kubeconfig}",
        f"--controllers={CONTROLLERS}", "--leader-elect=false", "--secure-port=0",
        f"--root-ca-file={pki.ca}", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--use-service-account-credentials=false",
        "--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5",
        f"--feature-gates={FEATURE_GATES}",
    ])  # fmt: skip

    agent_env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    agent = _start(state, "node-agent", [sys.executable, "-m", "lab.agent", str(RUN_DIR)], env=agent_env)

    kube = Kube(API_URL, pki.ca, admin.cert, admin.key)
    _bootstrap_rbac(kube)
    watched = {
        "kube-apiserver": apiserver,
        "kube-controller-manager": controller_manager,
        "node-agent": agent,
    }
    if with_prometheus:
        watched["prometheus"] = _start_prometheus(state, bins)

    def node_ready() -> bool:
        conditions = data(kube.core.read_node, NODE_NAME).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def default_sa() -> JSON:
        return data(kube.core.read_namespaced_service_account, "default", "default")

    _wait("the node to register", node_ready, watched, timeout, (*ERRORS, ValueError))
    _wait("the default service account", default_sa, watched, timeout, (*ERRORS, ValueError))
    if with_prometheus:
        _wait("prometheus /-/ready", lambda: http_ok(f"{state.prometheus_url}/-/ready"), watched, timeout)
    (LAB_DIR / "up-seconds").write_text(f"{time.monotonic() - t0:.2f}\n")
    return state


def _start_prometheus(state: State, bins: Path) -> subprocess.Popen[bytes]:
    (prom_port,) = free_ports(1)
    # The command line of kubectl_mesh.procs' one launcher (config RUN_DIR/prometheus.yml, data in
    # RUN_DIR/prometheus-data); the lab starts it itself because it outlives this command.
    config = yaml.safe_dump(prometheus_config(RUN_DIR / "prometheus.kubeconfig"), sort_keys=False)
    (RUN_DIR / "prometheus.yml").write_text(config)
    proc = _start(state, "prometheus", prometheus_argv(str(bins / "prometheus"), RUN_DIR, prom_port))
    state.prometheus_url = f"http://127.0.0.1:{prom_port}"
    state.save()
    return proc


RBAC = "rbac.authorization.k8s.io"


def _bootstrap_rbac(kube: Kube) -> None:
    """Least privilege for the lab's Prometheus: read pods (its only discovery role)."""
    from lab.kube import data

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "mesh-lab:prometheus"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "mesh-lab:prometheus"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "mesh-lab:prometheus"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "mesh-lab:prometheus"}],
    }  # fmt: skip
    data(kube.rbac.create_cluster_role, role)
    data(kube.rbac.create_cluster_role_binding, binding)


def down() -> float:
    """Stop the lab and remove what it made; returns the seconds it took."""
    t0 = time.monotonic()
    with locked():
        _down_locked()
    return time.monotonic() - t0


def _down_locked() -> None:
    state = State.load()
    procs = [p for p in (state.procs if state else []) if alive(p)]
    # The node agent first and at once, so it cannot restart a container we are stopping; then
    # the control plane and every pod process together: one grace period for all.
    network.kill_pids([p.pid for p in procs if p.name == "node-agent"], 0.0)
    pod_pids = [pid for ns in network.lab_netns() for pid in network.netns_pids(ns)]
    network.kill_pids([p.pid for p in procs if p.name != "node-agent"] + pod_pids, 1.5)
    network.teardown_all_pods(grace=0.5)
    network.teardown_host_network(state.ip_forward if state else None)
    _remove_mountpoints()
    for d in state.temp_dirs if state else []:
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    with contextlib.suppress(OSError):
        network.ETC_NETNS.rmdir()  # only if empty: someone else's namespaces keep it
    shutil.rmtree(USERS_DIR, ignore_errors=True)
    for path in (STATE_FILE, KUBECONFIG, LAB_DIR / "up-seconds"):
        path.unlink(missing_ok=True)


def _remove_mountpoints() -> None:
    """Mount targets the node created on the host (e.g. /prometheus): removed when still empty."""
    try:
        paths = [p for p in MOUNTPOINTS_FILE.read_text().splitlines() if p.strip()]
    except OSError:
        return
    for p in sorted(set(paths), key=len, reverse=True):
        path = Path(p)
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()


def status() -> dict[str, object]:
    state = State.load()
    if not state:
        return {"running": False}
    return {
        "running": all(alive(p) for p in state.procs) and bool(state.procs),
        "kubeconfig": str(KUBECONFIG),
        "api": state.api_url,
        "prometheus": state.prometheus_url,
        "bin_dir": state.bin_dir,
        "processes": {p.name: {"pid": p.pid, "alive": alive(p)} for p in state.procs},
    }


def dump_status() -> str:
    return json.dumps(status(), indent=2)
