"""`kubectl mesh diagnose`: the seed walkthrough's digging, done by walking the call graph. Pure.

    diagnose(target, inbound, edges, threshold) -> Diagnosis

From the target, follow every outbound edge whose success rate is below the threshold; at each
callee, do the same with its own outbound edges, and so on. A workload whose failing calls all
stop there (its own callees are healthy) is a culprit: the failures start with it. So is an
unmeshed destination at the end of a failing edge (the mesh cannot see inside it). When the
target's own inbound success is low and none of its calls fail, the target is the culprit.

Cycles: an edge back to a workload already on the path is not followed again. A workload whose
failing calls only go back into the path is reported as a culprit, with a note that a cycle
leads on (its callers and it fail each other; the mesh cannot tell who started).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from kubectl_mesh.graph.edges import Edge
from kubectl_mesh.stat.model import StatRow

DEFAULT_THRESHOLD = 0.99
Node = tuple[str, str]  # (namespace, name); an unmeshed destination has namespace ""


@dataclass(frozen=True)
class Culprit:
    """Where failures start, and the failing edges that lead there from the target."""

    node: Node
    path: tuple[Edge, ...]  # empty when the target itself is the culprit
    meshed: bool = True
    cycle_to: tuple[Node, ...] = ()  # failing calls back into the path, not followed

    def to_dict(self, kind: str) -> dict[str, object]:
        return {
            "kind": kind if self.meshed else None,
            "namespace": self.node[0] or None,
            "name": self.node[1],
            "meshed": self.meshed,
            "path": [e.to_dict() for e in self.path],
            "cycle_to": [{"namespace": ns, "name": n} for ns, n in self.cycle_to],
        }


@dataclass(frozen=True)
class Diagnosis:
    kind: str
    target: Node
    threshold: float
    inbound: StatRow | None  # the target's own row of `kubectl mesh stat` (None: not found)
    culprits: tuple[Culprit, ...] = field(default_factory=tuple)

    @property
    def healthy(self) -> bool:
        return not self.culprits

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "target": {"namespace": self.target[0], "name": self.target[1]},
            "threshold": self.threshold,
            "inbound": None if self.inbound is None else self.inbound.to_dict(),
            "healthy": self.healthy,
            "culprits": [c.to_dict(self.kind) for c in self.culprits],
        }


@dataclass
class _Visit:
    """A workload on the walk's stack: how it was reached, and its failing calls left to follow."""

    node: Node
    path: tuple[Edge, ...]
    on_path: frozenset[Node]
    bad: Iterator[Edge]
    followed: bool = False
    back: list[Node] = field(default_factory=list)


def diagnose(
    kind: str, target: Node, inbound: StatRow | None, edges: list[Edge], threshold: float = DEFAULT_THRESHOLD
) -> Diagnosis:
    """Culprits in the order the walk meets them (depth first, callees by name).

    Each workload is explored once (a second path to it adds nothing new), so the walk is linear
    in the edges, whatever the graph's shape.
    """
    outbound: dict[Node, list[Edge]] = {}
    for edge in edges:
        if edge.src_meshed:
            outbound.setdefault((edge.src_namespace, edge.src), []).append(edge)

    def failing(node: Node) -> list[Edge]:
        return sorted(
            (e for e in outbound.get(node, []) if e.success < threshold),
            key=lambda e: (e.dst_namespace, e.dst),
        )

    culprits: list[Culprit] = []
    found: set[Node] = set()
    explored: set[Node] = set()

    def add(culprit: Culprit) -> None:
        if culprit.node not in found:
            found.add(culprit.node)
            culprits.append(culprit)

    target_failing = inbound is not None and inbound.success is not None and inbound.success < threshold

    # Depth first with a stack of its own (a chain thousands of hops deep is no RecursionError).
    stack = [_Visit(target, (), frozenset({target}), iter(failing(target)))]
    explored.add(target)
    while stack:
        visit = stack[-1]
        call = next(visit.bad, None)
        if call is None:  # every failing call of this workload seen
            stack.pop()
            if not visit.followed and (visit.path or visit.back or target_failing):
                add(Culprit(visit.node, visit.path, cycle_to=tuple(visit.back)))
            continue
        callee = (call.dst_namespace, call.dst)
        if not call.dst_meshed:
            add(Culprit(callee, (*visit.path, call), meshed=False))
            visit.followed = True
        elif callee in visit.on_path:
            visit.back.append(callee)
        else:
            visit.followed = True  # reached before by another path: its culprits are known
            if callee not in explored:
                explored.add(callee)
                stack.append(
                    _Visit(callee, (*visit.path, call), visit.on_path | {callee}, iter(failing(callee)))
                )
    return Diagnosis(kind, target, threshold, inbound, tuple(culprits))
