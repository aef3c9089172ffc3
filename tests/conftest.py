"""Test-wide configuration: markers that skip with a clear reason when a need is unmet."""

from __future__ import annotations

import os

import pytest

# grpcio's fork handlers, on by default, break a process started (fork + exec) while grpcio runs
# in the test process: the child aborts in grpcio's poller before its exec. The tests never use
# gRPC in a forked child. Set here, before any test module imports grpcio (the demo's tests
# import it at collection, and kubectl_mesh.demo.emojivoto does on import).
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

pytest_plugins = ["lab.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip_root = pytest.mark.skip(reason="needs root: network namespaces, iptables and other UIDs")
        for item in items:
            if item.get_closest_marker("root") or item.get_closest_marker("lab"):
                item.add_marker(skip_root)
