"""`make walkthrough`: the seed's story on the lab, with the real tools a user has.

    lab up → helm install charts/kubectl-mesh → label emojivoto for injection → kubectl apply
    → wait for pods and a full window of traffic → kubectl mesh stat ×3 (through kubectl's
    plugin discovery) → the tables; then the same with `kubectl mesh inject … | kubectl apply`.

Run as root on Linux, from the checkout: `python -m lab.walkthrough [--variant label|inject|both]`.
A lab that is already running (`make cluster`) is used and left running; otherwise the lab is
started here and torn down at the end. tests/e2e/test_walkthrough.py runs the same code and
checks the numbers against the services' own counters.

emojivoto.yml is applied as a user would, with two additions (`this_checkouts_code`): the app's
containers get PYTHONPATH to this checkout's code, as helm's post-renderer gives the chart's pods,
since the lab's node runs pods with the code its agent was started from; and the bot votes
VOTE_RATE times a second. Each stat command starts just after a scrape of web's proxy, and the
apps' counters are read at the scrapes its window holds (`run_stat_between_scrapes`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, INJECT_ENABLED, INJECT_LABEL, PROXY_CONTAINER_NAME
from kubectl_mesh.demo.plan import (
    DIAGNOSE_TARGET,
    NAMESPACE,
    WALKTHROUGH_DIAGNOSE,
    WALKTHROUGH_EDGES,
    WALKTHROUGH_STAT,
)
from kubectl_mesh.demo.truth import counters_at_scrapes, scrape_span
from kubectl_mesh.prom import SERVICE_PROXY_PATH, PrometheusClient, PrometheusError, Vector, parse_vector

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "examples" / "emojivoto" / "emojivoto.yml"
CHART = REPO / "charts" / "kubectl-mesh"
DASHBOARDS = CHART / "files" / "dashboards"
LAB_VALUES = REPO / "lab" / "chart-values.yaml"
RELEASE = "kubectl-mesh"
WINDOW_S = 60  # `kubectl mesh stat`'s default -t 1m
SCRAPE_S = 10  # the chart's scrape interval
STAT_S = 2  # what a `kubectl mesh stat` may take on the lab, busy (0.3-0.5 s measured)
COUNTERS_PORT = 8801  # emojivoto.yml: each pod's own counters, outside the mesh
DEPLOYMENTS = ("emoji", "voting", "web", "vote-bot")
# The bot's loops a second (emojivoto.yml says 1): about 200 votes between the first and last
# scrape of the 1-minute window, so that one vote is half a point of voting's success and the
# tests can hold stat to issue 13's 1 point (tests/e2e/tables.py). 8 rps into web.
VOTE_RATE = 4

# The seed's three commands, as a user types them (after `kubectl`); defined once, with the demo.
COMMANDS = tuple(("mesh", "stat", *argv) for argv in WALKTHROUGH_STAT)
# And then the mesh digs by itself: `kubectl mesh diagnose deploy/web -n emojivoto`.
DIAGNOSE = ("mesh", "diagnose", *WALKTHROUGH_DIAGNOSE)
EDGES = ("mesh", "edges", *WALKTHROUGH_EDGES)
# Every Deployment of the app: MESHED must be 1/1 for each.
ALL_DEPLOYMENTS = ("mesh", "stat", "-n", NAMESPACE, "deploy")


class WalkthroughError(RuntimeError):
    """A step failed; the message says which, with the tool's own words."""


