"""Client-side failover on the real control plane with real registries and real faults.

100 Deployments are pinned to eastus. The home replica is SIGKILLed, SIGSTOPped, or answers 503
through the fault proxy; the workloads must move to westus within seconds, come back only after the
failback delay, never follow a throttling replica, fall back to the global endpoint when nothing is
healthy, and survive an operator SIGKILL in the middle of repointing without double rewrites.

The eastus replica of the policy is reached through a fault proxy (pass-through by default) so
that HTTP-level faults can be injected; process faults are applied to the real registry behind it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.controlplane import WRITE_VERBS
from tests.harness.faultproxy import FaultProxy
from tests.harness.geopin_process import Operator, install_crd
from tests.harness.objects import deployment
from tests.harness.registries import RegistrySet
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.harness.controlplane import ControlPlane
    from tests.harness.pki import CA

pytestmark = pytest.mark.e2e

REGISTRY = "failover.azurecr.io"
NAMESPACE = "fleet"
COUNT = 100
FAILBACK_DELAY = 8
GROUP, VERSION, PLURAL = "geopin.io", "v1alpha1", "registrypolicies"
POLICY = "failover"


class Fleet:
    def __init__(self, cp: ControlPlane, registries: RegistrySet, proxy: FaultProxy, ca: CA) -> None:
        self.cp = cp
        self.registries = registries
        self.proxy = proxy
        self.ca = ca
        self.api: Any = cp.api_client()
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.endpoints = {
            "eastus": proxy.endpoint,
            "westus": registries["westus"].endpoint,
            "centralus": registries["centralus"].endpoint,
        }

    def original(self, i: int) -> str:
        return f"{REGISTRY}/fleet/app-{i}:1.{i}"

    def images(self) -> dict[str, str]:
        items = self.apps.list_namespaced_deployment(NAMESPACE).items
        return {d.metadata.name: d.spec.template.spec.containers[0].image for d in items}

    def generations(self) -> dict[str, int]:
        items = self.apps.list_namespaced_deployment(NAMESPACE).items
        return {d.metadata.name: d.metadata.generation for d in items}

    def on(self, region: str) -> bool:
        host = self.endpoints.get(region, REGISTRY)
        images = self.images()
        return len(images) == COUNT and all(
            image == self.original(int(name.split("-")[1])).replace(REGISTRY, host, 1) for name, image in images.items()
        )

    def originals_intact(self) -> bool:
        for d in self.apps.list_namespaced_deployment(NAMESPACE).items:
            i = int(d.metadata.name.split("-")[1])
            record = json.loads((d.metadata.annotations or {}).get("geopin.io/original-images", "{}"))
            if record and record != {"containers/app": self.original(i)}:
                return False
        return True

    def policy(self, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RegistryPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "registry": REGISTRY,
                "region": "eastus",
                "replicas": [{"region": r, "endpoint": e} for r, e in self.endpoints.items()],
                "probe": {"caBundle": self.ca.cert_pem.decode(), "failbackDelaySeconds": FAILBACK_DELAY},
                # The 100 images are never pushed: replication has its own test (test_replication.py).
                "replicationCheck": False,
                # Unpaced: these tests time the failover itself; test_a_switch_is_paced_... paces it.
                "failover": {"maxRepointsPerSecond": 0},
                **spec,
            },
        }

    def patch_policy(self, spec: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY, {"spec": spec})

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY).get("status", {})
        return status


@pytest.fixture(scope="module")
def fleet(control_plane: ControlPlane, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    install_crd(control_plane)
    with RegistrySet(ca) as registries, FaultProxy(registries["eastus"].endpoint, ca) as proxy:
        fleet = Fleet(control_plane, registries, proxy, ca)
        fleet.core.create_namespace({"metadata": {"name": NAMESPACE}})
        for i in range(COUNT):
            fleet.apps.create_namespaced_deployment(
                NAMESPACE,
                deployment(f"app-{i}", fleet.original(i), labels={"app": f"app-{i}"}),
            )
        fleet.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, fleet.policy())
        yield fleet
        fleet.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
        fleet.core.delete_namespace(NAMESPACE)
        fleet.api.close()


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    workdir: Path = tmp_path_factory.mktemp("failover-operator")
    op = Operator(control_plane, workdir)
    op.start()
    wait_until(lambda: fleet.on("eastus"), timeout=60, what="all 100 Deployments pinned to eastus")
    yield op
    op.stop()


@pytest.fixture
def healthy(fleet: Fleet, operator: Operator) -> Iterator[Fleet]:
    """Each test starts and ends with every replica up and every workload back home."""
    yield fleet
    fleet.proxy.set_mode("pass")
    fleet.registries["eastus"].heal()
    for region in ("westus", "centralus"):
        fleet.registries[region].heal()
    if not operator.alive():
        operator.start()
    wait_until(lambda: fleet.on("eastus"), timeout=60, what="workloads back on eastus after the test")


def _log_time(operator: Operator, pattern: str, after: float) -> float:
    """The wall time of the first operator log line matching ``pattern`` logged after ``after``."""
    for line in operator.log().splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= after - 0.5:
                return stamp
    raise AssertionError(f"no log line matching {pattern!r}")


def _failover(fleet: Fleet, operator: Operator, fault: str) -> dict[str, float]:
    began = time.time()
    if fault == "sigkill":
        fleet.registries["eastus"].stop()
    elif fault == "sigstop":
        fleet.registries["eastus"].pause()
    else:
        fleet.proxy.set_mode("http_503")
    wait_until(lambda: fleet.on("westus"), timeout=60, interval=0.05, what=f"all {COUNT} Deployments on westus")
    done = time.time()
    detected = _log_time(operator, r"replica eastus Healthy -> Unhealthy", began)
    figures = {"detect": detected - began, "repoint": done - detected, "total": done - began}
    print(f"failover after {fault}: {figures}")
    assert fleet.originals_intact()
    return figures


@pytest.mark.parametrize("fault", ["sigkill", "sigstop", "http_503"])
def test_outage_moves_every_workload_to_the_next_region(healthy: Fleet, operator: Operator, fault: str) -> None:
    fleet = healthy
    began = datetime.fromtimestamp(int(time.time()), UTC)  # Event timestamps have whole seconds
    figures = _failover(fleet, operator, fault)
    # Default probe settings: 5 s interval, 2 s timeout, 3 failures with quick 1 s re-probes.
    assert figures["total"] < 15, figures
    status = wait_until(
        lambda: (s := fleet.status()).get("activeRegion") == "westus" and s,
        timeout=15,
        what="status shows westus",
    )
    assert status["lastSwitch"]["from"] == "eastus"
    assert status["lastSwitch"]["to"] == "westus"
    assert status["lastSwitch"]["reason"] == "ReplicaUnhealthy"
    assert {c["type"]: c["status"] for c in status["conditions"]}["FailedOver"] == "True"
    assert any(r["region"] == "eastus" and r["state"] == "Unhealthy" for r in status["replicas"])
    switches = operator.metric(
        "geopin_endpoint_switches_total", policy=POLICY, from_region="eastus", to_region="westus"
    )
    assert switches is not None
    assert switches >= 1
    assert operator.metric("geopin_replica_healthy", policy=POLICY, region="eastus") == 0

    # Each workload's Repinned Event goes out after the repoint (the workers come first).
    def repinned() -> set[str]:
        items = fleet.core.list_namespaced_event(NAMESPACE, field_selector="reason=Repinned").items
        return {
            e.involved_object.name
            for e in items
            if e.metadata.creation_timestamp >= began and "pinned to westus" in (e.message or "")
        }

    wait_until(lambda: len(repinned()) == COUNT, timeout=60, what="a Repinned Event for every Deployment")

    # Recovery: back home only after the failback delay of uninterrupted health.
    recovered_at = time.time()
    fleet.proxy.set_mode("pass")
    fleet.registries["eastus"].heal()
    wait_until(lambda: fleet.on("eastus"), timeout=60, what="failback to eastus")
    healthy_again = _log_time(operator, r"replica eastus Unhealthy -> Healthy", recovered_at)
    first_move_back = _first_write_after(fleet, operator, healthy_again)
    assert first_move_back - healthy_again >= FAILBACK_DELAY - 0.5, (healthy_again, first_move_back)


def _first_write_after(fleet: Fleet, operator: Operator, after: float) -> float:
    """The audit time of the operator's first Deployment write at or after ``after``."""
    for event in fleet.cp.audit_events():
        if (event.get("user") or {}).get("username") != operator.user:
            continue
        if (event.get("objectRef") or {}).get("resource") != "deployments" or event.get("verb") != "patch":
            continue
        stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        if stamp >= after:
            return stamp
    raise AssertionError("no Deployment write after the recovery")


