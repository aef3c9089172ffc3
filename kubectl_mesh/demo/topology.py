"""Call graphs to try `kubectl mesh diagnose` on, defined once for the demo, the lab and the tests.

Each topology is a few workloads that call each other over HTTP (`kubectl_mesh.demo.topoapp`),
one of them failing on its own every n-th request. A request fails when its workload's own rule
says so or when one of its calls failed, so failures travel up the graph as in emojivoto, and
`diagnose` has to walk down to where they start. A `client` workload sends the traffic to the
entry, `frontend`. Each topology lives in its own namespace, named after it.

Pure: the definitions, the demo's plan for one of them (`build_plan`, wired like emojivoto's)
and its Kubernetes manifests (`manifests`, for a cluster with the chart: the webhook injects the
proxies, iptables intercept the calls). emojivoto itself is `kubectl mesh demo`'s default; it
is the depth-1 case with a story around it.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from kubectl_mesh.contract import INJECT_ENABLED, INJECT_LABEL, SKIP_INBOUND_PORTS_ANNOTATION
from kubectl_mesh.demo.plan import (
    KIND,
    PORTS_PER_DEPLOYMENT,
    DemoPlan,
    DemoPod,
    PodPorts,
    Process,
    _flags,
    pod_name,
)

ENTRY = "frontend"  # every topology's entry point: what the client calls, what diagnose starts from
CLIENT = "client"  # the traffic source, meshed (like emojivoto's vote-bot)
APP_PORT = 8080  # in a cluster: each workload's HTTP port (its Service's too)
COUNTERS_PORT = 8801  # in a cluster: each pod's own counters, kept out of the mesh (as emojivoto's)


@dataclass(frozen=True)
class Workload:
    name: str
    calls: tuple[str, ...] = ()  # called in this order on every request it serves
    fail_every: int = 0  # fails its own every n-th request (0: never)


@dataclass(frozen=True)
class Topology:
    name: str  # also the namespace it runs in
    summary: str  # one line for --help
    workloads: tuple[Workload, ...]

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.workloads)

    def start_order(self) -> tuple[str, ...]:
        """Callees before their callers where the graph allows (a cycle starts in any order)."""
        order: list[str] = []
        for _ in self.workloads:
            for w in self.workloads:
                if w.name not in order and all(c in order or c == w.name for c in w.calls):
                    order.append(w.name)
        return (*order, *(n for n in self.names if n not in order))

    def path_to(self, name: str) -> tuple[str, ...]:
        """The shortest chain of calls from ENTRY to `name` (ENTRY itself left out)."""
        came_from: dict[str, str] = {}
        queue = deque([ENTRY])
        while queue:
            here = queue.popleft()
            if here == name:
                path = [here]
                while path[-1] in came_from:
                    path.append(came_from[path[-1]])
                return tuple(reversed(path[:-1]))
            for callee in self.workload(here).calls:
                if callee not in came_from and callee != ENTRY:
                    came_from[callee] = here
                    queue.append(callee)
        raise ValueError(f"{name} is not reachable from {ENTRY} in {self.name}")


def _topology(name: str, summary: str, *workloads: Workload) -> Topology:
    topology = Topology(name, summary, workloads)
    names = topology.names
    assert ENTRY in names and CLIENT not in names and len(set(names)) == len(names), name
    assert all(c in names for w in workloads for c in w.calls), name
    return topology


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        _topology(
            "depth1",
            "frontend calls catalog and ratings; ratings fails a quarter of its requests",
            Workload(ENTRY, ("catalog", "ratings")),
            Workload("catalog"),
            Workload("ratings", fail_every=4),
        ),
        _topology(
            "depth3",
            "the failure three calls deep, through healthy middles: frontend → api → orders → payments",
            Workload(ENTRY, ("api", "static")),
            Workload("api", ("orders", "auth")),
            Workload("orders", ("payments",)),
            Workload("payments", fail_every=4),
            Workload("static"),
            Workload("auth"),
        ),
        _topology(
            "two-leaves",
            "two failing leaves: search, and inventory behind a healthy cart",
            Workload(ENTRY, ("search", "cart")),
            Workload("search", fail_every=5),
            Workload("cart", ("inventory",)),
            Workload("inventory", fail_every=4),
        ),
        _topology(
            "cycle",
            "a cycle: frontend → gateway → ledger → gateway …; ledger fails on its own",
            Workload(ENTRY, ("gateway",)),
            Workload("gateway", ("ledger",)),
            Workload("ledger", ("gateway",), fail_every=4),
        ),
        _topology(
            "healthy",
            "nothing fails: frontend → backend",
            Workload(ENTRY, ("backend",)),
            Workload("backend"),
        ),
    )
}


# --- the demo: one loopback "pod" per workload, as emojivoto's -------------------------------


def ports_needed(topology: Topology) -> int:
    return PORTS_PER_DEPLOYMENT * (len(topology.workloads) + 1) + 1  # + the client, + Prometheus


def build_plan(
    topology: Topology,
    ports: list[int],
    workdir: str,
    *,
    python: str = sys.executable,
    request_rate: float = 1.0,
    run_marker: str = "",
) -> DemoPlan:
    """Every process of the demo for `topology`, wired to `ports`; the client's pod comes last."""
    if len(ports) != ports_needed(topology) or len(set(ports)) != len(ports):
        raise ValueError(f"need {ports_needed(topology)} distinct ports, got {len(set(ports))}")
    order = (*topology.start_order(), CLIENT)
    per = {
        name: PodPorts(*ports[i * PORTS_PER_DEPLOYMENT : (i + 1) * PORTS_PER_DEPLOYMENT])
        for i, name in enumerate(order)
    }
    base_env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "MESH_DEMO_RUN": run_marker}
    pods: list[DemoPod] = []
    for name in order:
        p = per[name]
        name_of_pod = pod_name(name)
        calls = (ENTRY,) if name == CLIENT else topology.workload(name).calls
        app_env = {
            **base_env,
            "BIND": "127.0.0.1",
            "PORT": str(p.app),
            "COUNTERS_PORT": str(p.counters),
            # Explicit mode: calls go through the app's own proxy to the callee's proxy.
            "CALLS": ",".join(f"{c}=127.0.0.1:{per[c].inbound}" for c in calls),
            "http_proxy": f"http://127.0.0.1:{p.outbound}",
            "no_proxy": "",
        }
        if name == CLIENT:
            app_env["REQUEST_RATE"] = f"{request_rate:g}"
        else:
            app_env["FAIL_EVERY"] = str(topology.workload(name).fail_every)
        app = Process(
            name=name,
            argv=(python, "-m", "kubectl_mesh.demo.topoapp", CLIENT if name == CLIENT else "serve"),
            env=app_env,
            ready_url=f"http://127.0.0.1:{p.counters}/healthz",
        )
        # The client serves nothing: its proxy's inbound side forwards to its counters port.
        forward = p.counters if name == CLIENT else p.app
        proxy = Process(
            name=f"{name}'s proxy",
            argv=(python, "-m", "proxy", "run", *_flags(
                inbound_addr="127.0.0.1", inbound_port=p.inbound, inbound_forward=f"127.0.0.1:{forward}",
                outbound_port=p.outbound, admin_addr="127.0.0.1", admin_port=p.admin, tap_port=p.tap,
                namespace=topology.name, workload_kind=KIND, workload_name=name, pod=name_of_pod,
                log_level="warning", shutdown_grace=1,
            )),
            env=dict(base_env),
            ready_url=f"http://127.0.0.1:{p.admin}/ready",
        )  # fmt: skip
        pods.append(DemoPod(name, name_of_pod, p, app, proxy))
    return DemoPlan(tuple(pods), ports[-1], workdir, namespace=topology.name)