def log(message: str) -> None:
    print(f"[walkthrough {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Tools:
    """kubectl and helm against the lab, with kubectl-mesh on PATH for plugin discovery."""

    kubeconfig: Path
    helm_bin: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        venv_bin = str(Path(sys.executable).parent)
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.env["PATH"] = f"{venv_bin}:{self.env.get('PATH', '/usr/bin:/bin')}"

    def run(
        self, argv: list[str], *, stdin: str | None = None, check: bool = True, timeout: float = 180
    ) -> str:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise WalkthroughError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 180) -> str:
        return self.run(["kubectl", *args], stdin=stdin, check=check, timeout=timeout)

    def kubectl_full(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=self.env, timeout=120)

    def helm(self, *args: str, timeout: float = 300) -> str:
        if args and args[0] in ("install", "upgrade"):  # the pods run this checkout's code
            from lab.runtime import helm_post_renderer

            args = (*args, *helm_post_renderer())
        return self.run([self.helm_bin, *args, "--kubeconfig", str(self.kubeconfig)], timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))


# --- the lab --------------------------------------------------------------------------------


@contextlib.contextmanager
def lab_session(keep: bool = False) -> Iterator[Tools]:
    """The running lab (`make cluster`, a pytest session), or one started here.

    A lab started here is stopped on exit unless `keep` or someone else joined it meanwhile.
    """
    from lab import cluster
    from lab.config import KUBECONFIG, bin_dir

    owner = "walkthrough"
    if cluster.running() is None:
        log("starting the lab (kube-apiserver, etcd, controller-manager, node agent, Prometheus)…")
    t0 = time.monotonic()
    state = cluster.up(owner=owner, user=os.getpid())
    log(f"lab ready in {time.monotonic() - t0:.1f}s: {state.api_url}")
    try:
        yield tools_for(KUBECONFIG, Path(state.bin_dir or bin_dir()))
    finally:
        if keep:
            log(f"leaving the lab running: KUBECONFIG={KUBECONFIG}; `make cluster-down` stops it")
        elif cluster.release(os.getpid(), owner=owner):
            log("stopped the lab")


def tools_for(kubeconfig: Path, lab_bin: Path) -> Tools:
    helm = lab_bin / "helm"
    return Tools(kubeconfig, str(helm) if os.access(helm, os.X_OK) else (shutil.which("helm") or "helm"))


# --- the steps --------------------------------------------------------------------------------


def install_chart(tools: Tools) -> bool:
    """`helm install` the control plane, as a user would; a release already there is used as is.

    Returns whether the release was installed here (so that the caller uninstalls it). The lab's
    values (lab/chart-values.yaml) leave out only Grafana, whose image has no command the
    lab could run; the dashboards' queries are checked against Prometheus instead.
    """
    installed = False
    if RELEASE not in tools.helm("list", "-q", "-n", "default").split():
        values = ["-f", str(LAB_VALUES)] if LAB_VALUES.exists() else []
        log(f"$ helm install {RELEASE} charts/kubectl-mesh {' '.join(values)}")
        try:
            tools.helm("install", RELEASE, str(CHART), *values, "--wait", "--timeout", "240s")
            installed = True
        except WalkthroughError as exc:
            if "re-use a name" not in str(exc):  # someone else installed it meanwhile: use theirs
                raise
    else:
        log(f"using the installed release {RELEASE}")
    for deployment in ("mesh-webhook", "prometheus"):
        rollout = ("rollout", "status", f"deployment/{deployment}", "--timeout=180s")
        tools.kubectl("-n", CONTROL_PLANE_NAMESPACE, *rollout, timeout=200)
    return installed


def uninstall_chart(tools: Tools) -> None:
    log(f"$ helm uninstall {RELEASE}")
    tools.helm("uninstall", RELEASE, "--wait", "--timeout", "120s")


def remove_app(tools: Tools) -> None:
    if tools.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name").strip():
        log(f"$ kubectl delete namespace {NAMESPACE}")
        tools.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=180s", timeout=200)


def this_checkouts_code(manifest: str) -> str:
    """The app's containers run this checkout's emojivoto, as the chart's pods do (helm's post-renderer):
    the lab's node runs pods with the code its agent was started from, maybe another checkout.
    And the bot votes VOTE_RATE times a second."""
    from lab.post_render import with_env, with_pythonpath
    from lab.runtime import runtime_pythonpath

    manifest = with_env(manifest, "REQUEST_RATE", f"{VOTE_RATE:g}", deployment="vote-bot")
    return with_pythonpath(manifest, str(runtime_pythonpath()))


