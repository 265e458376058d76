"""EventBacklog: Events wait while workers are busy (up to a deadline), go out in order, stay bounded.

Only the pure decision (`take`) and the bound are tested here, with an injected clock; that the
Events reach the API server after a real failover is tested end to end (tests/e2e/test_failover.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from geopin.io.event_backlog import EventBacklog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def backlog(idle: asyncio.Event, clock: Clock, **kwargs: Any) -> EventBacklog:
    return EventBacklog(kube=None, idle=idle, clock=clock, **kwargs)  # type: ignore[arg-type]


def workers(busy: bool) -> asyncio.Event:
    """The reconciler's idle flag: set while the workers have nothing to do."""
    idle = asyncio.Event()
    if not busy:
        idle.set()
    return idle


def involved(name: str) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "team"}}


def test_idle_workers_let_events_out_in_order() -> None:
    events = backlog(workers(busy=False), Clock())
    events.add(involved("a"), "Normal", "Repinned", "pinned to westus")
    events.add(involved("b"), "Normal", "Repinned", "pinned to westus")
    first, second = events.take(), events.take()
    assert first is not None
    assert second is not None
    assert [first.involved["metadata"]["name"], second.involved["metadata"]["name"]] == ["a", "b"]
    assert events.take() is None


def test_busy_workers_hold_events_until_idle() -> None:
    idle, clock = workers(busy=True), Clock()
    events = backlog(idle, clock, defer_seconds=30.0)
    events.add(involved("a"), "Normal", "Repinned", "pinned to westus")
    clock.now += 29.0
    assert events.take() is None
    idle.set()
    taken = events.take()
    assert taken is not None
    assert taken.reason == "Repinned"


def test_a_long_busy_spell_does_not_starve_events() -> None:
    clock = Clock()
    events = backlog(workers(busy=True), clock, defer_seconds=30.0)
    events.add(involved("a"), "Normal", "Repinned", "pinned to westus")
    clock.now += 5.0
    events.add(involved("b"), "Normal", "Repinned", "pinned to westus")
    clock.now += 25.0  # a is 30 s old, b 25 s
    taken = events.take()
    assert taken is not None
    assert taken.involved["metadata"]["name"] == "a"
    assert events.take() is None  # b is still young and the workers still busy


def test_the_backlog_is_bounded_and_drops_the_oldest() -> None:
    events = backlog(workers(busy=True), Clock(), limit=3)
    for name in "abcde":
        events.add(involved(name), "Normal", "Repinned", "pinned")
    assert [e.involved["metadata"]["name"] for e in events.pending] == ["c", "d", "e"]
    assert events.dropped == 2


def test_events_about_policies_go_out_while_workers_are_busy() -> None:
    events = backlog(workers(busy=True), Clock(), defer_seconds=30.0)
    events.add(involved("a"), "Normal", "Repinned", "pinned to westus")
    events.add({"kind": "RegistryPolicy", "metadata": {"name": "p"}}, "Warning", "ReplicaUnhealthy", "x", urgent=True)
    taken = events.take()
    assert taken is not None
    assert taken.reason == "ReplicaUnhealthy"
    assert events.take() is None
