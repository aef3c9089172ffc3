"""Test-wide configuration: markers that skip with a clear reason when a need is unmet."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["lab.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip_root = pytest.mark.skip(reason="needs root: network namespaces, iptables and other UIDs")
        for item in items:
            if item.get_closest_marker("root") or item.get_closest_marker("lab"):
                item.add_marker(skip_root)