def deploy_labelled(tools: Tools) -> None:
    """The namespace opts in; the webhook injects every pod the Deployments create."""
    remove_app(tools)
    log(f"$ kubectl create namespace {NAMESPACE}")
    tools.kubectl("create", "namespace", NAMESPACE)
    log(f"$ kubectl label namespace {NAMESPACE} {INJECT_LABEL}={INJECT_ENABLED}")
    tools.kubectl("label", "namespace", NAMESPACE, f"{INJECT_LABEL}={INJECT_ENABLED}")
    log("$ kubectl apply -f examples/emojivoto/emojivoto.yml")
    tools.kubectl("apply", "-f", "-", stdin=this_checkouts_code(MANIFEST.read_text()))


def deploy_injected(tools: Tools) -> None:
    """The seed's way: the manifest goes through `kubectl mesh inject` on its way to the cluster."""
    remove_app(tools)
    log("$ kubectl mesh inject examples/emojivoto/emojivoto.yml | kubectl apply -f -")
    injected = tools.kubectl("mesh", "inject", str(MANIFEST))
    tools.kubectl("apply", "-f", "-", stdin=this_checkouts_code(injected))


def app_pods(tools: Tools) -> list[dict[str, Any]]:
    return list(tools.json("get", "pods", "-n", NAMESPACE)["items"])


def wait_pods(tools: Tools, timeout: float = 180) -> dict[str, dict[str, Any]]:
    """Until each Deployment has exactly one Ready pod; returns deployment -> pod."""
    deadline = time.monotonic() + timeout
    while True:
        ready: dict[str, dict[str, Any]] = {}
        pods = app_pods(tools)
        for pod in pods:
            app = pod["metadata"].get("labels", {}).get("app", "")
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                ready.setdefault(app, pod)
        if set(ready) == set(DEPLOYMENTS) and len(pods) == len(DEPLOYMENTS):
            return ready
        if time.monotonic() > deadline:
            states = {p["metadata"]["name"]: p.get("status", {}).get("phase") for p in pods}
            raise WalkthroughError(f"pods not ready after {timeout:.0f}s: {states}")
        time.sleep(2)


def meshed(pod: dict[str, Any]) -> bool:
    """The pod carries the proxy (a native sidecar init container, or a plain container)."""
    spec = pod["spec"]
    names = [c["name"] for c in spec.get("containers", []) + spec.get("initContainers", [])]
    return PROXY_CONTAINER_NAME in names


class CounterHistory(threading.Thread):
    """Reads every app pod's /counters every 2 s, so a window's start can be looked up later."""

    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        super().__init__(name="counters", daemon=True)
        self.urls = {d: f"http://{p['status']['podIP']}:{COUNTERS_PORT}/counters" for d, p in pods.items()}
        self.samples: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def read(self) -> dict[str, Any]:
        at = time.time()
        services = {}
        for name, url in self.urls.items():
            with self.opener.open(url, timeout=5) as r:
                services[name] = json.load(r)
        return {"time": at, "services": services}

    def run(self) -> None:
        while not self.stopped.wait(2.0):
            with contextlib.suppress(OSError, ValueError):
                sample = self.read()
                with self.lock:
                    self.samples.append(sample)

    def nearest(self, at: float) -> dict[str, Any]:
        with self.lock:
            return min(self.samples, key=lambda s: abs(s["time"] - at))


