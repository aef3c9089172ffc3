"""`kubectl mesh demo`: start the plan, wait for traffic, print the walkthrough's three tables.

The tables come from the real `stat` code (kubectl_mesh.stat: planner, compute_stat, renderer)
querying the demo's real Prometheus; only the workloads lister differs from the CLI's: MESHED is
read from the demo's own process table instead of the Kubernetes API. Everything started is
stopped on exit, on Ctrl-C, SIGTERM/SIGHUP, or an error, and the work directory is removed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kubectl_mesh.demo.plan import (
    DEPLOYMENTS,
    DIAGNOSE_TARGET,
    KIND,
    NAMESPACE,
    PORTS_NEEDED,
    SCRAPE_INTERVAL_S,
    SERVERS,
    WALKTHROUGH_DIAGNOSE,
    WINDOW,
    DemoPlan,
    Walkthrough,
    build_plan,
    prometheus_config,
)
from kubectl_mesh.demo.ports import PortsInUse, ports_from
from kubectl_mesh.demo.prometheus import INSTALL_HINT, find_prometheus
from kubectl_mesh.demo.state import DemoState, remove_state, write_state
from kubectl_mesh.demo.truth import counters_at_scrapes, scrape_span
from kubectl_mesh.errors import MeshError
from kubectl_mesh.graph.diagnose import Diagnosis, diagnose
from kubectl_mesh.graph.edges import EdgesRequest, compute_edges
from kubectl_mesh.graph.render import render_diagnosis
from kubectl_mesh.procs import Proc, Prometheus, StartError, Supervisor, free_ports, start_prometheus
from kubectl_mesh.prom import PrometheusClient, PrometheusError
from kubectl_mesh.stat import StatRequest, StatRow, Workload, compute_stat, render
from kubectl_mesh.stat.model import duration_seconds


class DemoError(MeshError):
    """The demo cannot go on; the message is for the user (the first line is the summary)."""


@dataclass(frozen=True)
class DemoOptions:
    walkthrough: tuple[Walkthrough, ...]  # the stat commands to show (commands/demo.py parses them)
    once: bool = False
    base_port: int | None = None
    prometheus: str | None = None
    request_rate: float = 1.0
    failure_share: float = 0.15
    refresh_seconds: float = 2.0
    traffic_timeout: float = 90.0
    record: str | None = None  # write tables + the services' own counters here (JSON)


@dataclass
class Snapshot:
    """The three tables at one instant, and the services' own counters around that window."""

    at: float
    tables: list[tuple[Walkthrough, list[StatRow]]]
    counters_start: dict[str, Any] | None
    counters_end: dict[str, Any]
    diagnosis: Diagnosis | None = None  # `kubectl mesh diagnose deploy/web` at the same instant
    # With --record: the apps' counters at the first and last scrape of the target's proxy in the
    # window (kubectl_mesh.demo.truth), the calls the tables counted
    at_scrapes: dict[str, Any] | None = None

    def complete(self) -> bool:
        """Every table shows traffic: the moment the walkthrough's story can be told."""
        return all(any(r.rps is not None for r in rows) for _, rows in self.tables)


class CounterSampler(threading.Thread):
    """Reads every service's /counters once a second, keeping a short history with timestamps."""

    def __init__(self, plan: DemoPlan, keep_seconds: float) -> None:
        super().__init__(name="counters", daemon=True)
        self.urls = {p.deployment: f"http://127.0.0.1:{p.ports.counters}/counters" for p in plan.pods}
        self.keep_seconds = keep_seconds
        self.history: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def read(self) -> tuple[float, dict[str, Any]]:
        at = time.time()
        counters: dict[str, Any] = {}
        for name, url in self.urls.items():
            with contextlib.suppress(OSError, ValueError), self._opener.open(url, timeout=2) as r:
                counters[name] = json.load(r)
        return at, counters

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            sample = self.read()
            with self.lock:
                self.history.append(sample)
                self.history = [s for s in self.history if s[0] > sample[0] - self.keep_seconds]

    def nearest(self, at: float) -> dict[str, Any] | None:
        with self.lock:
            if not self.history:
                return None
            t, counters = min(self.history, key=lambda s: abs(s[0] - at))
        return {"time": t, "services": counters}


