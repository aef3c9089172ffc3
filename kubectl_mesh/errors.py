"""The base of every user-facing error: one line for the user, and a hint of what to do."""

from __future__ import annotations


class MeshError(Exception):
    """A user-facing error: `message` is one line, `hint` (optional) says what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
