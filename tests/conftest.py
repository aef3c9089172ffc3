"""Test-wide configuration: markers that skip with a clear reason when a need is unmet."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# grpcio's fork handlers, on by default, break a process started (fork + exec) while grpcio runs
# in the test process: the child aborts in grpcio's poller before its exec. The tests never use
# gRPC in a forked child. Set here, before any test module imports grpcio (the demo's tests
# import it at collection, and kubectl_mesh.demo.emojivoto does on import).
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

pytest_plugins = ["lab.pytest_plugin"]


@pytest.fixture(autouse=True, scope="session")
def _shared_injector_parts_stay_as_built() -> Iterator[None]:
    """Every pod injected in this process shares the injector's constant parts (one object each,
    kubectl_mesh/inject/shared.py): a test, or code under test, that edits one in place would leak
    that edit into every later pod. Whatever ran, at the end each part must be what was built."""
    yield
    from kubectl_mesh.inject import shared

    assert shared.changed() == [], f"shared injector parts were edited in place: {shared.changed()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip_root = pytest.mark.skip(reason="needs root: network namespaces, iptables and other UIDs")
        for item in items:
            if item.get_closest_marker("root") or item.get_closest_marker("lab"):
                item.add_marker(skip_root)
