"""What `kubectl mesh demo` runs, decided without doing any of it. Pure: ports in, plan out.

The demo is the walkthrough's cluster folded onto loopback: each emojivoto Deployment becomes one
"pod" (the app process and a `mesh-proxy run` in explicit mode beside it), and a real Prometheus
scrapes the proxies from static targets that carry the labels the cluster's relabelling would
add (`namespace`, `pod`, and `deployment` from `kubectl-mesh.io/proxy-deployment`), in the job
the CLI queries. So `stat` runs unchanged on top: same queries, same renderer.

    vote-bot ─http_proxy─▶ its proxy (outbound) ─▶ web's proxy (inbound) ─▶ web ─grpc_proxy─▶ …

`web` calls emoji and voting over gRPC: grpcio honours `grpc_proxy` with a CONNECT tunnel through
web's proxy, which finds HTTP/2 inside it; the callee's proxy finds it on its inbound side.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass

from kubectl_mesh.contract import SCRAPE_JOB
from kubectl_mesh.stat import StatRequest

NAMESPACE = "emojivoto"
KIND = "deployment"
# Start order: servers before their clients, so the bot's first loop already finds everyone.
DEPLOYMENTS = ("emoji", "voting", "web", "vote-bot")
SERVERS = ("emoji", "voting", "web")
SCRAPE_INTERVAL_S = 2  # short, so that a window of a few scrapes fills within seconds
WINDOW = "20s"  # the stat window: ten scrapes (stat requires more than the cluster's 10s interval)
PORTS_PER_DEPLOYMENT = 6  # app, counters, proxy inbound, proxy outbound, proxy admin, proxy tap
PORTS_NEEDED = PORTS_PER_DEPLOYMENT * len(DEPLOYMENTS) + 1  # + Prometheus

# The seed walkthrough's three commands, as a user types them after `kubectl mesh stat`. Defined
# here once: the demo parses them with stat's own parser (kubectl_mesh.commands.demo), and the lab's
# walkthrough (lab/walkthrough.py) runs them through the real kubectl.
WALKTHROUGH_STAT = (
    ("-n", NAMESPACE, "deployment", "web"),
    ("deploy", "--all-namespaces", "--from", "web", "--from-namespace", NAMESPACE),
    ("deploy", "--to", "voting", "--to-namespace", NAMESPACE, "--all-namespaces"),
)
# Then `kubectl mesh diagnose` (argv after it) finds voting by itself, from the entry point web.
DIAGNOSE_TARGET = "web"
WALKTHROUGH_DIAGNOSE = (f"deploy/{DIAGNOSE_TARGET}", "-n", NAMESPACE)
WALKTHROUGH_EDGES = ("deploy", "-n", NAMESPACE)  # and the whole graph: who calls whom


@dataclass(frozen=True)
class PodPorts:
    app: int  # the service's own port (vote-bot serves nothing there; kept for a uniform shape)
    counters: int  # the service's /counters and /healthz, outside the mesh
    inbound: int  # mesh-proxy inbound listener: what clients of this service connect to
    outbound: int  # mesh-proxy outbound listener: the app's http_proxy
    admin: int  # mesh-proxy /metrics, /ready: what Prometheus scrapes
    tap: int  # mesh-proxy's tap (127.0.0.1): what `kubectl mesh tap --demo` reads


@dataclass(frozen=True)
class Process:
    """One process to start: `name` is what the user sees in messages (`web`, `web's proxy`)."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    ready_url: str  # answers 200 once the process serves


@dataclass(frozen=True)
class DemoPod:
    deployment: str
    pod: str
    ports: PodPorts
    app: Process
    proxy: Process


@dataclass(frozen=True)
class Walkthrough:
    """One of the walkthrough's stat commands: what a user types, and the request it means."""

    argv: tuple[str, ...]  # after `kubectl mesh stat`
    request: StatRequest

    @property
    def command(self) -> str:
        return "kubectl mesh stat " + " ".join(self.argv)


@dataclass(frozen=True)
class DemoPlan:
    pods: tuple[DemoPod, ...]
    prometheus_port: int
    workdir: str
    namespace: str = NAMESPACE  # a topology's demo (kubectl_mesh.demo.topology) runs in its own

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def pod(self, deployment: str) -> DemoPod:
        return next(p for p in self.pods if p.deployment == deployment)