def test_a_failback_delay_under_way_survives_an_operator_restart(healthy: Fleet, operator: Operator) -> None:
    """A new process (a restart, a new leader) starts with no memory; the status it reads says eastus
    recovered moments ago, so workloads still move back only a whole failback delay after the recovery."""
    fleet = healthy
    fleet.registries["eastus"].stop()
    wait_until(lambda: fleet.on("westus"), timeout=60, what=f"all {COUNT} Deployments on westus")
    recovered_at = time.time()
    fleet.registries["eastus"].heal()
    healthy_again: float = wait_until(
        lambda: _log_time(operator, r"replica eastus Unhealthy -> Healthy", recovered_at),
        timeout=30,
        ignore=(AssertionError,),
        what="eastus healthy again",
    )

    def recovery_written() -> bool:
        status = fleet.status()
        rows = {r["region"]: r for r in status.get("replicas", [])}
        return rows.get("eastus", {}).get("state") == "Healthy" and "eastus" not in status.get("usableRegions", [])

    wait_until(recovery_written, timeout=15, interval=0.05, what="the status shows eastus waiting out its delay")
    operator.stop()
    operator.start()
    wait_until(lambda: fleet.on("eastus"), timeout=60, what="failback to eastus after the restart")
    first_move_back = _first_write_after(fleet, operator, healthy_again)
    assert first_move_back - healthy_again >= FAILBACK_DELAY - 1, (healthy_again, first_move_back)


