"""`kubectl mesh demo --topology NAME`: issue #14's call graphs in the demo (no cluster), the real
command with its own runner, proxies and Prometheus; `diagnose`'s culprits and paths checked
against what each app counted itself over the same window (tests/e2e/test_demo.py does emojivoto,
the depth-1 case)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kubectl_mesh.demo.topology import CLIENT, ENTRY, TOPOLOGIES
from lab.runtime import runtime_env
from tests.e2e.tables import success_tolerance
from tests.support.demo import assert_nothing_left, demo_argv
from tests.support.topology import assert_diagnosis_matches_apps

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the demo needs the prometheus binary: apt-get install prometheus",
)
RATE = 4  # client requests per second: 80 in the 20 s window


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["depth1", "depth3", "two-leaves", "cycle", "healthy"])
def test_diagnose_follows_the_failures_to_where_the_apps_say_they_start(scratch: Path, name: str) -> None:
    topology = TOPOLOGIES[name]
    record = scratch / "record.json"
    done = subprocess.run(
        demo_argv("--topology", name, "--once", "--rate", str(RATE), record=record),
        env=runtime_env(), capture_output=True, text=True, timeout=180, cwd=scratch,
    )  # fmt: skip
    print(done.stdout, done.stderr, sep="\n")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    recorded = json.loads(record.read_text())
    start, end = recorded["counters"]["start"], recorded["counters"]["end"]
    assert start is not None and set(end["services"]) == {*topology.names, CLIENT}
    window_s, scrape_s = recorded["window_seconds"], recorded["scrape_interval_seconds"]

    starts = assert_diagnosis_matches_apps(
        recorded["diagnosis"], topology, start["services"], end["services"],
        lambda requests: success_tolerance(requests, window_s, scrape_s),
    )  # fmt: skip
    assert bool(starts) == (name != "healthy"), starts
    culprits = {c["name"]: c for c in recorded["diagnosis"]["culprits"]}
    assert all(end["services"][w]["served"] > 0 for w in topology.names)  # the healthy ones too

    text = done.stdout.partition(f"$ kubectl mesh diagnose deploy/{ENTRY} -n {name} -t 20s\n")[2]
    if not starts:
        assert "Nothing is failing" in text, text
    elif len(starts) > 1:
        assert f"Failures start in {len(starts)} places" in text, text
    elif name == "cycle":  # ledger's failing calls lead back to gateway: both are named
        (culprit,) = culprits.values()
        assert [n["name"] for n in culprit["cycle_to"]] == ["gateway"]
        assert "(a cycle: the mesh cannot tell which started)" in text
        assert text.rstrip().endswith("→ look at ledger and deploy/gateway"), text
    else:
        (only,) = starts
        assert text.rstrip().endswith(f"→ look at {only}"), text
    assert_nothing_left(recorded["workdir"])


def test_an_unknown_topology_is_one_line_naming_the_choices() -> None:
    argv = demo_argv("--topology", "nope")
    done = subprocess.run(argv, env=runtime_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "invalid choice: 'nope'" in done.stderr and "depth3" in done.stderr, done.stderr


def test_topology_names_complete_and_are_the_definitions() -> None:
    from kubectl_mesh.commands.completion import candidates

    names, _ = candidates(["demo", "--topology", ""])
    assert names == sorted(["emojivoto", *TOPOLOGIES])