def pod_name(deployment: str, token: str | None = None) -> str:
    """A pod name shaped like a Deployment's (`web-7f9c6b8d5-x2k4q`), so the tables look real."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet for generated names
    token = token or "".join(secrets.choice(alphabet) for _ in range(14))
    return f"{deployment}-{token[:9]}-{token[9:14]}"


def split_ports(ports: list[int]) -> tuple[dict[str, PodPorts], int]:
    """Hand out PORTS_NEEDED ports: PORTS_PER_DEPLOYMENT per Deployment, the last one to Prometheus."""
    if len(ports) != PORTS_NEEDED or len(set(ports)) != PORTS_NEEDED:
        raise ValueError(f"need {PORTS_NEEDED} distinct ports, got {len(set(ports))}")
    per: dict[str, PodPorts] = {}
    for i, deployment in enumerate(DEPLOYMENTS):
        p = ports[i * PORTS_PER_DEPLOYMENT : (i + 1) * PORTS_PER_DEPLOYMENT]
        per[deployment] = PodPorts(app=p[0], counters=p[1], inbound=p[2], outbound=p[3], admin=p[4], tap=p[5])
    return per, ports[-1]


def build_plan(
    ports: list[int],
    workdir: str,
    *,
    python: str = sys.executable,
    request_rate: float = 1.0,
    failure_share: float = 0.15,
    pod_names: dict[str, str] | None = None,
    run_marker: str = "",
) -> DemoPlan:
    """Every process of the demo with its argv and environment, wired to `ports`."""
    per, prometheus_port = split_ports(ports)
    names = pod_names or {d: pod_name(d) for d in DEPLOYMENTS}
    base_env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "MESH_DEMO_RUN": run_marker}

    def via_mesh(deployment: str) -> str:
        return f"127.0.0.1:{per[deployment].inbound}"

    pods: list[DemoPod] = []
    for deployment in DEPLOYMENTS:
        p = per[deployment]
        app_env = {
            **base_env,
            "BIND": "127.0.0.1",
            "PORT": str(p.app),
            "COUNTERS_PORT": str(p.counters),
            # Explicit mode: the app sends its requests through its own proxy.
            "http_proxy": f"http://127.0.0.1:{p.outbound}",
            "no_proxy": "",
        }
        if deployment == "web":
            app_env["grpc_proxy"] = app_env["http_proxy"]  # gRPC to emoji and voting, tunnelled
            app_env["EMOJISVC_HOST"] = via_mesh("emoji")
            app_env["VOTINGSVC_HOST"] = via_mesh("voting")
        if deployment == "vote-bot":
            app_env["WEB_HOST"] = via_mesh("web")
            app_env["REQUEST_RATE"] = f"{request_rate:g}"
            app_env["FAILURE_SHARE"] = f"{failure_share:g}"
        # vote-bot serves nothing on its app port; its proxy's inbound side points at the counters
        # port so that the proxy has somewhere to forward to (nothing calls it).
        forward = p.counters if deployment == "vote-bot" else p.app
        app = Process(
            name=deployment,
            argv=(python, "-m", "kubectl_mesh.demo.emojivoto", deployment),
            env=app_env,
            ready_url=f"http://127.0.0.1:{p.counters}/healthz",
        )
        proxy = Process(
            name=f"{deployment}'s proxy",
            argv=(
                python,
                "-m",
                "proxy",
                "run",
                *_flags(
                    inbound_addr="127.0.0.1",
                    inbound_port=p.inbound,
                    inbound_forward=f"127.0.0.1:{forward}",
                    outbound_port=p.outbound,
                    admin_addr="127.0.0.1",
                    admin_port=p.admin,
                    tap_port=p.tap,
                    namespace=NAMESPACE,
                    workload_kind=KIND,
                    workload_name=deployment,
                    pod=names[deployment],
                    log_level="warning",
                    shutdown_grace=1,
                ),
            ),
            env=dict(base_env),
            ready_url=f"http://127.0.0.1:{p.admin}/ready",
        )
        pods.append(DemoPod(deployment, names[deployment], p, app, proxy))
    return DemoPlan(tuple(pods), prometheus_port, workdir)


def _flags(**flags: object) -> tuple[str, ...]:
    """`inbound_port=4143` -> `("--inbound-port", "4143")`."""
    return tuple(x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v)))


def prometheus_config(plan: DemoPlan) -> str:
    """The scrape job as the cluster's relabelling would leave it, with static targets.

    Same job name, and per target the labels `namespace`, `pod`, `<kind>` and `replicaset` that
    charts/kubectl-mesh/files/scrape-config.yaml derives from a meshed Deployment's pod. YAML is JSON's
    superset, so JSON is written (no YAML library needed here).
    """
    import json

    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{pod.ports.admin}"],
                        "labels": {
                            "namespace": plan.namespace,
                            "pod": pod.pod,
                            KIND: pod.deployment,
                            "replicaset": pod.pod.rsplit("-", 1)[0],  # a Deployment's pod has one
                        },
                    }
                    for pod in plan.pods
                ],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"
