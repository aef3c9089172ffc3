"""The pure injector and the mesh config it applies (like Linkerd's `pkg/inject`).

`inject_pod(pod, namespace, namespace labels, MeshConfig) -> Decision`, its inverse
`uninject_pod`, and `make_patch` (the RFC 6902 diff the admission answer carries). I/O-free apart
from `load_config`/`read_config_file`. Served by the admission webhook (`webhook/`) and by
`kubectl mesh inject`/`uninject`; it imports only the floor (contract, portlist, subnetlist, errors).
"""

from kubectl_mesh.inject.config import MeshConfig, MeshConfigError, load_config, read_config_file
from kubectl_mesh.inject.injector import (
    SKIP_REASONS,
    Decision,
    Workload,
    inject_pod,
    is_injected,
    make_patch,
    uninject_pod,
    workload_of,
)

__all__ = [
    "SKIP_REASONS",
    "Decision",
    "MeshConfig",
    "MeshConfigError",
    "Workload",
    "inject_pod",
    "is_injected",
    "load_config",
    "make_patch",
    "read_config_file",
    "uninject_pod",
    "workload_of",
]
