"""How deep a document may nest: one rule for every reader of one (YAML and JSON inputs, and the
JSON of `uninject`'s restore annotation).

A Kubernetes object nests a few dozen containers at most. The limit is counted here, never left
to Python's recursion limit, which depends on the caller's stack: the same input read in one
process and in a worker of `kubectl mesh inject`'s pool (a deeper stack) got different verdicts.
It is low enough that every recursive step after (PyYAML's emitter takes three frames a level,
the YAML reader two, json one) fits within Python's 1000 frames. Pure; the standard library only.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 256


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` (dicts and lists, as json gives them) nests more than `limit` containers.
    Iterative: it judges values too deep for recursion. A container met again (a shared one) is
    walked again, as a writer would write it again."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    push = stack.append
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                push((child, depth + 1))
    return False
