"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the demo can write to when it runs as nobody (tests/support/demo.py)."""
    with tempfile.TemporaryDirectory(prefix="mesh-demo-test-") as d:
        os.chmod(d, 0o777)
        yield Path(d)
