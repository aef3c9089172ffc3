"""The lab's session fixtures for tests/cli (the lab engineer's plugin, tests/lab/pytest_plugin.py)."""

from lab.pytest_plugin import lab, lab_namespace  # noqa: F401 - fixtures, used by name