def wait_for_traffic(tools: Tools, history: CounterHistory, timeout: float = 240) -> None:
    """Until a full stat window of the bot's traffic has been scraped, and stat shows it."""
    started = time.monotonic()
    needed = WINDOW_S + 2 * SCRAPE_S
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= needed:
            out = tools.kubectl_full(*ALL_DEPLOYMENTS, "-o", "json")
            rows = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []
            if {r["name"] for r in rows if r.get("rps")} >= {"web", "emoji", "voting"}:
                return
        if elapsed > needed + timeout:
            raise WalkthroughError(
                f"no traffic in `kubectl mesh stat` after {elapsed:.0f}s: {diagnose(tools)}"
            )
        with history.lock:
            loops = history.samples[-1]["services"]["vote-bot"].get("loops", 0) if history.samples else 0
        log(f"waiting for a {WINDOW_S}s window of traffic: {elapsed:.0f}s of {needed}s, {loops} bot loops")
        time.sleep(10)


def diagnose(tools: Tools) -> str:
    """One line on what is missing: the release, Prometheus, or stat's own complaint."""
    if RELEASE not in tools.helm("list", "-q", "-n", "default").split():
        return f"the {RELEASE} release is gone (uninstalled by someone else on this lab?)"
    available = tools.kubectl(
        "-n", CONTROL_PLANE_NAMESPACE, "get", "deployment", "prometheus", "--ignore-not-found",
        "-o", "jsonpath={.status.availableReplicas}", check=False,
    )  # fmt: skip
    if available.strip() in ("", "0"):
        return "the chart's Prometheus is not available"
    out = tools.kubectl_full(*COMMANDS[0])
    return f"`kubectl {' '.join(COMMANDS[0])}` said: {(out.stdout + out.stderr).strip()[-300:]}"


@dataclass
class Section:
    command: str
    output: str  # stdout, or the stderr line ("No traffic found.")
    at: float  # when the command ran (the end of its window)
    # The apps' counters at the first and last scrape of web's proxy in the command's window
    # (kubectl_mesh.demo.truth): the calls its rows counted. Only for the three stat tables.
    at_scrapes: dict[str, Any] | None = None


def run_stat(tools: Tools, args: tuple[str, ...]) -> Section:
    at = time.time()
    done = tools.kubectl_full(*args)
    if done.returncode != 0:
        raise WalkthroughError(f"`kubectl {' '.join(args)}` failed: {done.stderr.strip()}")
    return Section("kubectl " + " ".join(args), (done.stdout or done.stderr).rstrip("\n"), at)


def prometheus_client(tools: Tools) -> PrometheusClient:
    """The one Prometheus client of kubectl_mesh, through the API server's service proxy."""
    from kubectl_mesh.kube import KubeOptions, connect

    return PrometheusClient(kube=connect(KubeOptions(kubeconfig=str(tools.kubeconfig))))


def run_stat_between_scrapes(
    tools: Tools, args: tuple[str, ...], prom: PrometheusClient, pods: dict[str, dict[str, Any]]
) -> Section:
    """`kubectl mesh stat`, run where no scrape of web's proxy falls while it runs, so that the
    window it evaluated holds known samples; then the apps' counters at their instants.

    stat asks Prometheus at its own "now", somewhere between the command's start and end: when
    web's proxy's samples in the window are the same at both, they are the ones stat used.
    Prometheus scrapes every SCRAPE_S, so the command starts when the next scrape is more than
    STAT_S away (else just after it), and is run again, at most twice, if one came meanwhile."""
    pod = pods[DIAGNOSE_TARGET]["metadata"]["name"]  # every row of the three tables is its proxy's
    urls = {d: f"http://{p['status']['podIP']}:{COUNTERS_PORT}/counters" for d, p in pods.items()}
    window = f"{WINDOW_S}s"
    for _ in range(3):
        _, last = scrape_span(prom, NAMESPACE, pod, window, time.time())
        if last + SCRAPE_S - time.time() < STAT_S:  # the next scrape is near: start just after it
            time.sleep(max(0.0, last + SCRAPE_S + 0.5 - time.time()))
        section = run_stat(tools, args)
        after = time.time()
        log(f"`kubectl {' '.join(args[:3])} …` took {after - section.at:.1f}s")
        before = scrape_span(prom, NAMESPACE, pod, window, section.at)
        if scrape_span(prom, NAMESPACE, pod, window, after) == before:
            section.at_scrapes = counters_at_scrapes(prom, urls, NAMESPACE, pod, window, after)
            return section
        log(f"a scrape of {pod} came while `kubectl {' '.join(args)}` ran: once more")
    raise WalkthroughError(
        f"`kubectl {' '.join(args)}` took longer than the {SCRAPE_S}s between scrapes, 3 times"
    )


