"""Shared helpers for the webhook tests: schema validation and pod fixtures."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import kubernetes_validate
from kubernetes_validate.utils import all_versions

NEWEST_SCHEMA_CAP = (1, 33)


@cache
def schema_version() -> str:
    """The newest Kubernetes schema kubernetes-validate ships that is <= 1.33."""
    usable = []
    for v in all_versions():
        major, minor = (int(x) for x in v.split(".")[:2])
        if (major, minor) <= NEWEST_SCHEMA_CAP:
            usable.append(((major, minor), v))
    assert usable, "kubernetes-validate has no schema <= 1.33"
    return max(usable)[1]


def validate_pod(pod: dict[str, Any]) -> None:
    """Raise if `pod` is not a valid core/v1 Pod per the Kubernetes OpenAPI schema (strict)."""
    obj = copy.deepcopy(pod)
    obj.setdefault("apiVersion", "v1")
    obj.setdefault("kind", "Pod")
    kubernetes_validate.validate(obj, schema_version(), strict=True)


def validate_object(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, schema_version(), strict=True)
