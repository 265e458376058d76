"""The leader's components together on a FakeKube, registries behind httpx.MockTransport.

Probe verdicts feed the reconciler, a policy that cannot start its probes stays its own problem, and
the status loop recounts every policy from one resync per pass.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import urllib3

from geopin.control.runtime import Runtime
from geopin.core.config import RunConfig
from geopin.core.decisions import PolicySnapshot
from geopin.core.rewrite import Desired
from geopin.core.workloads import KINDS, WorkloadView, view_of
from geopin.io.probes import Outcome, ProbeResult
from tests.unit.asyncworld import EAST, REGISTRY, WEST, cache_of, deployment, entry, eventually, image, policy, registry
from tests.unit.fakekube import FakeKube

COUNT = 10


def world(kube: FakeKube, up: Callable[[str], bool] = lambda host: True, watch_latency: float = 0.0) -> Runtime:
    """``watch_latency``: how long after a write its watch event reaches geopin (0: before the patch returns)."""
    for i in range(COUNT):
        kube.add(deployment(f"app-{i}", f"{REGISTRY}/app-{i}:1"))
    config = RunConfig(operator_namespace="geopin-system", workers=2)
    runtime = Runtime(config, kube, cache_of(kube), probe_transport=registry(up))

    def watched(body: dict[str, Any]) -> None:
        if body.get("kind") == "Deployment":
            view, version = view_of(KINDS["Deployment"], body), body["metadata"]["resourceVersion"]
            if watch_latency:
                asyncio.get_running_loop().call_later(watch_latency, runtime.workload_changed, view, version)
            else:
                runtime.workload_changed(view, version)

    kube.watch(watched)
    return runtime


def leading(runtime: Runtime, scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await runtime.lead()
        try:
            await scenario()
        finally:
            await runtime.unlead()

    asyncio.run(run())


def on(kube: FakeKube, host: str) -> bool:
    return all(image(kube, f"app-{i}").startswith(f"{host}/") for i in range(COUNT))


def status(kube: FakeKube, name: str) -> dict[str, Any]:
    return [s for n, s in kube.statuses if n == name][-1]


def ready(kube: FakeKube, name: str) -> dict[str, Any]:
    return next(c for c in status(kube, name)["conditions"] if c["type"] == "Ready")


def test_a_probe_verdict_repoints_the_workloads_at_once() -> None:
    kube = FakeKube()
    down: set[str] = set()
    runtime = world(kube, up=lambda host: host not in down)
    runtime.book.upsert(entry(policy(probe={"failureThreshold": 1})))

    async def scenario() -> None:
        await eventually(lambda: on(kube, EAST), "pinned to eastus after the first verdicts")
        loop = runtime.monitors.loops["contoso"]
        down.add(EAST)
        loop.record("eastus", ProbeResult(Outcome.HTTP_5XX, 503, 0.001, "GET /v2/: HTTP 503"))
        assert runtime.changes.usable.is_set()  # the transition reached the repointer, no polling
        await eventually(lambda: on(kube, WEST), "repointed to westus")
        await eventually(lambda: any(e["reason"] == "ReplicaUnhealthy" for e in kube.events), "the policy's Event")

    leading(runtime, scenario)
    writes = [path for method, path in kube.calls if method == "PATCH" and "/deployments/" in path]
    assert len(writes) == 2 * COUNT  # pinned once, repointed once


def test_a_policy_whose_probes_cannot_start_is_reported_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    runtime = world(kube)
    kube.add(
        {
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "geopin-system"},
            "data": {"token": base64.b64encode(b"not a docker config").decode()},
        }
    )
    broken = policy(
        "broken", "fabrikam.azurecr.io", credentials={"secretRef": {"namespace": "geopin-system", "name": "creds"}}
    )
    runtime.book.upsert(entry(broken))
    runtime.book.upsert(entry(policy()))

    async def scenario() -> None:
        assert runtime.leading
        assert "broken" not in runtime.monitors.loops
        assert "credentials secret geopin-system/creds" in runtime.monitors.failures["broken"]
        await eventually(lambda: on(kube, EAST), "the other policy acts")
        await runtime.reporter.report_all()
        await eventually(lambda: any(e["reason"] == "ProbeSetupFailed" for e in kube.events), "a Warning Event")

    leading(runtime, scenario)
    condition = ready(kube, "broken")
    assert (condition["status"], condition["reason"]) == ("False", "ProbeSetupFailed")
    assert ".dockerconfigjson" in condition["message"]
    assert ready(kube, "contoso")["status"] == "True"
    [event] = [e for e in kube.events if e["reason"] == "ProbeSetupFailed"]
    assert (event["name"], event["type"]) == ("broken", "Warning")


def test_a_failed_start_is_tried_again_and_clears_once_the_secret_is_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    runtime = world(kube)
    kube.add({"kind": "Secret", "metadata": {"name": "creds", "namespace": "geopin-system"}, "data": {"x": "eA=="}})
    runtime.book.upsert(entry(policy(credentials={"secretRef": {"namespace": "geopin-system", "name": "creds"}})))
    now = [1000.0]
    monkeypatch.setattr(runtime.monitors, "clock", lambda: now[0])

    async def scenario() -> None:
        assert "contoso" in runtime.monitors.failures
        config = base64.b64encode(b'{"auths": {"contoso.azurecr.io": {"username": "u", "password": "p"}}}').decode()
        kube.objects["/api/v1/namespaces/geopin-system/secrets/creds"]["data"] = {".dockerconfigjson": config}
        await runtime.monitors.retry_failed(runtime.book.entries.values())
        assert "contoso" in runtime.monitors.failures  # not yet: retries are spaced
        now[0] += 30.0
        await runtime.monitors.retry_failed(runtime.book.entries.values())
        assert "contoso" not in runtime.monitors.failures
        await eventually(lambda: on(kube, EAST), "pinned once its probes run")

    leading(runtime, scenario)


def test_the_status_loop_resyncs_once_per_pass_whatever_the_number_of_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    runtime = world(kube)
    for name, host in (("a", REGISTRY), ("b", "fabrikam.azurecr.io"), ("c", "example.azurecr.io")):
        runtime.book.upsert(entry(policy(name, host)))

    async def scenario() -> None:
        await eventually(lambda: on(kube, EAST), "pinned")
        await runtime.reconciler.wait_idle(5.0)
        planned: list[str] = []
        plan = runtime.reconciler.plan

        def counted(view: WorkloadView, snapshots: Sequence[PolicySnapshot]) -> Desired | None:
            planned.append(view.name)
            return plan(view, snapshots)

        monkeypatch.setattr(runtime.reconciler, "plan", counted)
        kube.statuses.clear()
        await runtime.reporter.report_all()
        assert len(planned) == COUNT  # each workload planned once, not once per policy
        assert sorted(name for name, _ in kube.statuses) == ["a", "b", "c"]
        assert status(kube, "a")["workloads"]["pinned"] == COUNT
        kube.statuses.clear()
        await runtime.reporter.report_all()
        assert kube.statuses == []  # nothing changed: nothing written

    leading(runtime, scenario)


def test_the_status_counts_writes_whose_watch_events_come_after_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write wakes the status loop when its patch returns; its watch event (what the counts read) can
    land after that pass. The late event must wake the loop again: else the count lags till the resync."""
    monkeypatch.setattr("geopin.control.reporting.DEBOUNCE_SECONDS", 0.0)
    monkeypatch.setattr("geopin.control.reporting.RESYNC_SECONDS", 3600.0)
    kube = FakeKube()
    runtime = world(kube, watch_latency=0.3)
    runtime.book.upsert(entry(policy()))

    async def scenario() -> None:
        await eventually(lambda: on(kube, EAST), "every template written")
        await eventually(
            lambda: bool(kube.statuses) and status(kube, "contoso").get("workloads", {}).get("pinned") == COUNT,
            "the status counting every pin",
        )

    leading(runtime, scenario)