GRPC_SERVER = "voting"  # web serves HTTP/1.1 and calls gRPC; voting serves gRPC (and fails some)


def dashboard_queries(pods: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) of every dashboard panel, variables set to web's values, but
    for the panels of a gRPC server's inbound side (by `grpc_status`), set to voting's: web
    serves HTTP/1.1, so those are rightly empty for web.

    Panels that look only at traffic from other namespaces (`src_namespace!="$namespace"`) are
    left out: in this app no traffic crosses namespaces, so they are rightly empty.
    """

    def values_for(deployment: str) -> dict[str, str]:
        return {
            "$namespace": NAMESPACE,
            "$deployment": deployment,
            "$pod": pods[deployment]["metadata"]["name"],
            "$__rate_interval": "1m",
            "$__interval": "10s",
            "$__range": "5m",
        }

    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board.get("panels", []))
        for panel in list(panels):
            panels.extend(panel.get("panels", []))  # rows hold panels too
        for panel in panels:
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if not expr or 'src_namespace!="$namespace"' in expr:
                    continue
                grpc_server_side = "grpc_status" in expr and 'direction="inbound"' in expr
                values = values_for(GRPC_SERVER if grpc_server_side else "web")
                for var in sorted(values, key=len, reverse=True):
                    expr = expr.replace(var, values[var])
                queries.append((board.get("title", path.stem), panel.get("title", ""), expr))
    return queries


def dashboard_variables(pods: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(dashboard, variable, PromQL, label, value it must offer) for each `label_values(...)`
    template variable: Grafana's drop-downs must offer emojivoto, web and web's pod."""
    import re

    wanted = {"namespace": NAMESPACE, "deployment": "web", "pod": pods["web"]["metadata"]["name"]}
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text, re.S)
            if not match or match.group(2) not in wanted:
                continue
            expr = match.group(1).replace("$namespace", NAMESPACE)
            found.append((board.get("title", path.stem), var.get("name", ""), expr, match.group(2),
                          wanted[match.group(2)]))  # fmt: skip
    return found


def prometheus_query(tools: Tools, promql: str) -> Vector:
    """An instant query to the chart's Prometheus, through the API server's service proxy (by the
    real kubectl), read by the mesh's one parser of Prometheus answers."""
    from urllib.parse import quote

    path = f"{SERVICE_PROXY_PATH}/api/v1/query?query={quote(promql)}"
    try:
        return parse_vector(tools.kubectl("get", "--raw", path).encode(), "the chart's Prometheus")
    except PrometheusError as exc:
        raise WalkthroughError(f"Prometheus: {exc.message}") from None


@dataclass
class Result:
    variant: str
    sections: list[Section]
    all_deployments: list[dict[str, Any]]  # `kubectl mesh stat -n emojivoto deploy -o json`
    pods: dict[str, dict[str, Any]]
    dashboards: list[tuple[str, str, str, list[dict[str, str]]]]  # board, panel, query, its series' labels
    variables: list[tuple[str, str, bool]]  # board, template variable, offers web's value
    diagnosis: Section  # `kubectl mesh diagnose deploy/web -n emojivoto`, at the same moment
    diagnosis_json: dict[str, Any]  # the same with -o json
    edges: Section  # `kubectl mesh edges deploy -n emojivoto`
    edges_json: list[dict[str, Any]]  # the same with -o json

    def render_tables(self) -> str:
        return "\n\n".join(f"$ {s.command}\n{s.output}" for s in self.sections) + "\n"

    def render(self) -> str:
        return (
            f"{self.render_tables()}\n$ {self.diagnosis.command}\n{self.diagnosis.output}\n"
            f"\n$ {self.edges.command}\n{self.edges.output}\n"
        )


