"""The tap hub's rules, pure (proxy/tap.py): filters, the rate and request budgets, the bounded
queue and its dropped count, and `--to` holding a request until its response names the callee.
The real proxy's tap is tested end to end in test_tap.py."""

from __future__ import annotations

import json

import pytest

from proxy.tap import MAX_SUBSCRIBERS, QUEUE_EVENTS, Subscriber, TapFilter, TapFilterError, TapHub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(sub: Subscriber) -> list[dict[str, object]]:
    out = [json.loads(line) for line in sub.queue]
    sub.queue.clear()
    return out


def request(hub: TapHub, path: str = "/api", method: str = "GET", direction: str = "out") -> object:
    return hub.request(direction, method, "web:80", path, "ns/deployment/bot/bot-1", "web:80")


def test_untapped_hub_is_inactive_and_returns_nothing() -> None:
    hub = TapHub()
    assert not hub.active and request(hub) is None
    sub = hub.subscribe(TapFilter(), lambda: None)
    assert hub.active and sub is not None
    hub.unsubscribe(sub)
    assert not hub.active


def test_filters_select_by_path_prefix_method_authority_and_direction() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter.from_query("path=/api&method=post&direction=in"), lambda: None)
    assert sub is not None
    cases = [
        ("/api/vote", "POST", "in"),
        ("/list", "POST", "in"),
        ("/api", "GET", "in"),
        ("/api", "POST", "out"),
    ]
    shown = [case for case in cases if request(hub, *case) is not None]
    assert shown == [("/api/vote", "POST", "in")]
    (event,) = lines(sub)
    assert (event["type"], event["path"], event["method"], event["proxy"]) == (
        "req",
        "/api/vote",
        "POST",
        "in",
    )


def test_a_whole_request_is_three_events_with_one_id() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter(), lambda: None)
    assert sub is not None
    tap = request(hub)
    assert tap is not None
    tap.response(503, dst="ns/deployment/web/web-1")  # type: ignore[attr-defined]
    tap.end(42, error=None)  # type: ignore[attr-defined]
    req, rsp, end = lines(sub)
    assert req["id"] == rsp["id"] == end["id"]
    assert (req["type"], rsp["type"], rsp["status"], end["type"], end["response_bytes"]) == (
        "req", "rsp", 503, "end", 42,
    )  # fmt: skip
    assert rsp["dst"] == "ns/deployment/web/web-1" and req["tls"] is False


def test_rate_limit_and_request_budget() -> None:
    clock = Clock()
    hub = TapHub(clock)
    sub = hub.subscribe(TapFilter(max_rps=2), lambda: None)
    assert sub is not None
    shown = sum(request(hub) is not None for _ in range(10))
    assert shown == 2  # the bucket holds one second's worth
    clock.now += 0.5
    assert sum(request(hub) is not None for _ in range(10)) == 1
    budget = hub.subscribe(TapFilter(max_requests=3), lambda: None)
    assert budget is not None
    taps = [request(hub) for _ in range(5)]
    assert budget.requests == 3 and not budget.done
    for tap in taps:
        if tap is not None:
            tap.end(0)  # type: ignore[attr-defined]
    assert budget.done  # its requests have ended: the stream can close


def test_a_slow_subscriber_loses_events_counted_then_told() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter(max_rps=10_000), lambda: None)
    assert sub is not None
    for _ in range(QUEUE_EVENTS + 50):
        request(hub)
    assert len(sub.queue) == QUEUE_EVENTS and sub.dropped == 50
    sub.queue.clear()
    request(hub)
    dropped, req = lines(sub)
    assert dropped == {"type": "dropped", "count": 50} and req["type"] == "req"


