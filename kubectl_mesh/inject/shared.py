"""Parts of injected pods that every pod needing the same ones shares: one object, never changed.

The proxy's probes, security context and resources, its fixed environment entries, the init
container for the usual ports and the lock volume are the same for every pod injected with one
`MeshConfig`. The injector builds each once (`part`) and puts the same object into every pod, so
a writer can tell them by identity: `kubectl mesh inject`'s YAML writer (`manifests`) writes each
one's text once per indentation and copies it after, instead of writing the same ~100 lines again
for each of 120k pods (docs/architecture.md, "Manifests").

Rules that keep identity a safe key: a part is kept here for the life of the process (its id is
never reused by another object), at most `LIMIT` of them (beyond, `part` builds a fresh object
each time, which is merely slower); nothing ever changes a part once built (the injector copies
every level it changes, and its callers do not edit its output in place). `is_shared` knows the
parts and every container inside them: a YAML dumper must not write an anchor for an object
that two pods of one document share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

LIMIT = 512  # parts kept; a config gives about 20 (the webhook may see a few configs in its life)

_parts: dict[Hashable, Any] = {}
_texts: dict[Hashable, str] = {}  # each part's content when built: `changed()` compares
# id -> the object, for the parts and every dict and list inside them; read-only. Holding the
# object is what keeps its id its own: a part dropped from `_parts` (a test swapping the registry)
# would otherwise free the object, and the next dict given its address would pass for shared and
# be written as the part's cached text (a corpus run once wrote the proxy's resources as an
# emptyDir's fields).
IDS: dict[int, Any] = {}


def part(key: Hashable, build: Callable[[], T]) -> T:
    """The part named `key`, built by `build()` the first time. The key holds everything the part
    is made from (a MeshConfig by its `identity`), so equal keys may share one part."""
    found = _parts.get(key)
    if found is not None:
        return found
    value = build()
    if len(_parts) < LIMIT:
        kept = _parts.setdefault(key, value)  # one part per key, even if two threads built one
        if kept is value:
            _mark(value)
            _texts[key] = _text(value)
        return kept
    return value


def changed() -> list[Hashable]:
    """The keys of parts whose content is no longer what was built: someone edited a shared part
    in place, which would leak into every later pod. Empty, always; the tests check it."""
    return [key for key, value in list(_parts.items()) if _texts.get(key) != _text(value)]


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def is_shared(obj: object) -> bool:
    """Whether `obj` is a part or a container inside one: the same object in many pods."""
    return id(obj) in IDS


def _mark(value: Any) -> None:
    if isinstance(value, dict):
        IDS[id(value)] = value
        for item in value.values():
            _mark(item)
    elif isinstance(value, list):
        IDS[id(value)] = value
        for item in value:
            _mark(item)
