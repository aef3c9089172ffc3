"""Where the lab lives and which addresses it owns: one place, so up, down and the node agree.

Every kernel object the lab makes carries the `PREFIX` in its name (network namespaces, veths, the
bridge, iptables chains), so teardown can find all of them even after a crash.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB_DIR = Path(os.environ.get("MESH_LAB_DIR", str(REPO / ".lab")))
STATE_FILE = LAB_DIR / "state.json"
KUBECONFIG = LAB_DIR / "kubeconfig"
LOG_DIR = LAB_DIR / "logs"
RUN_DIR = LAB_DIR / "run"  # certificates, kubeconfigs, pod volumes: removed by teardown
LOCK_FILE = LAB_DIR / "lock"
USERS_DIR = LAB_DIR / "users"  # one file per pytest session using a shared lab

PREFIX = "mlab"
BRIDGE = f"{PREFIX}0"
NETNS_PREFIX = f"{PREFIX}-"
VETH_PREFIX = PREFIX  # host side: mlab<8 hex>
CHAIN_PREFIX = "MLAB-"

POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
BRIDGE_IP = ipaddress.ip_address("10.244.0.1")  # the host's address in the lab; API server binds here
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
KUBERNETES_SERVICE_IP = ipaddress.ip_address("10.96.0.1")
API_PORT = 6443
KUBELET_PORT = 10250  # the node agent's log endpoint (kubectl logs), on the bridge address
NODE_NAME = "lab-node"
CLUSTER_DOMAIN = "cluster.local"
HAIRPIN_MARK = "0x4000/0x4000"

VERSIONS_ENV = Path(__file__).resolve().parent / "versions.env"
CHART = REPO / "charts" / "kubectl-mesh"
SCRAPE_CONFIG = CHART / "files" / "scrape-config.yaml"
RELEASE = "kubectl-mesh"  # the release name the lab's tests, the walkthrough and the snapshot use


@functools.cache
def versions() -> dict[str, str]:
    """versions.env as a dict: read once per process (bin_dir() asks for it at every container start)."""
    out: dict[str, str] = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def bin_dir() -> Path:
    """The directory build-binaries.sh fills (same naming rule as the script)."""
    if os.environ.get("MESH_LAB_BIN"):
        return Path(os.environ["MESH_LAB_BIN"])
    v = versions()
    cache = Path(os.environ.get("MESH_CACHE", str(Path.home() / ".cache" / "kubectl-mesh")))
    name = (
        f"kube-{v['KUBE_VERSION']}_etcd-{v['ETCD_VERSION']}_helm-{v['HELM_VERSION']}_krew-{v['KREW_VERSION']}"
    )
    return cache / "bin" / name


def find_helm(explicit: str | None = None, lab_bin: Path | None = None) -> str | None:
    """The helm to run, by one rule for the chart snapshot (scripts/chart_snapshot.py), the chart
    tests, the walkthrough and the lab fixture: `explicit`, else $MESH_HELM, else the lab's build
    (`lab_bin`, default `bin_dir()`: the version versions.env pins), else helm on PATH."""
    if explicit:
        return explicit
    if os.environ.get("MESH_HELM"):
        return os.environ["MESH_HELM"]
    built = (lab_bin or bin_dir()) / "helm"
    return str(built) if os.access(built, os.X_OK) else shutil.which("helm")


# Binaries pods may run (by PATH), where any UID can reach them: ~/.cache is under /root (0700).
POD_BIN_ROOT = Path(os.environ.get("MESH_LAB_POD_BIN", "/opt/kubectl-mesh/lab-bin"))
POD_BINARIES = ("prometheus", "helm")


def pod_bin_dir() -> Path:
    return POD_BIN_ROOT / bin_dir().name


def publish_pod_binaries() -> Path:
    """Hard-link (or copy) the pod-runnable binaries into a world-readable directory, once."""
    import shutil

    target = pod_bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    for d in (target, *target.parents):
        if d == Path("/opt"):
            break
        d.chmod(0o755)
    for name in POD_BINARIES:
        src, dst = bin_dir() / name, target / name
        if not src.exists() or (dst.exists() and dst.stat().st_size == src.stat().st_size):
            continue
        tmp = dst.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        tmp.chmod(0o755)
        tmp.replace(dst)
    return target


def missing_binaries(directory: Path) -> list[str]:
    need = ("etcd", "kube-apiserver", "kube-controller-manager", "prometheus")
    return [b for b in need if not os.access(directory / b, os.X_OK)]


@dataclass
class Proc:
    """A process the lab started: its pid and kernel start time, so a reused pid is never killed."""

    name: str
    pid: int
    start: str


@dataclass
class State:
    """What a later `lab down` (maybe from a fresh shell) needs to undo everything."""

    owner: str = "cli"  # "cli" (make cluster) or "pytest"
    procs: list[Proc] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)
    ip_forward: str = "0"
    api_url: str = ""
    prometheus_url: str = ""
    bin_dir: str = ""
    started_at: float = 0.0

    def save(self) -> None:
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(STATE_FILE)

    @classmethod
    def load(cls) -> State | None:
        try:
            raw = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            return None
        procs = [Proc(**p) for p in raw.pop("procs", [])]
        return cls(procs=procs, **raw)


def proc_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); '' when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def alive(proc: Proc) -> bool:
    """Still running (not a zombie) and still the process we started (same start time)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return bool(proc.start) and fields[19] == proc.start and fields[0] != "Z"


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command (ip, iptables, ...) and raise a one-line error when it fails."""
    res = subprocess.run(args, capture_output=True, text=True, input=input, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res
