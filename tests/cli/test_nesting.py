"""Pure: the one rule for how deep a document may nest (`kubectl_mesh.nesting`), on values as json
gives them, and on `uninject`'s restore annotation. Oracle: depths built to the level, 256 passing
and 257 failing, and values far too deep for recursion judged without it."""

from __future__ import annotations

from typing import Any

import pytest

from kubectl_mesh import contract as c
from kubectl_mesh.inject import uninject_pod
from kubectl_mesh.inject.injector import RestoreError
from kubectl_mesh.nesting import MAX_DEPTH, deeper_than


def _nested(depth: int, kind: str) -> Any:
    """`depth` containers, each holding the next (built without recursion)."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [1, value] if kind == "list" else {"a": 1, "b": value}
    return value


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_value_may_nest_256_containers_and_not_257(kind: str) -> None:
    assert not deeper_than(_nested(MAX_DEPTH, kind))
    assert deeper_than(_nested(MAX_DEPTH + 1, kind))
    assert deeper_than(_nested(100_000, kind))  # no RecursionError: walked, not recursed
    assert not deeper_than("text") and not deeper_than([]) and deeper_than([[]], 1)


def test_a_shared_container_is_judged_where_it_stands_deepest() -> None:
    shared = _nested(MAX_DEPTH - 1, "dict")
    assert not deeper_than([shared, shared])
    assert deeper_than([shared, [shared]])


def _injected(restore: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {c.RESTORE_ANNOTATION: restore, c.INJECTED_BY_ANNOTATION: "x"}},
        "spec": {"containers": [{"name": "app"}, {"name": c.PROXY_CONTAINER_NAME}]},
    }


def test_a_restore_annotation_past_the_rule_is_an_error_not_a_recursion() -> None:
    """256 levels are read (a list: nothing to restore), 257 and 100,000 are a RestoreError
    (a MeshError: one line), whatever the stack; unreadable JSON still restores nothing."""
    assert uninject_pod(_injected("[" * MAX_DEPTH + "]" * MAX_DEPTH))[1]
    for depth in (MAX_DEPTH + 1, 100_000):
        with pytest.raises(RestoreError, match="nested too deeply"):
            uninject_pod(_injected("[" * depth + "]" * depth))
    pod, changed = uninject_pod(_injected("{not json"))
    assert changed and pod["spec"]["containers"] == [{"name": "app"}]
