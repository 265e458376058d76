"""The probe loop (control/monitor.py) when a probe fails in a way nobody planned for."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from geopin.control.monitor import PolicyMonitor
from geopin.core.health import ReplicaState, Transition
from geopin.core.policy import from_spec
from geopin.io.probes import ProbeResult, RegistryClient

SECRET = "s3cret-in-an-exception-message"


class CrashingClient(RegistryClient):
    """A client whose probe raises what no classification foresaw (a bug, a library surprise)."""

    async def probe(self, endpoint: str, canary: str | None = None) -> ProbeResult:
        raise RuntimeError(f"something broke while holding {SECRET}")


async def first_transition() -> tuple[Transition, PolicyMonitor]:
    policy = from_spec(
        "corp",
        {
            "registry": "registry.contoso.com",
            "replicas": [{"region": "eastus", "endpoint": "eastus.registry.contoso.com"}],
            "probe": {"failureThreshold": 2, "intervalSeconds": 1, "timeoutSeconds": 1},
        },
    )
    seen: asyncio.Queue[Transition] = asyncio.Queue()

    class Listener:
        def usable_changed(self, policy: str) -> None:
            pass

        def transition(self, policy: str, transition: Transition) -> None:
            seen.put_nowait(transition)

    monitor = PolicyMonitor(policy, CrashingClient(), Listener())
    monitor.start()
    try:
        # Two failures 1 s apart (the quick re-probe) make it Unhealthy; the deadline is generous.
        transition = await asyncio.wait_for(seen.get(), timeout=20)
    finally:
        await monitor.stop()
    return transition, monitor


def test_an_unexpected_probe_exception_is_a_failure_observation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    transition, monitor = asyncio.run(first_transition())
    assert (transition.previous, transition.current) == (ReplicaState.UNKNOWN, ReplicaState.UNHEALTHY)
    health = monitor.tracker.replicas["eastus"]
    assert health.last_outcome == "connect"
    assert health.message == "probe failed unexpectedly (RuntimeError)"
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "probing eastus of policy corp failed unexpectedly" in logged
    assert SECRET not in logged  # the stack is logged, the exception's text is not


def test_a_restarted_monitor_resumes_a_redirect_hold_from_the_last_status() -> None:
    """The status says eastus has been Unhealthy for 590 s; the new process's own probes agree. Its hold
    (repointAfterSeconds 600) ends in about 10 s, not 600 s from now."""
    from datetime import UTC, datetime

    policy = from_spec(
        "corp",
        {
            "registry": "registry.contoso.com",
            "replicas": [{"region": "eastus", "endpoint": "eastus.registry.contoso.com"}],
            "probe": {"failureThreshold": 2, "intervalSeconds": 1, "timeoutSeconds": 1},
            "failover": {"repointAfterSeconds": 600},
        },
    )
    failed = datetime.fromtimestamp(time.time() - 590, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "replicas": [{"region": "eastus", "endpoint": "eastus.registry.contoso.com", "state": "Unhealthy",
                      "lastTransitionTime": failed}],
        "usableRegions": [],
    }  # fmt: skip

    async def scenario(restored: bool) -> float:
        decided: asyncio.Event = asyncio.Event()

        class Listener:
            def usable_changed(self, policy: str) -> None:
                decided.set()

            def transition(self, policy: str, transition: Transition) -> None:
                pass

        monitor = PolicyMonitor(policy, CrashingClient(), Listener())
        if restored:
            monitor.restore(status)
        monitor.start()
        try:
            await asyncio.wait_for(decided.wait(), timeout=20)
            assert monitor.held == frozenset({"eastus"})
            return monitor.unusable_since["eastus"] - monitor.clock()
        finally:
            await monitor.stop()

    assert asyncio.run(scenario(restored=True)) == pytest.approx(-590, abs=5)
    assert asyncio.run(scenario(restored=False)) == pytest.approx(0, abs=5)  # a first outage starts now
