"""Paced repoints: the token bucket, which writes count as moving a pin, and the reconciler taking turns."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from geopin.control.repoint_pacer import RepointPacer
from geopin.core.health import Target
from geopin.core.pacing import TokenBucket
from geopin.core.policy import from_spec
from geopin.core.rewrite import desired_state, moves_pin
from geopin.core.workloads import KINDS, view_of
from tests.unit.asyncworld import EAST, REGISTRY, WEST, deployment, entry, image, policy, reconciler, ref
from tests.unit.fakekube import FakeKube

POLICY = from_spec("contoso", {"registry": REGISTRY, "replicas": [{"region": "eastus"}, {"region": "westus"}]})
TO_EAST = Target("eastus", EAST)
TO_WEST = Target("westus", WEST)


def test_a_bucket_spaces_writes_evenly_and_saves_no_burst() -> None:
    bucket = TokenBucket(5.0)
    assert [bucket.reserve(0.0) for _ in range(5)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    # Idle for a long time: one token is saved, never a second's worth.
    assert [bucket.reserve(100.0) for _ in range(3)] == pytest.approx([0.0, 0.2, 0.4])
    # A slot reserved ahead is honoured: at 100.1 the next one is 0.5 s away (100.6).
    assert bucket.reserve(100.1) == pytest.approx(0.5)


def view(image_: str, **annotations: str) -> Any:
    body = deployment("web", image_)
    body["metadata"]["annotations"] = annotations
    return view_of(KINDS["Deployment"], body)


def pinned(target: Target) -> Any:
    first = desired_state(view(f"{REGISTRY}/web:1"), POLICY, target)
    annotations = {"geopin.io/original-images": '{"containers/app":"contoso.azurecr.io/web:1"}'}
    annotations["geopin.io/pinned-region"] = str(first.pinned_region)
    return view(first.images["containers/app"], **annotations)


def test_only_a_move_of_an_existing_pin_is_paced() -> None:
    fresh = view(f"{REGISTRY}/web:1")
    on_east = pinned(TO_EAST)
    assert not moves_pin(fresh, desired_state(fresh, POLICY, TO_EAST))  # a first pin
    assert moves_pin(on_east, desired_state(on_east, POLICY, TO_WEST))  # a failover
    assert moves_pin(on_east, desired_state(on_east, POLICY, Target("global", REGISTRY)))  # to the global endpoint
    assert not moves_pin(on_east, desired_state(on_east, POLICY, None))  # a restore (opt-out, deletion)
    assert not moves_pin(on_east, desired_state(on_east, POLICY, TO_EAST))  # nothing moves
    edited = view(f"{EAST}/web:2", **on_east.annotations)  # the user's new tag, to re-pin in place
    assert not moves_pin(edited, desired_state(edited, POLICY, TO_EAST))


class Recorder:
    """A clock that stands still and a sleep that records: the pace without waiting for it."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def moved_fleet(per_second: int, count: int = 5) -> tuple[FakeKube, Any, Recorder]:
    """``count`` Deployments pinned to eastus, then the policy's region changed to westus."""
    kube = FakeKube()
    for i in range(count):
        kube.add(deployment(f"web-{i}", f"{REGISTRY}/web:{i}"))
    worker = reconciler(kube, policy(failover={"maxRepointsPerSecond": per_second}))
    for i in range(count):
        asyncio.run(worker.reconcile(ref(f"web-{i}")))
    recorder = Recorder()
    worker.pacer = RepointPacer(clock=lambda: 0.0, sleep=recorder.sleep)
    for body in kube.objects.values():
        worker.cluster.upsert_workload(view_of(KINDS["Deployment"], body), body["metadata"]["resourceVersion"])
    worker.book.upsert(entry(policy(region="westus", failover={"maxRepointsPerSecond": per_second})))
    return kube, worker, recorder


def test_a_switch_writes_templates_at_the_policys_pace_and_counts_what_waits() -> None:
    kube, worker, recorder = moved_fleet(per_second=5)
    assert recorder.sleeps == []  # the first pins took no turn
    assert worker.enqueue_if_needed(worker.cluster.views()) == 5
    assert worker.pacer.pending("contoso") == 5

    async def drain() -> None:
        await worker.start()
        await worker.wait_idle(5.0)
        await worker.stop()

    asyncio.run(drain())
    assert all(image(kube, f"web-{i}") == f"{WEST}/web:{i}" for i in range(5))
    assert sorted(recorder.sleeps) == pytest.approx([0.2, 0.4, 0.6, 0.8])  # the first slot is now
    assert worker.pacer.pending("contoso") == 0


def test_workers_that_overslept_a_stall_take_fresh_slots_instead_of_writing_in_a_burst() -> None:
    now = [0.0]
    stall_ends = 10.0  # the event loop runs nothing between 0.1 s and 10 s
    turns: list[float] = []

    async def sleep(seconds: float) -> None:
        target = now[0] + seconds
        await asyncio.sleep(0)  # the other workers run meanwhile
        now[0] = max(now[0], target, stall_ends if target > 0.1 else 0.0)

    pacer = RepointPacer(clock=lambda: now[0], sleep=sleep)

    async def worker() -> None:
        await pacer.turn("contoso", 5)
        turns.append(now[0])

    async def switch() -> None:
        await asyncio.gather(*(worker() for _ in range(5)))

    asyncio.run(switch())
    assert turns[0] == 0.0
    after = sorted(turns[1:])
    assert after[0] >= stall_ends
    assert [round(b - a, 6) for a, b in itertools.pairwise(after)] == [0.2, 0.2, 0.2]


def test_zero_is_unpaced() -> None:
    kube, worker, recorder = moved_fleet(per_second=0)
    worker.enqueue_if_needed(worker.cluster.views())
    for i in range(5):
        asyncio.run(worker.reconcile(ref(f"web-{i}")))
    assert all(image(kube, f"web-{i}") == f"{WEST}/web:{i}" for i in range(5))
    assert recorder.sleeps == []


def test_a_write_that_waited_for_its_turn_is_planned_again_and_nothing_stale_is_sent() -> None:
    kube, worker, recorder = moved_fleet(per_second=5, count=2)
    patches = kube.count("PATCH")
    back_home = entry(policy(failover={"maxRepointsPerSecond": 5}))

    async def the_region_returns_meanwhile(seconds: float) -> None:
        await recorder.sleep(seconds)
        worker.book.upsert(back_home)  # the switch is undone while the second write waits

    worker.pacer = RepointPacer(clock=lambda: 0.0, sleep=the_region_returns_meanwhile)
    assert worker.enqueue_if_needed(worker.cluster.views()) == 2

    async def drain() -> None:
        await worker.start()
        await worker.wait_idle(5.0)
        await worker.stop()

    asyncio.run(drain())
    assert recorder.sleeps == pytest.approx([0.2])
    assert kube.count("PATCH") == patches + 1  # the first slot's write; the waiting one was dropped
    assert sorted(image(kube, f"web-{i}").split("/")[0] for i in range(2)) == sorted([EAST, WEST])
    assert worker.pacer.pending("contoso") == 0