def run_variant(tools: Tools, variant: str) -> Result:
    log(f"--- variant: {variant}")
    (deploy_labelled if variant == "label" else deploy_injected)(tools)
    pods = wait_pods(tools)
    log("pods ready: " + ", ".join(p["metadata"]["name"] for p in pods.values()))
    history = CounterHistory(pods)
    history.start()
    try:
        wait_for_traffic(tools, history)
        prom = prometheus_client(tools)
        sections = [run_stat_between_scrapes(tools, c, prom, pods) for c in COMMANDS]
        diagnosis = run_stat(tools, DIAGNOSE)
        diagnosis_json = json.loads(tools.kubectl_full(*DIAGNOSE, "-o", "json").stdout or "{}")
        edges = run_stat(tools, EDGES)
        edges_json = json.loads(tools.kubectl_full(*EDGES, "-o", "json").stdout or "[]")
        listing = json.loads(tools.kubectl_full(*ALL_DEPLOYMENTS, "-o", "json").stdout or "[]")
    finally:
        history.stopped.set()
    boards = [
        (b, p, q, [labels for labels, _ in prometheus_query(tools, q)]) for b, p, q in dashboard_queries(pods)
    ]
    variables = [
        (b, name, value in {labels.get(label) for labels, _ in prometheus_query(tools, expr)})
        for b, name, expr, label, value in dashboard_variables(pods)
    ]
    return Result(
        variant,
        sections,
        listing,
        pods,
        boards,
        variables,
        diagnosis,
        diagnosis_json,
        edges,
        edges_json,
    )


def walkthrough(tools: Tools, variants: tuple[str, ...], keep: bool = False) -> list[Result]:
    """The whole story, per variant; the app and a chart installed here are removed unless `keep`."""
    installed = install_chart(tools)
    try:
        return [run_variant(tools, v) for v in variants]
    finally:
        if not keep:
            try:
                remove_app(tools)
                if installed:
                    uninstall_chart(tools)
            except WalkthroughError as exc:  # never hide the error that brought us here
                log(f"clean-up failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make walkthrough", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=("label", "inject", "both"), default="both")
    parser.add_argument("--keep", action="store_true", help="leave the lab and the app running")
    parser.add_argument("--json", metavar="FILE", help="also write the results (tables, counters) as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        print("walkthrough: needs root on Linux (the lab runs pods in network namespaces)", file=sys.stderr)
        return 1
    variants = ("label", "inject") if args.variant == "both" else (args.variant,)
    t0 = time.monotonic()
    try:
        with lab_session(keep=args.keep) as tools:
            results = walkthrough(tools, variants, keep=args.keep)
    except WalkthroughError as exc:
        print(f"walkthrough: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the lab's own errors (LabError) and tool failures: one line
        print(f"walkthrough: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for result in results:
        how = "labelled namespace" if result.variant == "label" else "kubectl mesh inject"
        print(f"# emojivoto meshed by {how}\n")
        print(result.render())
        empty = [f"{b} / {p}" for b, p, _, series in result.dashboards if not series]
        summary = (
            f"{len(result.dashboards) - len(empty)} of {len(result.dashboards)} queries return data for web "
            f"({GRPC_SERVER} for a gRPC server's panels)"
        )
        print(f"# Grafana dashboards: {summary}" + (f"; empty: {', '.join(empty)}" if empty else ""))
        offered = sum(ok for _, _, ok in result.variables)
        print(f"# their drop-downs offer emojivoto, web and its pod: {offered} of {len(result.variables)}\n")
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    log(f"done in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
