"""`kubectl mesh edges` and `diagnose`: the pure walk on hand-made graphs, then the real thing on
loopback (real proxies, a real Prometheus, the real CLI) over the topologies of issue #14 (the
demo's, kubectl_mesh.demo.topology), checked against what each app counted itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kubectl_mesh.demo.topology import ENTRY, TOPOLOGIES
from kubectl_mesh.graph.diagnose import Diagnosis, diagnose
from kubectl_mesh.graph.edges import (
    UNMESHED,
    Edge,
    EdgesRequest,
    compute_edges,
    edges_from_results,
    plan_edges,
)
from kubectl_mesh.graph.render import render_diagnosis, render_dot, render_edges
from kubectl_mesh.prom import PrometheusClient
from kubectl_mesh.stat import StatRequest, StatRow, Workload, compute_stat
from lab.runtime import runtime_env
from tests.cli.graph_mesh import GraphMesh
from tests.support.topology import assert_diagnosis_matches_apps

NS = "shop"
EDGES_HEADER = ["SRC", "DST", "SRC_NS", "DST_NS", "SUCCESS", "RPS", "LATENCY_P99"]


def edge(src: str, dst: str, success: float, rps: float = 1.0, dst_ns: str = NS) -> Edge:
    requests = round(rps * 60)
    return Edge(NS, src, dst_ns, dst, requests, success, rps, 5.0)


def row(success: float | None, rps: float = 2.0) -> StatRow:
    return StatRow(namespace=NS, kind="deployment", name="web", success=success, rps=rps)


def culprits(d: object) -> list[tuple[str, list[str]]]:
    return [(c.node[1], [e.dst for e in c.path]) for c in d.culprits]  # type: ignore[attr-defined]


# --- the walk, pure ------------------------------------------------------------------------


def test_failure_at_depth_one_names_the_callee_and_the_evidence() -> None:
    edges = [edge("web", "emoji", 1.0), edge("web", "voting", 0.83), edge("vote-bot", "web", 0.9)]
    d = diagnose("deployment", (NS, "web"), row(0.9), edges)
    assert culprits(d) == [("voting", ["voting"])]
    text = render_diagnosis(d, "1m")
    assert "→ deploy/voting fails 17.00% of web's calls (1.0rps); its own callees are healthy" in text
    assert "look at voting" in text


def test_failure_at_depth_three_through_healthy_middles() -> None:
    edges = [
        edge("web", "api", 0.8),
        edge("web", "static", 1.0),
        edge("api", "orders", 0.8),
        edge("api", "auth", 1.0),
        edge("orders", "db-proxy", 0.8),
        edge("db-proxy", "cache", 1.0),
    ]
    d = diagnose("deployment", (NS, "web"), row(0.8), edges)
    assert culprits(d) == [("db-proxy", ["api", "orders", "db-proxy"])]


def test_two_failing_leaves_are_both_named() -> None:
    edges = [edge("web", "a", 0.9), edge("web", "b", 0.9), edge("b", "c", 0.9)]
    d = diagnose("deployment", (NS, "web"), row(0.8), edges)
    assert culprits(d) == [("a", ["a"]), ("c", ["b", "c"])]
    assert "Failures start in 2 places: deploy/a, deploy/c." in render_diagnosis(d, "1m")


def test_a_cycle_is_walked_once_and_reported() -> None:
    edges = [edge("web", "a", 0.9), edge("a", "b", 0.9), edge("b", "a", 0.9), edge("b", "web", 0.5)]
    d = diagnose("deployment", (NS, "web"), row(0.9), edges)
    assert culprits(d) == [("b", ["a", "b"])]
    assert d.culprits[0].cycle_to == ((NS, "a"), (NS, "web"))
    assert "a cycle" in render_diagnosis(d, "1m")


def test_a_failing_unmeshed_destination_is_the_end_of_the_path() -> None:
    edges = [edge("web", "api", 0.9), edge("api", "payments.example.com:443", 0.7, dst_ns="")]
    d = diagnose("deployment", (NS, "web"), row(0.9), edges)
    assert culprits(d) == [("payments.example.com:443", ["api", "payments.example.com:443"])]
    assert not d.culprits[0].meshed
    assert "it has no proxy" in render_diagnosis(d, "1m")


def test_nothing_failing_and_a_failing_target_with_healthy_callees() -> None:
    edges = [edge("web", "emoji", 1.0), edge("web", "voting", 0.995)]
    healthy = diagnose("deployment", (NS, "web"), row(1.0), edges)
    assert healthy.healthy and "Nothing is failing" in render_diagnosis(healthy, "1m")
    itself = diagnose("deployment", (NS, "web"), row(0.7), edges)
    assert culprits(itself) == [("web", [])]
    assert "deploy/web fails 30.00% of its requests, and every call it makes is healthy" in render_diagnosis(
        itself, "1m"
    )
    assert json.loads(render_diagnosis(itself, "1m", "json"))["culprits"][0]["name"] == "web"


def test_a_wide_graph_is_walked_in_linear_time() -> None:
    """Every workload of a 200-layer lattice fails its calls: each is explored once, not once per path."""
    edges = [edge(f"n{i}-{a}", f"n{i + 1}-{b}", 0.5) for i in range(200) for a in (0, 1) for b in (0, 1)]
    edges += [edge("web", "n0-0", 0.5), edge("web", "n0-1", 0.5)]
    start = time.monotonic()
    d = diagnose("deployment", (NS, "web"), row(0.5), edges)
    assert time.monotonic() - start < 2
    assert {c.node[1] for c in d.culprits} == {"n200-0", "n200-1"}


def test_a_very_deep_chain_is_walked_without_exhausting_the_stack() -> None:
    """A chain of 3000 failing hops (a pathological graph, or a label scheme gone wrong) is a
    diagnosis with one culprit at its end, not a RecursionError traceback."""
    edges = [edge("web", "n0", 0.5)] + [edge(f"n{i}", f"n{i + 1}", 0.5) for i in range(3000)]
    d = diagnose("deployment", (NS, "web"), row(0.5), edges)
    [(name, path)] = culprits(d)
    assert name == "n3000" and len(path) == 3001 and path[-1] == "n3000"
    assert "n3000" in render_diagnosis(d, "1m", "table")


def test_a_self_loop_and_an_edge_back_into_the_target_end_the_walk() -> None:
    """web calls itself and voting, which calls web back, all failing: each is reported once, with
    the cycle named, and the walk ends."""
    edges = [edge("web", "web", 0.5), edge("web", "voting", 0.5), edge("voting", "web", 0.5)]
    d = diagnose("deployment", (NS, "web"), row(0.5), edges)
    assert [(c.node[1], [n for _, n in c.cycle_to]) for c in d.culprits] == [("voting", ["web"])]


# --- edges from query results, pure --------------------------------------------------------


def test_edges_from_results_name_unmeshed_ends_and_keep_the_namespace_asked_for() -> None:
    request = EdgesRequest(kind="deployment", namespace="a", window="1m")
    results = {
        "meshed": [
            ({"namespace": "a", "deployment": "web", "dst_namespace": "b", "dst_deployment": "db",
              "classification": "success"}, 57.0),
            ({"namespace": "a", "deployment": "web", "dst_namespace": "b", "dst_deployment": "db",
              "classification": "failure"}, 3.0),
            ({"namespace": "c", "deployment": "x", "dst_namespace": "c", "dst_deployment": "y",
              "classification": "success"}, 60.0),
        ],
        "meshed_p99": [
            ({"namespace": "a", "deployment": "web", "dst_namespace": "b", "dst_deployment": "db"}, 7.5)
        ],
        "to_unmeshed": [({"namespace": "a", "deployment": "web", "authority": "api.example.com",
                          "classification": "success"}, 30.0)],
        "from_unmeshed": [({"namespace": "a", "deployment": "web", "classification": "failure"}, 0.2)],
    }  # fmt: skip
    edges = edges_from_results(request, results)
    assert [(e.src_namespace, e.src, e.dst_namespace, e.dst, e.requests) for e in edges] == [
        ("a", "web", "", "api.example.com", 30),
        ("a", "web", "b", "db", 60),
    ]  # c's edge is outside namespace a; an increase rounding to 0 requests is no edge
    assert edges[1].success == 0.95 and edges[1].rps == 1.0 and edges[1].latency_ms_p99 == 7.5
    table = render_edges(edges, request)
    assert table.splitlines()[0].split() == EDGES_HEADER
    assert f"api.example.com {UNMESHED}" in table
    dot = render_dot(edges, "deployment")
    assert '"a/deploy/web" -> "b/deploy/db" [color="#ef6c00"' in dot  # 95%: orange
    assert "style=dashed" in dot  # the unmeshed callee


def test_nan_and_inf_from_prometheus_are_no_evidence() -> None:
    """Prometheus answers NaN for a quantile of no samples and can return ±Inf: such values count
    no request and give no latency, and what remains is rendered in every format."""
    request = EdgesRequest(kind="deployment", namespace="a", window="1m")
    labels = {"namespace": "a", "deployment": "web", "dst_namespace": "a", "dst_deployment": "db"}
    results = {
        "meshed": [
            ({**labels, "classification": "success"}, 60.0),
            ({**labels, "classification": "failure"}, float("nan")),
            ({**labels, "dst_deployment": "cache", "classification": "success"}, float("inf")),
        ],
        "meshed_p99": [(labels, float("nan")), ({**labels, "dst_deployment": "cache"}, float("-inf"))],
    }
    edges = edges_from_results(request, results)
    assert [(e.dst, e.requests, e.success, e.latency_ms_p99) for e in edges] == [("db", 60, 1.0, None)]
    for output in ("table", "json", "dot"):
        text = render_edges(edges, EdgesRequest(kind="deployment", namespace="a", output=output))
        assert "nan" not in text.lower() and "inf" not in text.lower().replace("info", "")


def test_the_queries_select_each_end_as_the_stat_planner_does() -> None:
    queries = plan_edges(EdgesRequest(kind="deployment", window="30s"))
    assert set(queries) == {
        f"{s}{p}" for s in ("meshed", "to_unmeshed", "from_unmeshed") for p in ("", "_p99")
    }
    assert 'direction="outbound", deployment!="", dst_namespace!="", dst_deployment!=""' in queries["meshed"]
    assert queries["from_unmeshed"].startswith('sum(increase(response_total{direction="inbound"')
    assert "[30s]" in queries["to_unmeshed_p99"]


# --- the real thing: proxies, Prometheus, the CLI ------------------------------------------

# Issue #14's topologies side by side in one mesh (one set of processes), each in its namespace:
# the demo's own definitions (kubectl_mesh.demo.topology), all healthy included.
WINDOW = "30s"


@pytest.fixture(scope="module")
def graph_mesh() -> Iterator[GraphMesh]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs the prometheus binary (scripts/install-system-deps.sh)")
    mesh = GraphMesh(TOPOLOGIES.values())
    try:
        with ThreadPoolExecutor(len(TOPOLOGIES)) as pool:  # 40 requests per entry, over 8 s
            sent = list(pool.map(lambda ns: mesh.drive(ns, requests=40, seconds=8), TOPOLOGIES))
        assert sent == [40] * len(TOPOLOGIES)
        time.sleep(3)  # the last requests scraped (1 s interval)
        yield mesh
    finally:
        mesh.close()


def _diagnose(mesh: GraphMesh, ns: str) -> Diagnosis:
    client = PrometheusClient(url=mesh.prometheus_url, timeout=10.0)
    at = time.time()

    def query(promql: str) -> list[tuple[dict[str, str], float]]:
        return client.query(promql, at=at)

    def workloads(request: StatRequest) -> list[Workload]:
        return [Workload(ns, "deployment", name, 1, 1) for name in TOPOLOGIES[ns].names]

    rows = compute_stat(
        StatRequest(kind="deployment", names=(ENTRY,), namespace=ns, window=WINDOW), query, workloads
    )
    edges = compute_edges(EdgesRequest(kind="deployment", all_namespaces=True, window=WINDOW), query)
    return diagnose("deployment", (ns, ENTRY), rows[0] if rows else None, edges)


@pytest.mark.slow
@pytest.mark.parametrize("ns", list(TOPOLOGIES))
def test_diagnose_finds_where_failures_start_on_a_real_mesh(graph_mesh: GraphMesh, ns: str) -> None:
    d = _diagnose(graph_mesh, ns)
    # Every request of the window is counted from the apps' start (the window holds all of them).
    found = assert_diagnosis_matches_apps(
        d.to_dict(), TOPOLOGIES[ns], {}, graph_mesh.counters(ns), lambda requests: 0.08
    )
    assert bool(found) == (ns != "healthy"), render_diagnosis(d, WINDOW)
    if ns == "cycle":
        assert d.culprits[0].cycle_to == ((ns, "gateway"),)


@pytest.mark.slow
def test_edges_cli_lists_every_pair_with_the_apps_own_numbers(graph_mesh: GraphMesh) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", "edges", "deploy", "-A", "-t", WINDOW,
         "--prometheus-url", graph_mesh.prometheus_url, "-o", "json"],
        capture_output=True, text=True, env=runtime_env(KUBECONFIG="/nonexistent"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = {(e["dst_namespace"], e["src"], e["dst"]): e for e in json.loads(done.stdout)}
    calls = {(t.name, w.name, c) for t in TOPOLOGIES.values() for w in t.workloads for c in w.calls}
    calls |= {(ns, None, ENTRY) for ns in TOPOLOGIES}  # the driver: an unmeshed caller
    assert set(got) == calls
    for (ns, src, dst), e in got.items():
        assert (e["src_meshed"], e["dst_meshed"]) == (src is not None, True)
        assert e["src_namespace"] == (ns if src is not None else None)
        app = graph_mesh.counters(ns)[dst]
        if src is None or sum(dst in w.calls for w in TOPOLOGIES[ns].workloads) == 1:
            truth = 1 - int(app["failed"]) / int(app["served"])
            assert abs(e["success"] - truth) < 0.08, (src, dst, e, app)
    table = subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", "edges", "deploy", "-n", "depth3", "-t", WINDOW,
         "--prometheus-url", graph_mesh.prometheus_url],
        capture_output=True, text=True, env=runtime_env(KUBECONFIG="/nonexistent"), timeout=60,
    ).stdout  # fmt: skip
    assert table.splitlines()[0].split() == EDGES_HEADER
    assert re.search(rf"^{re.escape(UNMESHED)}\s+{ENTRY}\s", table, re.M), table
    assert {line.split()[-4] for line in table.splitlines()[1:]} == {"depth3"}  # -n keeps its edges


def test_edges_svg_needs_graphviz_and_says_so() -> None:
    env = runtime_env(KUBECONFIG="/nonexistent", PATH="/nonexistent")
    done = subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", "edges", "deploy", "-A", "-o", "svg",
         "--prometheus-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    # Prometheus is asked first (nothing listens on port 9): that error, or dot's, is one line.
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["edges", "ns"], 'error: edges are between workloads: "ns" is not one of'),
        (["edges", "deploy", "-n", "a", "-A"], "error: -A/--all-namespaces and -n/--namespace cannot"),
        (["edges", "deploy", "-t", "5s"], "error: time window 5s must be longer than the 10s scrape"),
        (["diagnose", "deploy/web", "--threshold", "0"], "error: --threshold must be a percentage"),
        (["diagnose", "deploy/web", "--threshold", "x"], "error: --threshold must be a percentage"),
        (["diagnose", "deploy", "web", "api"], "error: diagnose takes one workload"),
        (["diagnose", "ns/default"], "error: diagnose takes one workload"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubectl_mesh", *argv, "--prometheus-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, env=runtime_env(KUBECONFIG="/nonexistent"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr
