"""The metrics collector: names, labels present only when known, buckets, bounded cardinality."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kubectl_mesh.contract import LATENCY_BUCKETS_MS
from proxy.identity import peer_labels
from proxy.metrics import MeshMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _samples(metrics: MeshMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = metrics.render()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_labels_only_when_known_and_classification() -> None:
    m = MeshMetrics()
    dst = peer_labels("dst", b"shop/deployment/web/web-1")
    m.response("outbound", "web.shop:80", dst, 200, "", 3.0)
    m.response("outbound", "web.shop:80", dst, 503, "", 7.0)
    m.response("outbound", "other:80", (), 502, "connect_refused", 1.0)
    s = _samples(m)
    requests = {tuple(sorted(labels)): value for labels, value in s["request_total"]}
    assert requests == {
        ("authority", "direction", "dst_deployment", "dst_namespace", "dst_pod"): 2,
        ("authority", "direction"): 1,
    }
    responses = {
        (lb.get("status_code"), lb["classification"], lb.get("error")): v for lb, v in s["response_total"]
    }
    assert responses == {
        ("200", "success", None): 1,
        ("503", "failure", None): 1,
        ("502", "failure", "connect_refused"): 1,
    }


def test_latency_histogram_uses_linkerd_buckets() -> None:
    m = MeshMetrics()
    for ms in (0.4, 1.0, 1.5, 45.0, 60000.0):
        m.response("inbound", "a", (), 200, "", ms)
    s = _samples(m)
    buckets = {lb["le"]: v for lb, v in s["response_latency_ms_bucket"]}
    assert list(buckets) == [*(str(b) for b in LATENCY_BUCKETS_MS), "+Inf"]
    assert buckets["1"] == 2 and buckets["2"] == 3 and buckets["50"] == 4 and buckets["+Inf"] == 5
    assert s["response_latency_ms_count"][0][1] == 5
    assert abs(s["response_latency_ms_sum"][0][1] - 60047.9) < 1e-6


def test_tcp_series() -> None:
    m = MeshMetrics()
    series = m.tcp_series("inbound", "src", "10.0.0.1:80")
    m.tcp_open(series)
    series.read += 100
    series.written += 50
    s = _samples(m)
    assert s["tcp_open_total"] == [({"direction": "inbound", "peer": "src", "authority": "10.0.0.1:80"}, 1)]
    assert s["tcp_open_connections"][0][1] == 1
    assert s["tcp_read_bytes_total"][0][1] == 100 and s["tcp_write_bytes_total"][0][1] == 50
    m.tcp_close(series)
    assert _samples(m)["tcp_open_connections"][0][1] == 0


def test_a_connection_joins_its_peer_series_once_known_and_counters_never_go_down() -> None:
    m = MeshMetrics()
    peer = peer_labels("src", b"front/deployment/vote/vote-1")
    before = _samples(m)
    pending = m.tcp_connection("inbound", "src", "10.0.0.1:80", wait_for_peer=True)
    pending.read += 300  # the first request head, read before it named the client
    assert _samples(m) == before, "a connection whose peer is unknown is not rendered yet"
    series = m.tcp_attach(pending, peer)
    series.written += 40
    s = _samples(m)
    labels = {"direction": "inbound", "peer": "src", "authority": "10.0.0.1:80"}
    labels |= {"src_namespace": "front", "src_deployment": "vote", "src_pod": "vote-1"}
    assert s["tcp_open_total"] == [(labels, 1)] and s["tcp_open_connections"] == [(labels, 1)]
    assert s["tcp_read_bytes_total"] == [(labels, 300)] and s["tcp_write_bytes_total"] == [(labels, 40)]
    # A second connection from an unknown peer lands in the unlabelled series; both close.
    anonymous = m.tcp_attach(m.tcp_connection("inbound", "src", "10.0.0.1:80", wait_for_peer=True), ())
    m.tcp_close(series)
    m.tcp_close(anonymous)
    after = _samples(m)
    assert sorted(v for _, v in after["tcp_open_total"]) == [1, 1]
    assert [v for _, v in after["tcp_open_connections"]] == [0, 0]
    assert after["tcp_read_bytes_total"][0][1] == 300, "bytes stay counted after the close"


def test_idle_series_are_evicted_but_open_connections_stay() -> None:
    clock = Clock()
    m = MeshMetrics(idle_seconds=600, clock=clock)
    m.response("inbound", "old", (), 200, "", 1.0)
    open_conn = m.tcp_series("inbound", "src", "busy")
    m.tcp_open(open_conn)
    clock.now += 601
    m.response("inbound", "new", (), 200, "", 1.0)
    s = _samples(m)
    assert [lb["authority"] for lb, _ in s["request_total"]] == ["new"]
    assert [lb["authority"] for lb, _ in s["tcp_open_connections"]] == ["busy"], "an open connection stays"


def test_series_count_is_capped() -> None:
    clock = Clock()
    m = MeshMetrics(max_series=100, clock=clock)
    for i in range(1000):
        clock.now += 0.001
        m.response("inbound", f"host-{i}", (), 200, "", 1.0)
    assert len(m.routes) <= 100
    assert ("inbound", "host-999", ()) in m.routes, "the newest series is kept; the least recently used go"


def test_label_values_are_escaped() -> None:
    m = MeshMetrics()
    odd = 'we"ird\\host\nname'
    m.response("inbound", odd, (), 200, "", 1.0)
    [(labels, value)] = _samples(m)["request_total"]
    assert labels["authority"] == odd and value == 1


def test_render_is_fast_enough_for_the_series_cap() -> None:
    """A scrape runs on the proxy's only thread: the largest allowed set must render quickly."""
    import time

    m = MeshMetrics(max_series=2000)
    for i in range(2000):
        m.response("inbound", f"host-{i}:80", (("src_namespace", "ns"), ("src_pod", f"p{i}")), 200, "", 1.0)
    start = time.process_time()
    text = m.render()
    elapsed = time.process_time() - start
    assert text.count("\nrequest_total{") == 2000
    assert elapsed < 0.25, f"render of 2000 series took {elapsed:.3f} s of CPU"
