"""The Grafana dashboards: every query parses, uses only the proxy's metrics, and the deployment
dashboard breaks its numbers down per dependency (the e2e tests check they return data)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from lab.config import CHART

DASHBOARDS = CHART / "files" / "dashboards"
# Grafana's variables, replaced by values of the same kind before promtool parses the query.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "10s",
    "$namespace": "ns",
    "$deployment": "web",
    "$pod": "web-1",
}
PROXY_METRICS = {
    c.METRIC_REQUESTS,
    c.METRIC_RESPONSES,
    f"{c.METRIC_LATENCY}_bucket",
    c.METRIC_TCP_OPEN,
    c.METRIC_TCP_CLOSE,
    c.METRIC_TCP_OPEN_CONNECTIONS,
    c.METRIC_TCP_READ_BYTES,
    c.METRIC_TCP_WRITE_BYTES,
    c.METRIC_H2_OPEN_STREAMS,
    "up",  # Prometheus's own series for each scraped proxy
}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "count", "le", "irate", "max", "avg", "without"}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the variables' label_values(<expr>, label)."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
        assert match, var["definition"]
        exprs.append(match.group(1))
    return exprs


def concrete(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


ALL = sorted(p.name for p in DASHBOARDS.glob("*.json"))


def test_the_four_dashboards_exist() -> None:
    assert ALL == ["deployment.json", "namespace.json", "pod.json", "top-line.json"]


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool missing: apt-get install prometheus (scripts/install-system-deps.sh)")
    rules = [
        {"record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{i}", "expr": concrete(expr)}
        for name in ALL
        for i, expr in enumerate(queries(load(name)))
    ]
    assert len(rules) > 50
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    """The check above can fail: promtool rejects an unbalanced query."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool missing")
    path = tmp_path / "bad.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": "sum(rate(x[1m])"}]}]})
    )
    assert (
        subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60).returncode
        != 0
    )


@pytest.mark.parametrize("name", ALL)
def test_queries_use_only_the_proxy_metrics_and_prometheus_labels(name: str) -> None:
    for expr in queries(load(name)):
        metrics = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", expr))
        assert metrics and metrics <= PROXY_METRICS, expr
        labels = set(re.findall(r"\b([a-z_]+)\s*(?:=|!=|=~)\s*\"", expr))
        allowed = {"job", "namespace", "deployment", "pod", "direction", "classification", "le"}
        allowed.add("grpc_status")  # the gRPC panels' breakdown
        allowed |= {f"{side}_{k}" for side in ("src", "dst") for k in ("namespace", "deployment", "pod")}
        assert labels <= allowed, expr


@pytest.mark.parametrize("name", ALL)
def test_panels_use_the_provisioned_datasource_and_fit_the_grid(name: str) -> None:
    dashboard = load(name)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "mesh-prometheus"}
    assert dashboard["uid"].startswith("kubectl-mesh-") and "kubectl-mesh" in dashboard["tags"]


def test_links_point_at_dashboards_that_exist() -> None:
    uids = {load(name)["uid"] for name in ALL}
    for name in ALL:
        for panel in panels(load(name)):
            for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
                assert re.match(r"/d/([\w-]+)/", link["url"]).group(1) in uids  # type: ignore[union-attr]


def _grouped(dashboard: dict[str, Any], label: str, direction: str) -> dict[str, list[str]]:
    """Panel title -> expressions that break `direction` traffic down by `label`."""
    out: dict[str, list[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            if f'direction="{direction}"' in expr and re.search(rf"by \([^)]*\b{label}\b", expr):
                out.setdefault(panel["title"], []).append(expr)
    return out


@pytest.mark.parametrize(
    ("label", "direction"), [("src_deployment", "inbound"), ("dst_deployment", "outbound")]
)
def test_deployment_dashboard_breaks_traffic_down_per_dependency(label: str, direction: str) -> None:
    """Success rate, request rate and p50/p95/p99 per source (inbound) and per destination (outbound)."""
    grouped = _grouped(load("deployment.json"), label, direction)
    exprs = [e for es in grouped.values() for e in es]
    assert any('classification="success"' in e for e in exprs), grouped
    assert any(e.startswith("sum by") and c.METRIC_REQUESTS in e for e in exprs), grouped
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile},") for e in exprs), (quantile, grouped)
    for e in exprs:
        assert 'namespace="$namespace"' in e and 'deployment="$deployment"' in e


def test_namespace_and_pod_dashboards_select_by_their_variable() -> None:
    for name, variable in (("namespace.json", "namespace"), ("pod.json", "pod")):
        dashboard = load(name)
        assert variable in {v["name"] for v in dashboard["templating"]["list"]}
        targets = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
        assert targets and all(f'{variable}="${variable}"' in e for e in targets), name


@pytest.mark.parametrize(
    ("name", "directions"),
    [
        ("deployment.json", ("inbound", "outbound")),
        ("pod.json", ("inbound", "outbound")),
        ("namespace.json", ("inbound",)),
        ("top-line.json", ("inbound",)),
    ],
)
def test_dashboards_break_grpc_down_by_status(name: str, directions: tuple[str, ...]) -> None:
    """A panel per direction counts gRPC responses by grpc_status (only series that carry one:
    HTTP/1.1 responses have none); outbound, per callee too. The walkthrough's e2e test checks
    what they show for emojivoto's real gRPC traffic."""
    for direction in directions:
        grouped = _grouped(load(name), "grpc_status", direction)
        exprs = [e for es in grouped.values() for e in es]
        assert exprs, (name, direction)
        for e in exprs:
            assert 'grpc_status!=""' in e and c.METRIC_RESPONSES in e, e
            if direction == "outbound":
                assert re.search(r"by \([^)]*\bdst_deployment\b", e), e