class Demo:
    # What the demo runs, and the modules that needs (checked up front: one line, not a traceback).
    needs_what = "mesh-proxy and emojivoto (gRPC)"
    needed_modules: tuple[str, ...] = (
        "proxy", "gevent", "httptools", "prometheus_client", "h2", "grpc", "google.protobuf",
    )  # fmt: skip
    # What installs them: grpcio and protobuf are the `demo` extra, not the package's own
    # dependencies (the proxy and webhook images leave them out); the rest come with the package.
    install_command = "pip install 'kubectl-mesh[demo]'"
    counters_history = True  # the apps answer /counters?at= (emojivoto does; a topology's app not)

    def __init__(self, options: DemoOptions, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.workdir = Path(tempfile.mkdtemp(prefix="kubectl-mesh-demo-"))
        self.supervisor = Supervisor(self.workdir)
        self.window = WINDOW
        self.window_s = duration_seconds(WINDOW)
        self.commands = options.walkthrough
        self.plan: DemoPlan | None = None
        # What the tables are about; a topology's demo (demo/topology_runner.py) sets its own.
        self.namespace = NAMESPACE
        self.target = DIAGNOSE_TARGET  # the entry point `diagnose` starts from
        self.diagnose_argv: tuple[str, ...] = WALKTHROUGH_DIAGNOSE
        self.client = "vote-bot"  # the traffic source, whose `loops` counter shows progress
        self.pods: dict[str, tuple[Proc, Proc]] = {}  # deployment -> (app, proxy)
        self.sampler: CounterSampler | None = None
        self._cleaned = False
        self._progress_shown = False  # a progress line is on the terminal, to be erased
        self._last_line = 0.0  # when the last progress line went to a non-terminal

    # --- lifecycle ------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        # A second Ctrl-C must not cut the clean-up short (children would outlive the demo).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread (atexit from elsewhere)
                signal.signal(signum, signal.SIG_IGN)
        if self.sampler is not None:
            self.sampler.stopped.set()
        remove_state(os.getpid())
        self.supervisor.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> int:
        atexit.register(self.cleanup)

        def on_signal(signum: int) -> None:
            raise KeyboardInterrupt(signal.Signals(signum).name)

        install_signal_handlers(on_signal)
        try:
            plan = self.start()
            snapshot = self.wait_for_traffic(plan)
            self.print_once(snapshot)
            if self.options.once:
                return 0
            return self.live(plan)
        except KeyboardInterrupt:
            self.clear_progress()
            print("stopping the demo…", file=self.err)
            return 0 if not self.options.once else 130
        finally:
            self.cleanup()

    # --- start ----------------------------------------------------------------------------

    def start(self) -> DemoPlan:
        prometheus, ports = self.prerequisites(PORTS_NEEDED)
        plan = build_plan(
            ports,
            str(self.workdir),
            request_rate=self.options.request_rate,
            failure_share=self.options.failure_share,
            run_marker=str(self.workdir),
        )
        self.plan = plan
        self.progress(
            f"starting emojivoto ({', '.join(DEPLOYMENTS)}), a mesh-proxy beside each, and Prometheus"
        )
        env = _child_env()
        try:
            prom = self.start_prometheus(plan, prometheus, env)
            proxies = {p.deployment: self.supervisor.start(p.proxy.name, p.proxy.argv, {**env, **p.proxy.env})
                       for p in plan.pods}  # fmt: skip
            for pod in plan.pods:
                self.supervisor.wait_ready(proxies[pod.deployment], pod.proxy.ready_url, timeout=30)
            # The servers first (DEPLOYMENTS order); the bot once they all answer.
            servers = [pod for pod in plan.pods if pod.deployment in SERVERS]
            apps: dict[str, Proc] = {
                pod.deployment: self.supervisor.start(pod.app.name, pod.app.argv, {**env, **pod.app.env})
                for pod in servers
            }
            for pod in servers:
                self.supervisor.wait_ready(apps[pod.deployment], pod.app.ready_url, timeout=30)
            bot = plan.pod("vote-bot")
            apps["vote-bot"] = self.supervisor.start(bot.app.name, bot.app.argv, {**env, **bot.app.env})
            self.supervisor.wait_ready(apps["vote-bot"], bot.app.ready_url, timeout=30)
            prom.wait_ready(timeout=30)
        except StartError as exc:
            raise DemoError(str(exc)) from None
        self.started(plan, {d: (apps[d], proxies[d]) for d in DEPLOYMENTS})
        return plan

    def prerequisites(self, ports_needed: int) -> tuple[str, list[int]]:
        """The Prometheus binary and the ports, or a DemoError saying what is missing."""
        missing = [m for m in self.needed_modules if not _importable(m)]
        if missing:
            raise DemoError(  # one line: what is missing and the command that installs it
                f"the demo runs {self.needs_what}, which need the Python modules {', '.join(missing)}, "
                f"not installed here; install them: {self.install_command}"
            )
        prometheus = find_prometheus(self.options.prometheus)
        if prometheus is None:
            what = self.options.prometheus or "prometheus"
            raise DemoError(f"{what} not found: the demo needs a real Prometheus; install it: {INSTALL_HINT}")
        try:
            if self.options.base_port is not None:
                ports = ports_from(self.options.base_port, ports_needed)
            else:
                ports = free_ports(ports_needed)
        except PortsInUse as exc:
            raise DemoError(str(exc)) from None
        return prometheus, ports

    def start_prometheus(self, plan: DemoPlan, binary: str, env: dict[str, str]) -> Prometheus:
        """Prometheus, started beside the others (the caller waits for it last)."""
        return start_prometheus(
            prometheus_config(plan),
            self.workdir,
            binary=binary,
            port=plan.prometheus_port,
            flags=("--storage.tsdb.retention.time=1h",),
            env={**env, "MESH_DEMO_RUN": str(self.workdir)},
            supervisor=self.supervisor,
            wait=None,
        )

    def started(self, plan: DemoPlan, pods: dict[str, tuple[Proc, Proc]]) -> None:
        """Everything runs: tell `tap --demo` where, and start reading the apps' counters."""
        self.pods = pods
        write_state(
            DemoState(os.getpid(), self.namespace, {p.deployment: (p.pod, p.ports.tap) for p in plan.pods})
        )
        self.sampler = CounterSampler(plan, keep_seconds=self.window_s * 3)
        self.sampler.start()

    # --- the tables -----------------------------------------------------------------------

    def workloads(self, request: StatRequest) -> list[Workload]:
        """MESHED from the process table: a pod runs while its app runs, and is meshed while its
        proxy runs too. The demo has one pod per Deployment, in one namespace."""
        if request.kind not in (KIND, "pod", "namespace"):
            return []
        listed: list[Workload] = []
        for deployment, (app, proxy) in self.pods.items():
            running = int(app.alive())
            meshed = int(running and proxy.alive())
            name = deployment if request.kind == KIND else self._pod_name(deployment)
            listed.append(Workload(self.namespace, request.kind, name, meshed, running))
        if request.kind == "namespace":
            return [
                Workload(
                    self.namespace,
                    "namespace",
                    self.namespace,
                    sum(w.meshed for w in listed),
                    sum(w.running for w in listed),
                )
            ]
        return listed

    def _pod_name(self, deployment: str) -> str:
        assert self.plan is not None
        return self.plan.pod(deployment).pod

    def between_scrapes(self, client: PrometheusClient) -> float:
        """Half a scrape interval after the last scrape of the target's proxy (just past, or soon), so
        that the window's two edges fall halfway between its samples. Prometheus extrapolates
        increase() to an edge only when a sample lies within 1.1 intervals of it (else by half an
        interval): an edge a hair before a scrape that came late (a busy machine) counted about
        1.2 s of 20 too few, the table's RPS 6-8 % low. Without a scrape to go by: now."""
        now = time.time()
        with contextlib.suppress(PrometheusError, ValueError):
            last = scrape_span(client, self.namespace, self._pod_name(self.target), "10s", now)[1]
            at = last + SCRAPE_INTERVAL_S / 2  # past or at most half an interval ahead
            if now - SCRAPE_INTERVAL_S <= last <= now:
                time.sleep(max(0.0, at - now))
                return at
        return now

    def snapshot(self, plan: DemoPlan) -> Snapshot:
        client = PrometheusClient(url=plan.prometheus_url, timeout=10.0)
        at = self.between_scrapes(client)
        assert self.sampler is not None
        _, end = self.sampler.read()
        tables: list[tuple[Walkthrough, list[StatRow]]] = []

        def query(promql: str) -> list[tuple[dict[str, str], float]]:
            return client.query(promql, at=at)  # one instant for every table

        try:
            for w in self.commands:
                tables.append((w, compute_stat(w.request, query, self.workloads)))
            diagnosis = self.diagnose(query)
        except PrometheusError as exc:
            raise DemoError(exc.message, exc.hint) from None
        snap = Snapshot(
            at, tables, self.sampler.nearest(at - self.window_s), {"time": at, "services": end}, diagnosis
        )
        if self.options.record and self.counters_history:
            pod = self._pod_name(self.target)  # every table's row is counted by its proxy
            with contextlib.suppress(OSError, ValueError, PrometheusError):  # the record goes without
                snap.at_scrapes = counters_at_scrapes(client, self.sampler.urls, self.namespace, pod,
                                                      self.window, at)  # fmt: skip
        if self.options.record:
            self.record(plan, snap)
        return snap

    def diagnose(self, query: Callable[[str], list[tuple[dict[str, str], float]]]) -> Diagnosis:
        """What `kubectl mesh diagnose` says about the entry point (the walkthrough's: `web`)."""
        target = StatRequest(kind=KIND, names=(self.target,), namespace=self.namespace, window=self.window)
        rows = compute_stat(target, query, self.workloads)
        edges = compute_edges(EdgesRequest(kind=KIND, all_namespaces=True, window=self.window), query)
        return diagnose(KIND, (self.namespace, self.target), rows[0] if rows else None, edges)

    def render(self, snapshot: Snapshot) -> str:
        parts = []
        for w, rows in snapshot.tables:
            parts.append(f"$ {w.command}\n{render(rows, w.request) or 'No traffic found.'}")
        if snapshot.diagnosis is not None:
            command = " ".join(("kubectl mesh diagnose", *self.diagnose_argv, "-t", self.window))
            parts.append(f"$ {command}\n{render_diagnosis(snapshot.diagnosis, self.window)}")
        return "\n\n".join(parts) + "\n"

    def record(self, plan: DemoPlan, snap: Snapshot) -> None:
        assert self.options.record is not None
        payload = {
            "workdir": str(self.workdir),
            "time": snap.at,
            "window_seconds": self.window_s,
            "scrape_interval_seconds": SCRAPE_INTERVAL_S,
            "prometheus_url": plan.prometheus_url,
            "pods": {p.deployment: p.pod for p in plan.pods},
            "tables": [
                {"command": w.command, "rows": [r.to_dict() for r in rows]} for w, rows in snap.tables
            ],
            "diagnosis": snap.diagnosis.to_dict() if snap.diagnosis is not None else None,
            "counters": {
                "start": snap.counters_start,
                "end": snap.counters_end,
                "at_scrapes": snap.at_scrapes,
            },
        }
        Path(self.options.record).write_text(json.dumps(payload, indent=2) + "\n")

    # --- waiting and showing --------------------------------------------------------------

    def check_children(self) -> None:
        dead = self.supervisor.first_dead()
        if dead is not None:
            raise DemoError(f"{dead.name} exited with code {dead.popen.returncode}:\n{dead.log_tail()}")

    def wait_for_traffic(self, plan: DemoPlan) -> Snapshot:
        """Until the window holds only steady traffic and every table shows it."""
        started = time.monotonic()
        # The first scrape sees each series mid-stream; a full window after it, rates are honest.
        needed = self.window_s + 2 * SCRAPE_INTERVAL_S
        while True:
            self.check_children()
            elapsed = time.monotonic() - started
            if elapsed >= needed:
                snap = self.snapshot(plan)
                if snap.complete():
                    self.clear_progress()
                    return snap
            if elapsed > needed + self.options.traffic_timeout:
                raise DemoError(
                    f"no traffic through the mesh after {elapsed:.0f}s; the proxies' logs said:\n"
                    + "\n".join(f"  {c.name}:\n{c.log_tail(3)}" for _, c in self.pods.values())
                )
            loops = self._bot_loops()
            self.progress(
                f"waiting for traffic to fill the {self.window} window: {min(elapsed, needed):.0f}s of "
                f"{needed:.0f}s, {self.client}: {loops} loops",
                fraction=min(1.0, elapsed / needed),
            )
            time.sleep(0.5 if self.err.isatty() else 1.0)

    def _bot_loops(self) -> int:
        if self.sampler is None:
            return 0
        with self.sampler.lock:
            last = self.sampler.history[-1][1] if self.sampler.history else {}
        return int(last.get(self.client, {}).get("loops", 0))

    def links(self, plan: DemoPlan) -> str:
        """Where to look from a browser."""
        web = plan.pod("web").ports.inbound
        return f"web page: http://127.0.0.1:{web}/  Prometheus: {plan.prometheus_url}/"

    def intro(self, plan: DemoPlan) -> str:
        return (
            f"emojivoto runs on 127.0.0.1, each service with a mesh-proxy; Prometheus scrapes them every "
            f"{SCRAPE_INTERVAL_S}s (stat window {self.window}; in a cluster: 10s and -t 1m).\n"
            f"{self.links(plan)}\n"
            "live requests, in another terminal: kubectl mesh tap deploy/web --demo (or top)\n"
        )

    def print_once(self, snapshot: Snapshot) -> None:
        assert self.plan is not None
        print(self.intro(self.plan), file=self.err)
        self.out.write(self.render(snapshot))
        self.out.flush()

    def live(self, plan: DemoPlan) -> int:
        tty = self.out.isatty()
        every = f"{self.options.refresh_seconds:g}s"
        print(f"refreshing every {every}; Ctrl-C stops the demo and everything it started.", file=self.err)
        while True:
            time.sleep(self.options.refresh_seconds)
            self.check_children()
            snap = self.snapshot(plan)
            stamp = time.strftime("%H:%M:%S", time.localtime(snap.at))
            text = self.render(snap)
            if tty:
                self.out.write(
                    f"\x1b[H\x1b[2Jkubectl mesh demo, {stamp} (window {self.window}; Ctrl-C to stop)\n"
                    f"{self.links(plan)}\n\n{text}"
                )
            else:
                self.out.write(f"--- {stamp}\n{text}\n")
            self.out.flush()

    # --- progress on stderr -----------------------------------------------------------------

    def progress(self, message: str, fraction: float | None = None) -> None:
        if self.err.isatty():
            bar = ""
            if fraction is not None:
                filled = round(fraction * 20)
                bar = "[" + "#" * filled + "." * (20 - filled) + "] "
            self.err.write(f"\r\x1b[K{bar}{message}")
            self._progress_shown = True
        else:
            now = time.monotonic()
            if now - self._last_line >= 5.0 or fraction is None:
                self.err.write(message + "\n")
                self._last_line = now
        self.err.flush()

    def clear_progress(self) -> None:
        if self._progress_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._progress_shown = False


def install_signal_handlers(on_signal: Callable[[int], None]) -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP all end the demo the same way.

    SIGINT is set explicitly: a shell starts background jobs with SIGINT ignored, and Python then
    keeps ignoring it, so `kill -INT` would otherwise leave the demo running.
    """

    def handler(signum: int, _frame: object) -> None:
        on_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _child_env() -> dict[str, str]:
    """The demo's own environment, without proxy settings that would bend the children's traffic."""
    import os

    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    # The children import this very package: make sure they find the same copy as the demo.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_demo(options: DemoOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    return Demo(options, out, err).run()
