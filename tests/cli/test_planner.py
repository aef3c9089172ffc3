"""The stat planner: request -> PromQL, per mode of anchors-cli.md. Pure, so tested directly.

Queries are checked by the selector and grouping they contain, which is what decides the numbers;
test_stat_prometheus.py runs them against a real Prometheus.
"""

from __future__ import annotations

import re

import pytest

from kubectl_mesh.stat.model import StatRequest, build_request
from kubectl_mesh.stat.planner import plan


def request(**flags: object) -> StatRequest:
    defaults: dict[str, object] = {"resources": ["deploy"], "namespace": "emojivoto", "namespace_given": True}
    defaults.update(flags)
    return build_request(**defaults)  # type: ignore[arg-type]


def selector(promql: str) -> set[str]:
    inner = re.search(r"\{([^}]*)\}", promql)
    assert inner, promql
    return {m.strip() for m in inner.group(1).split(", ")}


def grouping(promql: str) -> str:
    return re.findall(r"by \(([^)]*)\)", promql)[-1]


def test_no_filter_is_inbound_traffic_of_the_objects_in_the_namespace() -> None:
    qp = plan(request(resources=["deploy", "web"]))
    responses = qp.queries["responses"]
    assert responses.startswith("sum(increase(response_total{")
    assert responses.endswith("[1m])) by (namespace, deployment, classification)")
    assert selector(responses) == {
        'direction="inbound"',
        'namespace="emojivoto"',
        'deployment="web"',
        'deployment!=""',
    }
    assert (qp.namespace_label, qp.name_label) == ("namespace", "deployment")


def test_all_namespaces_drops_the_namespace_matcher() -> None:
    qp = plan(request(namespace_given=False, all_namespaces=True))
    assert selector(qp.queries["responses"]) == {'direction="inbound"', 'deployment!=""'}


def test_to_counts_the_clients_outbound_traffic_towards_the_target() -> None:
    qp = plan(request(namespace_given=False, all_namespaces=True, to="voting", to_namespace="emojivoto"))
    assert selector(qp.queries["responses"]) == {
        'direction="outbound"',
        'dst_namespace="emojivoto"',
        'dst_deployment="voting"',
        'deployment!=""',
    }
    assert grouping(qp.queries["responses"]) == "namespace, deployment, classification"
    assert (qp.namespace_label, qp.name_label) == ("namespace", "deployment")


def test_from_counts_the_sources_outbound_traffic_grouped_by_destination() -> None:
    qp = plan(
        request(namespace_given=False, all_namespaces=True, from_="deploy/web", from_namespace="emojivoto")
    )
    assert selector(qp.queries["responses"]) == {
        'direction="outbound"',
        'namespace="emojivoto"',
        'deployment="web"',
        'dst_deployment!=""',
    }
    assert grouping(qp.queries["responses"]) == "dst_namespace, dst_deployment, classification"
    assert (qp.namespace_label, qp.name_label) == ("dst_namespace", "dst_deployment")


def test_from_in_one_namespace_filters_destinations_by_dst_namespace() -> None:
    qp = plan(request(resources=["po"], from_="po/web-1", from_namespace="front"))
    assert selector(qp.queries["responses"]) == {
        'direction="outbound"',
        'namespace="front"',
        'pod="web-1"',
        'dst_namespace="emojivoto"',
        'dst_pod!=""',
    }


def test_to_defaults_to_the_namespace_of_the_rows() -> None:
    qp = plan(request(to="svc-less"))
    assert 'dst_namespace="emojivoto"' in selector(qp.queries["responses"])


def test_namespace_kind_groups_by_namespace_only() -> None:
    qp = plan(request(resources=["ns", "emojivoto"], namespace_given=False))
    assert selector(qp.queries["responses"]) == {'direction="inbound"', 'namespace="emojivoto"'}
    assert grouping(qp.queries["responses"]) == "namespace, classification"
    qp = plan(request(resources=["ns"], namespace_given=False, to="ns/emojivoto"))
    assert selector(qp.queries["responses"]) == {'direction="outbound"', 'dst_namespace="emojivoto"'}


def test_several_names_become_one_regex_matcher_with_dots_escaped() -> None:
    qp = plan(request(resources=["po", "web-1", "a.b"]))
    assert 'pod=~"web-1|a\\\\.b"' in selector(qp.queries["responses"])


@pytest.mark.parametrize("field", ["latency_ms_p50", "latency_ms_p95", "latency_ms_p99"])
def test_latency_is_a_quantile_of_the_histogram_over_the_window(field: str) -> None:
    qp = plan(request(window="10m"))
    q = {"latency_ms_p50": "0.5", "latency_ms_p95": "0.95", "latency_ms_p99": "0.99"}[field]
    promql = qp.queries[field]
    assert promql.startswith(f"histogram_quantile({q}, sum(rate(response_latency_ms_bucket{{")
    assert "[10m]" in promql and grouping(promql) == "le, namespace, deployment"


def test_tcp_queries() -> None:
    qp = plan(request())
    assert qp.queries["tcp_open_connections"].startswith("sum(tcp_open_connections{")
    assert qp.queries["tcp_read_bytes_rate"].startswith("sum(rate(tcp_read_bytes_total{")
    assert qp.queries["tcp_write_bytes_rate"].startswith("sum(rate(tcp_write_bytes_total{")


@pytest.mark.parametrize(
    ("flags", "peer"),
    [({}, 'peer="src"'), ({"to": "deploy/voting"}, 'peer="dst"'), ({"from_": "deploy/web"}, 'peer="dst"')],
)
def test_tcp_counts_each_connection_once_by_the_peer_facing_the_other_workload(
    flags: dict[str, object], peer: str
) -> None:
    qp = plan(request(**flags))
    for field in ("tcp_open_connections", "tcp_read_bytes_rate", "tcp_write_bytes_rate"):
        assert peer in selector(qp.queries[field])
    assert "peer" not in qp.queries["responses"]


def test_all_is_planned_kind_by_kind() -> None:
    req = request(resources=["all"])
    assert req.kinds() == ("daemonset", "statefulset", "job", "deployment", "pod", "replicaset")
    with pytest.raises(ValueError):
        plan(req)
    assert 'replicaset!=""' in plan(req.for_kind("replicaset")).queries["responses"]
