"""stat's flags: forms of resources, exclusive flags, the time window (pure validation)."""

from __future__ import annotations

import pytest

from kubectl_mesh.stat.model import (
    ResourceRef,
    StatInputError,
    build_request,
    duration_seconds,
    parse_resources,
)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["deploy"], ("deployment", ())),
        (["deployments", "web", "emoji"], ("deployment", ("web", "emoji"))),
        (["deploy/web", "deployment/emoji"], ("deployment", ("web", "emoji"))),
        (["po/web-1"], ("pod", ("web-1",))),
        (["ns"], ("namespace", ())),
        (["sts"], ("statefulset", ())),
        (["ds"], ("daemonset", ())),
        (["jobs"], ("job", ())),
        (["rs"], ("replicaset", ())),
        (["all"], ("all", ())),
    ],
)
def test_resource_forms(words: list[str], expected: tuple[str, tuple[str, ...]]) -> None:
    assert parse_resources(words) == expected


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "name a resource type"),
        (["svc"], 'unknown resource type "svc"'),
        (["deploy/web", "po/x"], "one type"),
        (["deploy/web", "emoji"], "mix of TYPE/NAME"),
        (["deploy", "Web_1"], "not a valid Kubernetes object name"),
        (["all", "web"], '"all" takes no names'),
    ],
)
def test_bad_resources(words: list[str], message: str) -> None:
    with pytest.raises(StatInputError, match=message):
        parse_resources(words)


def base(**flags: object) -> dict[str, object]:
    args: dict[str, object] = {"resources": ["deploy"], "namespace": "default", "namespace_given": False}
    args.update(flags)
    return args


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"to": "a", "from_": "b"}, "--to and --from cannot be used together"),
        ({"to": "a", "to_namespace": "x", "from_namespace": "y"}, "cannot be used together"),
        ({"to_namespace": "x"}, "--to-namespace needs --to"),
        ({"from_namespace": "x"}, "--from-namespace needs --from"),
        ({"all_namespaces": True, "namespace_given": True}, "-A/--all-namespaces and -n/--namespace"),
        ({"resources": ["ns"], "namespace_given": True}, "not namespaced"),
        ({"window": "10s"}, "longer than the 10s scrape interval"),
        ({"window": "5s"}, "longer than the 10s scrape interval"),
        ({"window": "1 minute"}, "is not a duration"),
        ({"to": "all/web"}, 'not "all"'),
        ({"from_": "svc/web"}, 'unknown resource type "svc"'),
        ({"to": "ns/x", "to_namespace": "y"}, "--to-namespace cannot be used when --to is a namespace"),
        ({"output": "xml"}, "unknown output format"),
    ],
)
def test_flag_conflicts_are_rejected_with_a_clear_message(flags: dict[str, object], message: str) -> None:
    with pytest.raises(StatInputError, match=message):
        build_request(**base(**flags))  # type: ignore[arg-type]


def test_bare_from_name_is_a_deployment_in_the_given_namespace() -> None:
    req = build_request(**base(from_="web", from_namespace="emojivoto", all_namespaces=True))  # type: ignore[arg-type]
    assert req.from_ == ResourceRef("deployment", "web", "emojivoto")
    assert req.mode == "from"


def test_to_namespace_defaults_to_the_namespace() -> None:
    req = build_request(**base(to="po/x", namespace="shop", namespace_given=True))  # type: ignore[arg-type]
    assert req.to == ResourceRef("pod", "x", "shop")


def test_durations() -> None:
    assert duration_seconds("1m") == 60
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("15s") == 15
    assert build_request(**base(window="15s")).window_seconds == 15  # type: ignore[arg-type]
