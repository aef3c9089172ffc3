"""`kubectl mesh demo --topology NAME`: one of kubectl_mesh.demo.topology's call graphs instead of
emojivoto, with the demo's own runner and Prometheus, ending with what `diagnose` finds.

The same Demo (runner.py) runs it: its counters sampler, its snapshot at one instant, its
`diagnose`, its live refresh and clean-up. Only what differs is here: the plan, the start order
(callees before callers, the client last) and the words around the result. It shows no stat
tables: the question a topology asks is where `diagnose` leads, from `frontend`.
"""

from __future__ import annotations

import sys
from typing import TextIO

from kubectl_mesh.demo.plan import DemoPlan
from kubectl_mesh.demo.runner import Demo, DemoError, DemoOptions, _child_env
from kubectl_mesh.demo.topology import CLIENT, ENTRY, Topology, build_plan, ports_needed
from kubectl_mesh.procs import Proc, StartError


class TopologyDemo(Demo):
    needs_what = "mesh-proxy and the topology's apps (HTTP/1.1)"
    needed_modules = ("proxy", "gevent", "httptools", "prometheus_client")
    install_command = "pip install kubectl-mesh"  # no gRPC: the package's own dependencies suffice
    counters_history = False  # topoapp's /counters are now only

    def __init__(self, topology: Topology, options: DemoOptions, out: TextIO, err: TextIO) -> None:
        super().__init__(options, out, err)
        self.topology = topology
        self.namespace = topology.name
        self.target = ENTRY
        self.diagnose_argv = (f"deploy/{ENTRY}", "-n", topology.name)
        self.client = CLIENT

    def start(self) -> DemoPlan:
        prometheus, ports = self.prerequisites(ports_needed(self.topology))
        plan = build_plan(
            self.topology,
            ports,
            str(self.workdir),
            request_rate=self.options.request_rate,
            run_marker=str(self.workdir),
        )
        self.plan = plan
        names = ", ".join(p.deployment for p in plan.pods)
        self.progress(f"starting {self.topology.name} ({names}), a mesh-proxy beside each, and Prometheus")
        env = _child_env()
        pods: dict[str, tuple[Proc, Proc]] = {}
        try:
            prom = self.start_prometheus(plan, prometheus, env)
            proxies = [
                self.supervisor.start(p.proxy.name, p.proxy.argv, {**env, **p.proxy.env}) for p in plan.pods
            ]
            for pod, proxy in zip(plan.pods, proxies, strict=True):
                self.supervisor.wait_ready(proxy, pod.proxy.ready_url, timeout=30)
            for pod, proxy in zip(plan.pods, proxies, strict=True):  # callees first, the client last
                app = self.supervisor.start(pod.app.name, pod.app.argv, {**env, **pod.app.env})
                self.supervisor.wait_ready(app, pod.app.ready_url, timeout=30)
                pods[pod.deployment] = (app, proxy)
            prom.wait_ready(timeout=30)
        except StartError as exc:
            raise DemoError(str(exc)) from None
        self.started(plan, pods)
        return plan

    def links(self, plan: DemoPlan) -> str:
        entry = plan.pod(ENTRY).ports.inbound
        return f"{ENTRY}: http://127.0.0.1:{entry}/  Prometheus: {plan.prometheus_url}/"

    def intro(self, plan: DemoPlan) -> str:
        calls = "; ".join(f"{w.name} → {', '.join(w.calls)}" for w in self.topology.workloads if w.calls)
        return (
            f"topology {self.topology.name} runs on 127.0.0.1 in namespace {self.namespace}, each workload "
            f"with a mesh-proxy: {CLIENT} → {ENTRY}; {calls}.\n{self.topology.summary}.\n{self.links(plan)}\n"
            f"the graph: kubectl mesh edges deploy -n {self.namespace} "
            f"--prometheus-url {plan.prometheus_url}\n"
        )


def run_topology_demo(
    topology: Topology, options: DemoOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    return TopologyDemo(topology, options, out, err).run()
