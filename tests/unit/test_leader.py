"""Leader election on a FakeKube: the loop never dies, and a replica that cannot renew stops writing.

The Lease's timings are shortened (a 0.4 s lease) so that each scenario runs in well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import urllib3

from geopin.io.kube import Kube, NotLeading
from geopin.io.leader import LeaderElector
from tests.unit.asyncworld import eventually
from tests.unit.fakekube import FakeKube

LEASES = "/apis/coordination.k8s.io/v1/namespaces/geopin-system/leases"
LEASE = f"{LEASES}/geopin"


def elector(kube: FakeKube, identity: str = "a") -> LeaderElector:
    return LeaderElector(
        kube, "geopin-system", identity=identity, lease_duration=0.4, renew_period=0.05, retry_period=0.05
    )


def holder(kube: FakeKube) -> str:
    return str(kube.objects[LEASE]["spec"]["holderIdentity"])


class Terms:
    """Leadership terms as the callbacks saw them; ``failing``: starting to lead raises."""

    def __init__(self, failing: int = 0) -> None:
        self.started = 0
        self.stopped = 0
        self.failing = failing

    async def start(self) -> None:
        self.started += 1
        if self.started <= self.failing:
            raise ValueError("caBundle is not a valid PEM certificate bundle")

    async def stop(self) -> None:
        self.stopped += 1


def campaign(candidate: LeaderElector, terms: Terms, scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        candidate.start(terms.start, terms.stop)
        try:
            await scenario()
        finally:
            await candidate.stop()

    asyncio.run(run())


def test_a_failure_to_start_leading_steps_down_releases_and_campaigns_on() -> None:
    kube, terms = FakeKube(), Terms(failing=1)
    candidate = elector(kube)

    async def scenario() -> None:
        await eventually(lambda: terms.started == 2, "a second term after the failed one")
        assert terms.stopped == 1  # the failed term was stopped (whatever it had started is cleaned up)
        assert candidate.leading
        assert candidate.holds()

    campaign(candidate, terms, scenario)
    releases = [c for c in kube.calls if c == ("PUT", LEASE)]
    assert releases, "the Lease was written"
    assert holder(kube) == ""  # released on stop


def test_api_errors_never_end_the_election_loop() -> None:
    kube, terms = FakeKube(), Terms()
    kube.fail("GET", LEASE, 500, times=3)
    kube.fail("GET", LEASE, ConnectionResetError("reset by peer"))
    candidate = elector(kube)

    async def scenario() -> None:
        await eventually(lambda: candidate.leading, "leading once the API answers again")

    campaign(candidate, terms, scenario)
    assert terms.started == 1


def test_a_leader_that_cannot_renew_stops_writing_before_another_can_take_over() -> None:
    kube, terms = FakeKube(), Terms()
    candidate = elector(kube)
    writes = Kube(api_client=_Refuse(), may_write=candidate.holds)

    async def scenario() -> None:
        await eventually(lambda: candidate.leading, "leading")
        kube.fail("PUT", LEASE, 500, times=1000)  # the API server stops accepting renewals
        renewed = kube.objects[LEASE]["spec"]["renewTime"]
        await eventually(lambda: not candidate.holds(), "the fence closes", within=2.0)
        # The fence closes before the Lease could be taken: lease_duration after the last renewal.
        assert candidate.clock() - candidate._renewed_at < candidate.lease_duration
        try:
            await writes.patch_policy_status("p", {"observedGeneration": 1})
        except NotLeading:
            pass
        else:
            raise AssertionError("a write went out without the Lease")
        await eventually(lambda: terms.stopped == 1, "stepped down")
        assert kube.objects[LEASE]["spec"]["renewTime"] == renewed

    try:
        campaign(candidate, terms, scenario)
    finally:
        writes.close()


def test_a_renewal_stuck_past_the_deadline_is_abandoned() -> None:
    kube, terms = FakeKube(), Terms()
    candidate = elector(kube)
    stuck = asyncio.Event()

    async def scenario() -> None:
        await eventually(lambda: candidate.leading, "leading")
        original = kube.request

        async def hanging(path: str, method: str, body: Any = None) -> Any:
            if method == "PUT":
                await stuck.wait()  # a renewal that never comes back
            return await original(path, method, body)

        kube.request = hanging  # type: ignore[method-assign]
        await eventually(lambda: terms.stopped == 1, "stepped down although the call never returned", within=2.0)
        assert not candidate.holds()

    campaign(candidate, terms, scenario)


def test_the_standby_waits_for_the_lease_to_expire_on_its_own_clock() -> None:
    kube = FakeKube()
    first, second = elector(kube, "a"), elector(kube, "b")
    first_terms, second_terms = Terms(), Terms()

    async def scenario() -> None:
        await eventually(lambda: first.leading, "the first leads")
        second.start(second_terms.start, second_terms.stop)
        try:
            await eventually(lambda: second._observed is not None, "the standby has seen the Lease")
            assert not second.leading
            first._task.cancel()  # type: ignore[union-attr]  # the leader freezes: no renewal, no release
            await eventually(lambda: second.leading, "the standby takes over after expiry", within=2.0)
            # Taken no sooner than a lease after the last renewal was sent, and by then the frozen one's
            # fence had closed (its renew deadline is shorter than the lease).
            assert second.clock() - first._renewed_at >= first.lease_duration
            assert not first.holds()
            assert holder(kube) == "b"
        finally:
            await second.stop()

    campaign(first, first_terms, scenario)


class _Refuse:
    """An ApiClient that must never send: the fence refuses first."""

    rest_client = SimpleNamespace(pool_manager=urllib3.PoolManager())

    def param_serialize(self, *args: Any, **kwargs: Any) -> Any:
        return ()

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the request was sent: the fence did not hold it back")

    def close(self) -> None:
        pass
