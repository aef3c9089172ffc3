"""`MeshError`: the one base of every error that kubectl-mesh shows to its user.

A `MeshError` is a message (one line that says what is wrong) and an optional hint (what to run
to fix it). Libraries raise their own subclasses (`KubeError`, `PrometheusError`, ...);
`kubectl_mesh.cli.main` catches `MeshError` once and prints

    error: <message>
    hint: <hint>            (only when there is one)

with exit code 1 and never a traceback. Anything else that escapes a command is a bug. Cheap to
import: the standard library only.
"""

from __future__ import annotations


class MeshError(Exception):
    """A user-facing failure: `message` says what is wrong, `hint` (may be empty) how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