# --- a cluster: Deployments and Services, injected by the chart's webhook --------------------


def manifests(
    topology: Topology, *, request_rate: float = 2.0, image: str = "python:3.11"
) -> list[dict[str, Any]]:
    """The topology as Kubernetes objects in namespace `topology.name` (labelled for injection).

    Every container has an explicit command (`python3 -m kubectl_mesh.demo.topoapp`), as
    examples/emojivoto/emojivoto.yml; callees are reached by their Service's name, so the proxy
    intercepts the calls (transparent mode). The counters port is skipped by the proxy, so that
    reading the truth does not change it.
    """
    ns = topology.name
    namespace = {"name": ns, "labels": {INJECT_LABEL: INJECT_ENABLED}}
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": namespace}]
    for name in (*topology.names, CLIENT):
        calls = (ENTRY,) if name == CLIENT else topology.workload(name).calls
        env = {"PORT": str(APP_PORT), "COUNTERS_PORT": str(COUNTERS_PORT), "PYTHONDONTWRITEBYTECODE": "1",
               "CALLS": ",".join(f"{c}={c}:{APP_PORT}" for c in calls)}  # fmt: skip
        if name == CLIENT:
            env["REQUEST_RATE"] = f"{request_rate:g}"
        else:
            env["FAIL_EVERY"] = str(topology.workload(name).fail_every)
        labels = {"app": name, "app.kubernetes.io/part-of": f"topology-{ns}"}
        container = {
            "name": "app",
            "image": image,
            "command": ["python3", "-m", "kubectl_mesh.demo.topoapp", CLIENT if name == CLIENT else "serve"],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [{"name": "http", "containerPort": APP_PORT},
                      {"name": "counters", "containerPort": COUNTERS_PORT}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": COUNTERS_PORT}, "periodSeconds": 2},
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }  # fmt: skip
        objects.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": labels,
                             "annotations": {SKIP_INBOUND_PORTS_ANNOTATION: str(COUNTERS_PORT)}},
                "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534},
                         "containers": [container]},
            }},
        })  # fmt: skip
        if name != CLIENT:
            objects.append({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app": name},
                         "ports": [{"name": "http", "port": APP_PORT, "targetPort": "http"}]},
            })  # fmt: skip
    return objects
