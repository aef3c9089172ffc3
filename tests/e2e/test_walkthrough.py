"""The seed's walkthrough on the lab, checked: `helm install`, inject (both ways), three
`kubectl mesh stat` commands through the real kubectl, and the numbers against the truth.

Runs lab/walkthrough.py (what `make walkthrough` prints) once for the module, both
variants: the namespace labelled for the webhook, and `kubectl mesh inject | kubectl apply`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from lab.walkthrough import COMMANDS, DIAGNOSE
from tests.e2e.tables import assert_matches_truth, assert_seeds_findings, parse_sections, truth

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow]

WEB, FROM_WEB, TO_VOTING = ("kubectl " + " ".join(c) for c in COMMANDS)
VARIANTS = ("label", "inject")


@pytest.fixture(scope="module")
def results(lab: Any) -> dict[str, Any]:
    """The walkthrough, both variants, on the session's lab (lab/pytest_plugin.py)."""
    from lab import walkthrough as w

    if not os.access(lab.helm, os.X_OK):
        pytest.skip(f"helm is missing from {lab.bin_dir}: run `make binaries`")
    tools = w.tools_for(lab.kubeconfig, lab.bin_dir)
    done = w.walkthrough(tools, VARIANTS)  # removes the app, and the chart if it installed it
    for result in done:
        print(f"\n# {result.variant}\n{result.render()}")
    return {r.variant: r for r in done}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_seeds_findings(results: dict[str, Any], variant: str) -> None:
    result = results[variant]
    tables = parse_sections(result.render_tables())
    assert list(tables) == [WEB, FROM_WEB, TO_VOTING]
    _, callees = assert_seeds_findings(tables[WEB], tables[FROM_WEB], tables[TO_VOTING])
    # The walkthrough ends with the mesh finding voting by itself, through the real kubectl.
    assert result.diagnosis.command == "kubectl " + " ".join(DIAGNOSE)
    assert result.diagnosis.output.endswith("its own callees are healthy → look at voting"), result.render()
    (culprit,) = result.diagnosis_json["culprits"]
    assert (culprit["name"], [hop["dst"] for hop in culprit["path"]]) == ("voting", ["voting"])
    # diagnose and edges run seconds after stat, over another window: at the bot's rate (about
    # 200 votes in the sampled part of the minute) a vote is half a point; a few may differ.
    one_vote = 0.03
    assert culprit["path"][0]["success"] == pytest.approx(callees["voting"].success, abs=one_vote)
    # And the graph: every caller -> callee pair of the app, with the same numbers as stat's.
    edges = {(e["src"], e["dst"]): e for e in result.edges_json}
    assert {("vote-bot", "web"), ("web", "emoji"), ("web", "voting")} <= set(edges), result.edges.output
    assert edges[("web", "voting")]["success"] == pytest.approx(callees["voting"].success, abs=one_vote)
    assert edges[("web", "emoji")]["success"] == 1.0


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_injected_pod_is_meshed(results: dict[str, Any], variant: str) -> None:
    from lab.walkthrough import DEPLOYMENTS, meshed

    result = results[variant]
    assert all(meshed(pod) for pod in result.pods.values())
    listing = {row["name"]: (row["meshed"], row["running"]) for row in result.all_deployments}
    assert listing == {d: (1, 1) for d in DEPLOYMENTS}
    tables = parse_sections(result.render_tables())
    assert all(r.cells["MESHED"] == "1/1" for rows in tables.values() for r in rows)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", VARIANTS)
def test_numbers_match_what_the_services_counted(results: dict[str, Any], variant: str) -> None:
    """Each table against what the apps counted at the first and last scrape of web's proxy in
    that command's window (the calls its rows counted), to issue 13's bounds."""
    from lab.walkthrough import SCRAPE_S, WINDOW_S

    result = results[variant]
    web_pod = result.pods["web"]["metadata"]["name"]
    checks = []
    for section in result.sections:
        aligned = section.at_scrapes
        assert aligned is not None and aligned["pod"] == web_pod, section.command
        first, last = aligned["scrapes"]
        assert section.at - WINDOW_S <= first < last <= section.at + SCRAPE_S, (
            section.at,
            aligned["scrapes"],
        )
        assert last - first >= WINDOW_S - 2 * SCRAPE_S, aligned["scrapes"]  # all but the edge scrapes
        start, end = aligned["start"], aligned["end"]
        rows = parse_sections(f"$ {section.command}\n{section.output}")[section.command]
        if section.command == WEB:
            (web,) = rows
            checks += [("web inbound", web, truth(start, end, "web")),
                       ("vote-bot -> web", web, truth(start, end, "vote-bot", "web"))]  # fmt: skip
        elif section.command == FROM_WEB:
            callees = {r.name: r for r in rows}
            checks += [("web -> emoji", callees["emoji"], truth(start, end, "web", "emoji")),
                       ("web -> voting", callees["voting"], truth(start, end, "web", "voting")),
                       ("voting inbound", callees["voting"], truth(start, end, "voting"))]  # fmt: skip
        else:
            assert section.command == TO_VOTING
            checks.append(("web -> voting, from --to", rows[0], truth(start, end, "web", "voting")))
    assert len(checks) == 6
    assert_matches_truth(checks, prefix=f"{variant} ")


@pytest.mark.timeout(1200)
def test_grafana_dashboards_show_web(results: dict[str, Any]) -> None:
    for result in results.values():
        assert result.dashboards, "no dashboard queries found in the chart"
        empty = [f"{board} / {panel}: {query}" for board, panel, query, s in result.dashboards if not s]
        assert empty == [], "dashboard queries without data for web"
        assert result.variables, "no template variables found in the dashboards"
        assert [v for v in result.variables if not v[2]] == [], "drop-downs that do not offer web"


@pytest.mark.timeout(1200)
def test_grafana_grpc_panels_show_voting_failing_with_unknown(results: dict[str, Any]) -> None:
    """The gRPC panels break the calls down by grpc_status: web's calls to emoji all end 0 (OK),
    to voting 0 or 2 (UNKNOWN, the doughnut); voting serves both; nothing else appears."""
    app = {("emoji", "0"), ("voting", "0"), ("voting", "2")}  # (callee, grpc_status)

    def labels_of(result: Any, board: str, panel: str, *labels: str) -> set[tuple[str, ...]]:
        (found,) = [f for b, p, _, f in result.dashboards if (b, p) == (f"kubectl-mesh / {board}", panel)]
        return {tuple(s[label] for label in labels) for s in found}

    outbound = "gRPC responses by destination and status (outbound)"  # evaluated for web
    inbound = "gRPC responses by status (inbound)"  # for voting (web serves HTTP/1.1)
    by_deployment = "gRPC responses by deployment and status (inbound)"
    for r in results.values():
        assert labels_of(r, "Deployment", outbound, "dst_deployment", "grpc_status") == app, r.dashboards
        assert labels_of(r, "Deployment", inbound, "grpc_status") == {("0",), ("2",)}, r.dashboards
        assert labels_of(r, "Namespace", by_deployment, "deployment", "grpc_status") == app, r.dashboards
