"""`kubectl mesh stat`, split into pure parts and injectable sources (used by the CLI and the demo).

- `model`: StatRequest (what is asked; `build_request` validates the flags), Workload, StatRow.
- `planner`: StatRequest -> PromQL (pure).
- `compute`: `compute_stat(request, query, workloads) -> rows` with injectable sources.
- `render`: rows -> table / JSON / YAML text (pure).
- `sources`: the Kubernetes lister of workloads for the CLI.

Example (the demo's use, no Kubernetes):

    from kubectl_mesh.stat import StatRequest, Workload, compute_stat, render
    request = StatRequest(kind="deployment", namespace="emojivoto")
    rows = compute_stat(request, prometheus.query, lambda r: my_workloads_of_kind(r.kind))
    print(render(rows, request) or "No traffic found.")
"""

from kubectl_mesh.stat.compute import compute_stat
from kubectl_mesh.stat.model import ResourceRef, StatInputError, StatRequest, StatRow, Workload, build_request
from kubectl_mesh.stat.render import render

__all__ = [
    "ResourceRef",
    "StatInputError",
    "StatRequest",
    "StatRow",
    "Workload",
    "build_request",
    "compute_stat",
    "render",
]