def test_only_an_event_that_changes_what_geopin_keeps_wakes_the_status_loop() -> None:
    kube = FakeKube()
    runtime = world(kube)
    body = kube.objects["/apis/apps/v1/namespaces/apps/deployments/app-0"]
    view = view_of(KINDS["Deployment"], body)
    runtime.changes.status.clear()
    runtime.workload_changed(view, "1000")  # a status-only update: the same view, a new resourceVersion
    assert not runtime.changes.status.is_set()
    edited = {**body, "spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{REGISTRY}/x:2"}]}}}}
    runtime.workload_changed(view_of(KINDS["Deployment"], edited), "1001")
    assert runtime.changes.status.is_set()
    runtime.changes.status.clear()
    runtime.workload_gone(view.ref, "uid-0", "1002")
    assert runtime.changes.status.is_set()


def test_a_forbidden_write_shows_in_ready_until_a_write_succeeds() -> None:
    kube = FakeKube()
    runtime = world(kube)
    runtime.book.upsert(entry(policy()))

    async def scenario() -> None:
        kube.fail("PATCH", "/apis/apps/v1/namespaces/apps/deployments/app-0", 403, times=100)
        await eventually(
            lambda: sum(image(kube, f"app-{i}").startswith(EAST) for i in range(COUNT)) == COUNT - 1, "pinned"
        )
        await runtime.reconciler.wait_idle(5.0)
        await runtime.reporter.report_all()
        assert (ready(kube, "contoso")["reason"], ready(kube, "contoso")["status"]) == ("Forbidden", "False")
        assert "check geopin's RBAC" in ready(kube, "contoso")["message"]

    leading(runtime, scenario)


def test_an_unreachable_api_server_makes_one_warning_line_per_policy_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kube-apiserver restarting is a cluster's everyday life (the soak found the traceback this was)."""
    kube = FakeKube()
    runtime = world(kube)
    runtime.book.upsert(entry(policy()))
    dropped = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))

    async def scenario() -> None:
        await eventually(lambda: on(kube, EAST), "pinned")
        await runtime.reconciler.wait_idle(5.0)
        kube.fail("PATCH", "/apis/geopin.io/v1alpha1/registrypolicies/contoso/status", ConnectionRefusedError(111))
        kube.fail("PATCH", "/apis/geopin.io/v1alpha1/registrypolicies/contoso/status", dropped)
        kube.statuses.clear()
        caplog.clear()
        await runtime.reporter.report_all()
        await runtime.reporter.report_all()
        failed = [r for r in caplog.records if "reporting the status of policy contoso failed" in r.getMessage()]
        assert [(r.levelname, r.exc_info) for r in failed] == [("WARNING", None), ("WARNING", None)]
        assert all("\n" not in r.getMessage() for r in failed)
        await runtime.reporter.report_all()
        assert [name for name, _ in kube.statuses] == ["contoso"]  # written once the API server answers

    leading(runtime, scenario)