def test_a_switch_is_counted_when_decided_not_when_the_repoint_settles(healthy: Fleet, operator: Operator) -> None:
    """api.md: geopin_endpoint_switches_total and EndpointSwitched count the decision when it is made."""
    fleet = healthy
    before = _switches(operator)
    mark, mark_time = fleet.cp.audit_line_count(), int(time.time())
    fleet.registries["eastus"].stop()
    counted_at: float = wait_until(
        lambda: _switches(operator) > before and time.time(), timeout=60, interval=0.05, what="the switch counted"
    )
    wait_until(lambda: fleet.on("westus"), timeout=60, what=f"all {COUNT} Deployments on westus")
    writes = [
        datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        for e in fleet.cp.audit_events(mark)
        if (e.get("user") or {}).get("username") == operator.user
        and (e.get("objectRef") or {}).get("resource") == "deployments"
        and e.get("verb") == "patch"
    ]
    assert len(writes) >= COUNT
    assert counted_at < max(writes), f"counted {counted_at - max(writes):.2f}s after the last repoint write"
    event = wait_until(
        lambda: [
            e
            for e in fleet.core.list_namespaced_event("default", field_selector="reason=EndpointSwitched").items
            if (e.message or "").startswith("eastus -> westus")
            and e.metadata.creation_timestamp.timestamp() >= mark_time
        ],
        timeout=15,
        what="an EndpointSwitched Event",
    )
    assert event


def _repoint_writes(fleet: Fleet, operator: Operator, mark: int) -> list[float]:
    """When the API server received each of the operator's Deployment patches since ``mark``."""
    return sorted(
        datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        for e in fleet.cp.audit_events(mark)
        if (e.get("user") or {}).get("username") == operator.user
        and (e.get("objectRef") or {}).get("resource") == "deployments"
        and e.get("verb") == "patch"
        and (e.get("responseStatus") or {}).get("code") == 200
    )


def _busiest_second(stamps: list[float]) -> int:
    return max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)


def test_a_switch_is_paced_both_ways_and_the_pending_gauge_shows_it(healthy: Fleet, operator: Operator) -> None:
    fleet = healthy
    per_second = 10
    fleet.patch_policy({"failover": {"maxRepointsPerSecond": per_second}})
    try:
        mark = fleet.cp.audit_line_count()
        fleet.registries["eastus"].stop()
        pending = wait_until(
            lambda: operator.metric("geopin_template_repoints_pending", policy=POLICY),
            timeout=30,
            interval=0.05,
            what="templates waiting for their turn",
        )
        wait_until(lambda: fleet.on("westus"), timeout=60, what=f"all {COUNT} Deployments on westus, paced")
        # strategy: Redirect is the default, but this operator serves no webhook: it repoints, and says why.
        path = next(c for c in fleet.status()["conditions"] if c["type"] == "FailoverPath")
        assert (path["status"], path["reason"]) == ("False", "NoAdmissionPath"), path
        assert "no admission webhook" in path["message"], path
        away = _repoint_writes(fleet, operator, mark)
        assert len(away) == COUNT, len(away)  # each template once
        assert _busiest_second(away) <= per_second + 1, away  # +1: jitter can pull slot s + 1.0 inside
        assert away[-1] - away[0] >= (COUNT - 1) / per_second * 0.95, away[-1] - away[0]
        wait_until(lambda: operator.metric("geopin_template_repoints_pending", policy=POLICY) == 0,
                   timeout=10, what="nothing left pending once the last worker is through")  # fmt: skip
        print(f"paced failover: {COUNT} writes over {away[-1] - away[0]:.1f}s, {pending:g} pending at first sight")

        mark = fleet.cp.audit_line_count()
        fleet.registries["eastus"].heal()
        wait_until(lambda: fleet.on("eastus"), timeout=FAILBACK_DELAY + 60, what="failback, paced")
        back = _repoint_writes(fleet, operator, mark)
        assert len(back) == COUNT, len(back)
        assert _busiest_second(back) <= per_second + 1, back
    finally:
        fleet.patch_policy({"failover": {"maxRepointsPerSecond": 0}})


