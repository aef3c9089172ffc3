"""The worker's book of connections (webhook/connections.py): pure rules, a hand-moved clock."""

from __future__ import annotations

import pytest

from webhook.connections import BODY, BUSY, HANDSHAKE, HEAD, IDLE, Conn, ConnectionTable, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(**limits: float) -> tuple[ConnectionTable, Clock]:
    clock = Clock()
    return ConnectionTable(Limits(**limits), clock), clock  # type: ignore[arg-type]


def one_in_each_phase(t: ConnectionTable) -> list[Conn]:
    """Connections named after their phase: handshake, idle, head, body, busy."""
    conns = [t.open(phase)[0] for phase in (HANDSHAKE, IDLE, HEAD, BODY, BUSY)]
    for conn in conns[1:]:
        t.enter(conn, str(conn.handle))
    return conns


def test_each_phase_expires_at_its_own_deadline_counted_from_its_start() -> None:
    t, clock = table(tls_timeout=1, keepalive=5, header_timeout=2, body_timeout=3)
    hs, idle, head, body, busy = one_in_each_phase(t)
    clock.now += 0.99
    assert t.expired() == []
    clock.now += 0.02
    assert [c.handle for c in t.expired()] == ["handshake"]
    clock.now += 1
    assert [c.handle for c in t.expired()] == ["head"]
    clock.now += 1
    assert [c.handle for c in t.expired()] == ["body"]
    clock.now += 2
    assert [c.handle for c in t.expired()] == ["idle"]
    clock.now += 1000
    assert t.expired() == []  # busy: the app and the response are never cut
    assert all(c.gone and c.why == "timeout" for c in (hs, idle, head, body))
    assert not busy.gone and t.count == 5 and t.live == 1
    assert t.take_shed() == {"expired": 4, "evicted": 0}


def test_progress_within_a_phase_does_not_extend_it_but_a_new_phase_does() -> None:
    t, clock = table(header_timeout=2, keepalive=5)
    c, _ = t.open("c")
    t.enter(c, HEAD)
    clock.now += 1.5
    assert t.expired() == []
    t.enter(c, BUSY)
    t.enter(c, IDLE)  # the next request's wait starts afresh
    clock.now += 4
    assert t.expired() == []
    clock.now += 1.01
    assert t.expired() == [c]


def test_at_the_cap_the_longest_waiting_goes_whatever_its_phase_and_busy_never() -> None:
    t, clock = table(max_connections=3)
    busy, _ = t.open("busy")
    t.enter(busy, BUSY)
    clock.now += 1
    idle, _ = t.open("idle")
    t.enter(idle, IDLE)
    clock.now += 1
    hs, _ = t.open("handshake")
    clock.now += 1
    new, victims = t.open("new")
    assert victims == [idle] and idle.why == "evicted"
    assert t.enter(idle, HEAD) is False  # told to stop: it must not go on
    t.close(idle)
    clock.now += 1
    _, victims = t.open("newer")
    assert victims == [hs]
    t.enter(new, BUSY)
    t.close(hs)
    _, victims = t.open("newest")
    assert [v.handle for v in victims] == ["newer"]
    assert t.live == 3 and t.take_shed() == {"expired": 0, "evicted": 3}


def test_when_every_connection_is_busy_nothing_is_evicted() -> None:
    t, _ = table(max_connections=1)
    c, _ = t.open("a")
    t.enter(c, BUSY)
    _, victims = t.open("b")
    assert victims == [] and t.live == 2


def test_body_budget_evicts_the_oldest_bodies_and_refuses_only_when_none_left() -> None:
    t, clock = table(body_budget=10 * 1024 * 1024)
    a, _ = t.open("a")
    b, _ = t.open("b")
    c, _ = t.open("c")
    assert t.reserve(a, 4 << 20) == (True, [])
    t.enter(a, BODY)
    clock.now += 1
    assert t.reserve(b, 4 << 20) == (True, [])
    t.enter(b, BODY)
    granted, victims = t.reserve(c, 4 << 20)
    assert granted and victims == [a] and t.body_bytes == 8 << 20
    t.enter(b, BUSY)  # b's body is complete: the app holds it, it cannot be evicted
    t.enter(c, BUSY)
    d, _ = t.open("d")
    granted, victims = t.reserve(d, 4 << 20)
    assert not granted and victims == [] and d.reserved == 0
    t.release(b)
    assert t.reserve(d, 4 << 20) == (True, []) and t.body_bytes == 8 << 20


def test_closing_releases_everything() -> None:
    t, _ = table()
    c, _ = t.open("c")
    t.reserve(c, 1000)
    t.enter(c, BODY)
    t.close(c)
    assert (t.count, t.live, t.body_bytes) == (0, 0, 0)
    assert t.expired() == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MESH_WEBHOOK_HEADER_TIMEOUT": "0"}, "MESH_WEBHOOK_HEADER_TIMEOUT='0': expected a positive number"),
        ({"MESH_WEBHOOK_MAX_CONNECTIONS": "lots"}, "expected a positive integer"),
        ({"MESH_WEBHOOK_BODY_BUDGET": "1024"}, "must hold one body"),
    ],
)
def test_limits_from_env_refuse_bad_values_with_the_variable_named(env: dict[str, str], message: str) -> None:
    from webhook.worker import limits_from_env

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        limits_from_env(env)
    assert limits_from_env({"MESH_WEBHOOK_BODY_TIMEOUT": "2.5"}).body_timeout == 2.5


def test_at_shutdown_only_the_connections_waiting_for_a_request_are_dropped() -> None:
    t, _ = table()
    hs, idle, head, body, busy = one_in_each_phase(t)
    assert t.drop_waiting() == [hs, idle]
    assert not (head.gone or body.gone or busy.gone) and t.live == 3
    assert t.take_shed() == {"expired": 0, "evicted": 0}  # a shutdown sheds nothing
