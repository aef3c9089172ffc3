"""Rows -> text, and query results -> rows (pure). Formats as the Conduit walkthrough prints them."""

from __future__ import annotations

import json
import math

import yaml

from kubectl_mesh.stat.compute import rows_from_results
from kubectl_mesh.stat.model import StatRequest, StatRow, Workload, build_request
from kubectl_mesh.stat.planner import plan
from kubectl_mesh.stat.render import render


def req(**flags: object) -> StatRequest:
    args: dict[str, object] = {"resources": ["deploy"], "namespace": "emojivoto", "namespace_given": True}
    args.update(flags)
    return build_request(**args)  # type: ignore[arg-type]


WEB = StatRow("emojivoto", "deployment", "web", 1, 1, 0.9, 2.0, 2.4, 4.0, 9.0, 3, 10.0, 20.5)
IDLE = StatRow("emojivoto", "deployment", "emoji", 0, 1)


def test_table_matches_the_seed_formats() -> None:
    lines = render([WEB], req()).splitlines()
    assert lines[0].split() == [
        "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN",
    ]  # fmt: skip
    assert lines[1].split() == ["web", "1/1", "90.00%", "2.0rps", "2ms", "4ms", "9ms", "3"]
    # numbers are right-aligned under their headers, NAME left-aligned
    assert lines[1].index("90.00%") + len("90.00%") == lines[0].index("SUCCESS") + len("SUCCESS")
    assert lines[1].startswith("web ")


def test_idle_rows_show_dashes_and_rows_are_sorted() -> None:
    lines = render([WEB, IDLE], req()).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["emoji", "web"]
    assert lines[1].split() == ["emoji", "0/1", "-", "-", "-", "-", "-", "-"]


def test_sub_millisecond_latency_is_the_first_bucket_not_zero() -> None:
    fast = StatRow("emojivoto", "deployment", "web", 1, 1, 1.0, 1.0, 0.5, 0.99, 1.4, 1)
    assert render([fast], req()).splitlines()[1].split()[4:7] == ["1ms", "1ms", "1ms"]


def test_wide_adds_bytes_per_second() -> None:
    lines = render([WEB], req(output="wide")).splitlines()
    assert lines[0].split()[-2:] == ["READ_BYTES/SEC", "WRITE_BYTES/SEC"]
    assert lines[1].split()[-2:] == ["10.0B/s", "20.5B/s"]


def test_namespace_column_with_all_namespaces_or_rows_elsewhere() -> None:
    assert render([WEB], req(namespace_given=False, all_namespaces=True)).split()[0] == "NAMESPACE"
    assert render([WEB], req(namespace="other")).split()[0] == "NAMESPACE"
    assert render([WEB], req()).split()[0] == "NAME"


def test_several_kinds_one_table_each_with_prefixed_names() -> None:
    pod = StatRow("emojivoto", "pod", "web-1", 1, 1, 1.0, 1.0, 1, 1, 1, 1)
    text = render([WEB, pod], req(resources=["all"]))
    deploy_table, pod_table = text.split("\n\n")
    assert deploy_table.splitlines()[1].startswith("deploy/web ")
    assert pod_table.splitlines()[1].startswith("po/web-1 ")


def test_json_and_yaml_carry_numbers_and_nulls() -> None:
    (web,) = json.loads(render([WEB], req(output="json")))
    assert web["success"] == 0.9 and web["rps"] == 2.0 and web["latency_ms_p99"] == 9.0
    assert web["meshed"] == 1 and web["namespace"] == "emojivoto" and web["kind"] == "deployment"
    (idle,) = yaml.safe_load(render([IDLE], req(output="yaml")))
    assert idle["success"] is None and idle["rps"] is None and idle["tcp_open_connections"] is None
    assert json.loads(render([], req(output="json"))) == []
    assert render([], req()) == ""


def test_results_to_rows_success_rate_and_rps_from_rounded_counts() -> None:
    request = req()
    qp = plan(request)
    labels = {"namespace": "emojivoto", "deployment": "web"}
    results = {
        "responses": [
            ({**labels, "classification": "success"}, 107.6),
            ({**labels, "classification": "failure"}, 12.2),
        ],
        "latency_ms_p50": [(labels, 1.7)],
        "latency_ms_p95": [(labels, math.nan)],
        "latency_ms_p99": [(labels, math.inf)],
        "tcp_open_connections": [(labels, 2.0)],
    }
    (row,) = rows_from_results(request, qp, results, [Workload("emojivoto", "deployment", "web", 1, 1)])
    assert row.requests == 120 and row.success == 108 / 120 and row.rps == 2.0
    # NaN and overflow never reach the output (linkerd2#747)
    assert row.latency_ms_p50 == 1.7 and row.latency_ms_p95 is None and row.latency_ms_p99 is None
    assert "NaN" not in render([row], request) and "inf" not in render([row], request).lower()


def test_unmeshed_objects_are_hidden_unless_asked_for() -> None:
    request = req()
    workloads = [
        Workload("emojivoto", "deployment", "web", 1, 1),
        Workload("emojivoto", "deployment", "db", 0, 1),
    ]
    names = [r.name for r in rows_from_results(request, plan(request), {}, workloads)]
    assert names == ["web"]
    request = req(unmeshed=True)
    names = [r.name for r in rows_from_results(request, plan(request), {}, workloads)]
    assert names == ["db", "web"]


def test_to_and_from_rows_are_only_objects_with_traffic() -> None:
    request = req(to="voting")
    qp = plan(request)
    results = {
        "responses": [({"namespace": "emojivoto", "deployment": "web", "classification": "success"}, 60.0)]
    }
    workloads = [
        Workload("emojivoto", "deployment", "web", 1, 1),
        Workload("emojivoto", "deployment", "emoji", 1, 1),
    ]
    rows = rows_from_results(request, qp, results, workloads)
    assert [(r.name, r.success, r.rps, r.meshed) for r in rows] == [("web", 1.0, 1.0, 1)]
