"""The oracle for `diagnose` on kubectl_mesh.demo.topology's call graphs, wherever they run
(loopback, the demo, the lab): what the apps counted themselves (topoapp's /counters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from kubectl_mesh.demo.topology import ENTRY, Topology

Counters = Mapping[str, Mapping[str, Any]]  # workload -> its /counters answer


def grown(start: Counters, end: Counters, workload: str, *keys: str) -> int:
    """How much one of `workload`'s own counters grew from `start` to `end` (missing: 0)."""

    def at(counters: Counters) -> int:
        value: Any = counters.get(workload, {})
        for key in keys:
            value = value.get(key, 0) if isinstance(value, Mapping) else 0
        return int(value)

    return at(end) - at(start)


def assert_diagnosis_matches_apps(
    diagnosis: Mapping[str, Any],
    topology: Topology,
    start: Counters,
    end: Counters,
    tolerance: Callable[[int], float],
) -> set[str]:
    """`diagnose`'s culprits (its `-o json`) are the apps that failed requests by their own rule
    between `start` and `end`, each reached by the shortest chain of calls from the entry, and
    every hop's success rate is what its caller counted of its own calls (the last hop's, what the
    culprit counted of what it answered), within `tolerance(requests)`. Returns the culprits."""
    assert diagnosis["target"] == {"namespace": topology.name, "name": ENTRY}
    starts = {w for w in topology.names if grown(start, end, w, "own_failures") > 0}
    culprits = {c["name"]: c for c in diagnosis["culprits"]}
    assert set(culprits) == starts, diagnosis
    for name, culprit in culprits.items():
        hops = culprit["path"]
        assert [h["dst"] for h in hops] == list(topology.path_to(name)), culprit
        for hop in hops:
            sent = grown(start, end, hop["src"], "sent", hop["dst"], "requests")
            failed = grown(start, end, hop["src"], "sent", hop["dst"], "failed")
            assert sent > 0 and failed > 0, hop
            assert hop["success"] == pytest.approx(1 - failed / sent, abs=tolerance(sent)), (
                hop,
                sent,
                failed,
            )
        served, failed = grown(start, end, name, "served"), grown(start, end, name, "failed")
        assert hops[-1]["success"] == pytest.approx(1 - failed / served, abs=tolerance(served)), (
            served,
            failed,
        )
    return starts
