"""stat's numbers end to end, without Kubernetes: real proxies, real traffic, real Prometheus.

The client `front/web` calls the server `back/voting` through both proxies at a steady ~20 rps
for 30 s, one request in four failing (HTTP 500). While it runs, stat is computed the way the
CLI does (planner -> PromQL -> Prometheus HTTP API -> rows -> table), with the Kubernetes lister
replaced by this test's own process table, as `kubectl mesh demo` does. Each form must report
what the client counted over the same window:

- success rate within 2 percentage points of the client's (75%);
- request rate within 10% of the client's (Prometheus' increase() extrapolates to the window's
  edges, a few percent on a 20 s window scraped every second).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from kubectl_mesh.prom import PrometheusClient
from kubectl_mesh.stat import StatRequest, StatRow, Workload, build_request, compute_stat, render
from tests.cli.loopback_mesh import ClientCount, LoopbackMesh

pytestmark = pytest.mark.slow

WINDOW_S = 20
RPS = 20.0
SR_TOLERANCE = 0.02
RPS_TOLERANCE = 0.10

WORKLOADS = {
    "deployment": [
        Workload("back", "deployment", "voting", 1, 1),
        Workload("front", "deployment", "web", 1, 1),
    ],
    "pod": [Workload("back", "pod", "voting-1", 1, 1), Workload("front", "pod", "web-1", 1, 1)],
    "namespace": [Workload("back", "namespace", "back", 1, 1), Workload("front", "namespace", "front", 1, 1)],
}


def process_table(request: StatRequest) -> list[Workload]:
    return [
        w
        for w in WORKLOADS[request.kind]
        if request.all_namespaces or request.kind == "namespace" or w.namespace == request.namespace
    ]


@pytest.fixture(scope="module")
def running_mesh() -> Iterator[tuple[LoopbackMesh, ClientCount]]:
    mesh = LoopbackMesh(scrape_interval="1s")
    count = ClientCount()
    sender = threading.Thread(
        target=mesh.send, args=(count,), kwargs={"seconds": 40, "rps": RPS, "fail_every": 4}
    )
    try:
        sender.start()
        time.sleep(WINDOW_S + 6)  # a full window of steady traffic, scraped
        yield mesh, count
    finally:
        sender.join(timeout=60)
        mesh.close()


def stat(
    mesh: LoopbackMesh, *, resources: list[str], namespace: str = "default", **flags: object
) -> list[StatRow]:
    request = build_request(
        resources=resources,
        namespace=namespace,
        namespace_given=namespace != "default",
        window=f"{WINDOW_S}s",
        **flags,  # type: ignore[arg-type]
    )
    rows = compute_stat(request, PrometheusClient(url=mesh.prometheus_url).query, process_table)
    print(render(rows, request))
    return rows


def truth(count: ClientCount) -> tuple[float, float]:
    sent, failed = count.window(WINDOW_S, time.monotonic())
    return (sent - failed) / sent, sent / WINDOW_S


def assert_matches_client(row: StatRow, count: ClientCount) -> None:
    success, rps = truth(count)
    assert row.success is not None and row.rps is not None, row
    assert abs(row.success - success) <= SR_TOLERANCE, (row.success, success)
    assert abs(row.rps - rps) <= RPS_TOLERANCE * rps, (row.rps, rps)
    assert row.latency_ms_p50 is not None and 0 <= row.latency_ms_p50 <= row.latency_ms_p99 < 1000  # type: ignore[operator]


CASES = [
    # (id, stat arguments, expected row (namespace, name))
    ("deploy-inbound", {"resources": ["deploy"], "namespace": "back"}, ("back", "voting")),
    ("deploy-by-name", {"resources": ["deploy/voting"], "namespace": "back"}, ("back", "voting")),
    (
        "deploy-from",
        {"resources": ["deploy"], "all_namespaces": True, "from_": "web", "from_namespace": "front"},
        ("back", "voting"),
    ),
    (
        "deploy-to",
        {"resources": ["deploy"], "all_namespaces": True, "to": "voting", "to_namespace": "back"},
        ("front", "web"),
    ),
    ("pod-inbound", {"resources": ["po"], "namespace": "back"}, ("back", "voting-1")),
    (
        "pod-from",
        {"resources": ["po"], "namespace": "back", "from_": "po/web-1", "from_namespace": "front"},
        ("back", "voting-1"),
    ),
    (
        "pod-to",
        {"resources": ["po"], "namespace": "front", "to": "deploy/voting", "to_namespace": "back"},
        ("front", "web-1"),
    ),
    ("ns-inbound", {"resources": ["ns", "back"]}, ("back", "back")),
    ("ns-from", {"resources": ["ns"], "from_": "ns/front"}, ("back", "back")),
    ("ns-to", {"resources": ["ns"], "to": "ns/back"}, ("front", "front")),
]


@pytest.mark.parametrize(("flags", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_stat_reports_what_the_client_counted(
    running_mesh: tuple[LoopbackMesh, ClientCount], flags: dict[str, object], expected: tuple[str, str]
) -> None:
    mesh, count = running_mesh
    rows = stat(mesh, **flags)  # type: ignore[arg-type]
    with_traffic = [r for r in rows if r.rps is not None]
    assert [(r.namespace, r.name) for r in with_traffic] == [expected]
    assert_matches_client(with_traffic[0], count)


def test_idle_objects_show_dashes_and_the_table_has_the_seed_columns(
    running_mesh: tuple[LoopbackMesh, ClientCount],
) -> None:
    mesh, _ = running_mesh
    request = build_request(resources=["deploy"], namespace="front", namespace_given=True, window="20s")
    rows = compute_stat(request, PrometheusClient(url=mesh.prometheus_url).query, process_table)
    # web receives nothing: it is a row (a known object), with '-' for every metric.
    assert [(r.name, r.success, r.rps) for r in rows] == [("web", None, None)]
    text = render(rows, request).splitlines()
    assert text[0].split() == [
        "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN",
    ]  # fmt: skip
    assert text[1].split()[:4] == ["web", "1/1", "-", "-"]


def test_from_an_object_that_calls_nothing_finds_no_rows(
    running_mesh: tuple[LoopbackMesh, ClientCount],
) -> None:
    mesh, _ = running_mesh
    assert stat(mesh, resources=["deploy"], all_namespaces=True, from_="voting", from_namespace="back") == []


def test_samples_are_the_scrapes_increase_uses(running_mesh: tuple[LoopbackMesh, ClientCount]) -> None:
    """`PrometheusClient.samples` gives the raw samples and scrape instants of a window, and they
    are the ones Prometheus' increase() uses: the e2e tests read the apps' counters at exactly those
    instants (kubectl_mesh.demo.truth). Oracle: Prometheus' own increase() at the same instant."""
    mesh, _ = running_mesh
    client = PrometheusClient(url=mesh.prometheus_url)
    at = time.time() - 0.5  # a moment every scrape before has been stored
    selector = 'request_total{job="mesh-proxy", namespace="back", direction="inbound"}'
    (labels, samples), *others = client.samples(f"{selector}[{WINDOW_S}s]", at)
    assert others == [], "one inbound route"
    times = [t for t, _ in samples]
    assert at - WINDOW_S <= times[0] and times[-1] <= at and times == sorted(times)
    assert len(times) >= WINDOW_S - 2, "the 1 s scrapes of the window"  # a busy machine may skip one
    # The whole span scaled to the window: what increase() does when the samples reach within an
    # interval of both edges (and the counter is far from zero), as they do at steady 1 s scrapes.
    (first_t, first), (last_t, last) = samples[0], samples[-1]
    scaled = (last - first) * WINDOW_S / (last_t - first_t)
    matcher = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    ((_, increase),) = client.query(f"increase(request_total{{{matcher}}}[{WINDOW_S}s])", at)
    assert increase == pytest.approx(scaled, rel=1e-9)
    assert {"job", "namespace", "pod", "direction"} <= set(labels)