def test_throttling_is_counted_but_moves_nothing(healthy: Fleet, operator: Operator) -> None:
    fleet = healthy

    def throttled() -> float:
        return operator.metric("geopin_probe_failures_total", policy=POLICY, region="eastus", reason="throttled") or 0

    before = throttled()
    mark = fleet.cp.audit_line_count()
    fleet.proxy.set_mode("http_429")
    # Enough probes to have crossed the failure threshold twice over, had 429 counted as a failure.
    wait_until(lambda: throttled() >= before + 6, timeout=60, what="six throttled probes")
    assert fleet.on("eastus")
    sent = [
        (e["verb"], e["objectRef"].get("name"), (e.get("responseStatus") or {}).get("code"))
        for e in fleet.cp.audit_events(mark)
        if (e.get("objectRef") or {}).get("resource") == "deployments"
        and (e.get("user") or {}).get("username") == operator.user
        and e.get("verb") in WRITE_VERBS
    ]
    assert sent == []  # not one request, not even a refused one
    assert operator.metric("geopin_replica_healthy", policy=POLICY, region="eastus") == 1


def test_no_healthy_replica_falls_back_to_global_and_stay_keeps_the_pin(healthy: Fleet, operator: Operator) -> None:
    fleet = healthy
    fleet.patch_policy({"fallback": "Stay"})
    for region in ("eastus", "westus", "centralus"):
        fleet.registries[region].stop()
    wait_until(
        lambda: all(r["state"] == "Unhealthy" for r in fleet.status().get("replicas", [])),
        timeout=60,
        what="every replica Unhealthy",
    )
    assert fleet.on("eastus"), "fallback: Stay keeps the last pin"

    fleet.patch_policy({"fallback": "Global"})
    wait_until(lambda: fleet.on("global"), timeout=30, what="every Deployment on the global endpoint")
    assert fleet.originals_intact()
    assert fleet.status()["activeRegion"] == "global"


def test_flapping_replica_switches_at_most_once_per_window(healthy: Fleet, operator: Operator) -> None:
    fleet = healthy
    switches_before = _switches(operator)
    stop = threading.Event()

    def flap() -> None:
        mode = "http_503"
        while not stop.is_set():
            fleet.proxy.set_mode(mode)  # type: ignore[arg-type]
            mode = "pass" if mode == "http_503" else "http_503"
            stop.wait(2.0)  # the fault's period: this thread *is* the flapping replica

    flapper = threading.Thread(target=flap, daemon=True)
    began = time.time()
    flapper.start()
    try:
        window_end = began + 2 * FAILBACK_DELAY
        wait_until(lambda: time.time() >= window_end, timeout=3 * FAILBACK_DELAY, what="two failback windows")
    finally:
        stop.set()
        flapper.join()
    elapsed = time.time() - began
    switches = _switches(operator) - switches_before
    assert switches <= elapsed / FAILBACK_DELAY + 1, (switches, elapsed)


def _switches(operator: Operator) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("geopin_endpoint_switches_total{") and f'policy="{POLICY}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_operator_killed_mid_repoint_finishes_after_restart(healthy: Fleet, operator: Operator) -> None:
    fleet = healthy
    generations = fleet.generations()
    fleet.registries["eastus"].stop()

    def some_moved() -> bool:
        moved = sum(image.startswith(fleet.endpoints["westus"]) for image in fleet.images().values())
        return 0 < moved < COUNT

    try:
        wait_until(some_moved, timeout=60, interval=0.01, what="repointing under way")
    finally:
        operator.kill()
    partially = sum(image.startswith(fleet.endpoints["westus"]) for image in fleet.images().values())
    operator.start()
    wait_until(lambda: fleet.on("westus"), timeout=60, what="every Deployment on westus after the restart")
    assert fleet.originals_intact()

    # Each template change bumps metadata.generation once; a patch in flight at the SIGKILL can be
    # committed while its audit record carries an error code, so generations are the honest count.
    after = fleet.generations()
    twice = {name: (generations[name], gen) for name, gen in after.items() if gen != generations[name] + 1}
    bumps = sorted({gen - generations[name] for name, gen in after.items()})
    print(f"killed with {partially}/{COUNT} repointed; generation bumps: {bumps}")
    assert not twice, f"each Deployment is rewritten exactly once across the two processes: {twice}"