def test_to_filter_holds_the_request_until_the_response_names_the_callee() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter.from_query("to=emojivoto/deployment/voting"), lambda: None)
    assert sub is not None
    to_voting, to_emoji, failed = request(hub), request(hub), request(hub)
    assert not sub.queue  # nothing known yet
    to_voting.response(500, dst="emojivoto/deployment/voting/voting-1")  # type: ignore[attr-defined]
    to_emoji.response(200, dst="emojivoto/deployment/emoji/emoji-1")  # type: ignore[attr-defined]
    failed.end(0, error="connect")  # type: ignore[attr-defined]  # no response: its callee is unknown
    to_voting.end(3)  # type: ignore[attr-defined]
    to_emoji.end(3)  # type: ignore[attr-defined]
    events = lines(sub)
    assert [(e["type"], e.get("dst")) for e in events] == [
        ("req", "emojivoto/deployment/voting/voting-1"),
        ("rsp", "emojivoto/deployment/voting/voting-1"),
        ("end", None),
    ]
    assert sub.open_requests == 0


def test_subscribers_are_capped() -> None:
    hub = TapHub()
    subs = [hub.subscribe(TapFilter(), lambda: None) for _ in range(MAX_SUBSCRIBERS)]
    assert all(subs) and hub.subscribe(TapFilter(), lambda: None) is None


@pytest.mark.parametrize(
    "query",
    ["direction=sideways", "to=voting", "max_rps=0", "max_rps=x", "max_requests=-1", "colour=red"],
)
def test_bad_filters_are_refused(query: str) -> None:
    with pytest.raises(TapFilterError):
        TapFilter.from_query(query)


def test_long_fields_are_clipped() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter(), lambda: None)
    assert sub is not None
    request(hub, path="/" + "a" * 100_000)
    (event,) = lines(sub)
    assert len(str(event["path"])) <= 2049


def test_a_rate_below_one_per_second_still_shows_requests() -> None:
    """`--max-rps 0.5` is accepted by the CLI and the endpoint; it must mean one request every 2 s,
    not none at all (the bucket's capacity was capped at 0.5 tokens, below the 1 a request takes)."""
    clock = Clock()
    hub = TapHub(clock)
    sub = hub.subscribe(TapFilter.from_query("max_rps=0.5"), lambda: None)
    assert sub is not None
    shown = []
    for _ in range(6):  # one request every 2 s for 12 s: each may be shown
        shown.append(request(hub) is not None)
        clock.now += 2.0
    assert shown == [True] * 6
    assert request(hub) is not None and request(hub) is None  # but not two at once


def test_requests_to_other_workloads_do_not_spend_a_to_filters_rate() -> None:
    """With `--to voting --max-rps 2`, calls to emoji (discarded once their response names emoji)
    must not use up the budget: the first voting call in that second is shown."""
    clock = Clock()
    hub = TapHub(clock)
    sub = hub.subscribe(TapFilter.from_query("to=emojivoto/deployment/voting&max_rps=2"), lambda: None)
    assert sub is not None
    for _ in range(5):
        to_emoji = request(hub)
        assert to_emoji is not None
        to_emoji.response(200, dst="emojivoto/deployment/emoji/emoji-1")  # type: ignore[attr-defined]
        to_emoji.end(3)  # type: ignore[attr-defined]
    to_voting = request(hub)
    assert to_voting is not None
    to_voting.response(500, dst="emojivoto/deployment/voting/voting-1")  # type: ignore[attr-defined]
    to_voting.end(3)  # type: ignore[attr-defined]
    assert [e["type"] for e in lines(sub)] == ["req", "rsp", "end"]


def test_requests_to_other_workloads_do_not_spend_a_to_filters_request_budget() -> None:
    hub = TapHub()
    sub = hub.subscribe(TapFilter.from_query("to=emojivoto/deployment/voting&max_requests=1"), lambda: None)
    assert sub is not None
    to_emoji = request(hub)
    assert to_emoji is not None
    to_emoji.response(200, dst="emojivoto/deployment/emoji/emoji-1")  # type: ignore[attr-defined]
    to_emoji.end(3)  # type: ignore[attr-defined]
    assert not sub.done  # nothing shown yet: the stream must not end
    to_voting = request(hub)
    assert to_voting is not None
    to_voting.response(200, dst="emojivoto/deployment/voting/voting-1")  # type: ignore[attr-defined]
    to_voting.end(3)  # type: ignore[attr-defined]
    assert [e["type"] for e in lines(sub)] == ["req", "rsp", "end"] and sub.done
