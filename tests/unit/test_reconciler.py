"""The reconciler against a FakeKube: what each answer of the API server makes a worker do."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from geopin.core.decisions import PolicySnapshot
from tests.unit.asyncworld import (
    DEPLOYMENT,
    EAST,
    REGISTRY,
    deployment,
    eventually,
    image,
    policy,
    reconciler,
    ref,
)
from tests.unit.fakekube import FakeKube, workload_path

PATH = workload_path(DEPLOYMENT, "apps", "web")


def record(kube: FakeKube, path: str = PATH) -> dict[str, str]:
    return dict(json.loads(kube.objects[path]["metadata"]["annotations"]["geopin.io/original-images"]))


def test_a_conflict_is_read_again_and_decided_again_never_overwriting_the_edit() -> None:
    kube = FakeKube()
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    worker = reconciler(kube)  # its cache still holds web:1

    def user_edit(body: dict[str, Any]) -> None:
        body["spec"]["template"]["spec"]["containers"][0]["image"] = f"{REGISTRY}/web:2"

    kube.before("PATCH", PATH, lambda: kube.edit(PATH, user_edit))  # lands between the read and the write
    asyncio.run(worker.reconcile(ref("web")))
    assert image(kube, "web") == f"{EAST}/web:2"
    assert record(kube) == {"containers/app": f"{REGISTRY}/web:2"}
    assert kube.count("PATCH", PATH) == 2  # the refused one (failed test, 422) and the recomputed one
    assert kube.count("GET", PATH) == 1


def test_forbidden_is_logged_once_clearly_and_kept_for_the_status_until_a_write_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = FakeKube()
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    kube.add(deployment("api", f"{REGISTRY}/api:1"))
    worker = reconciler(kube)
    kube.fail("PATCH", PATH, 403)
    with caplog.at_level(logging.ERROR, logger="geopin.control.reconciler"):
        asyncio.run(worker.reconcile(ref("web")))
    assert kube.count("PATCH", PATH) == 1  # retrying cannot help
    assert image(kube, "web") == f"{REGISTRY}/web:1"
    [line] = [r.getMessage() for r in caplog.records]
    assert "patching Deployment apps/web is forbidden (check geopin's RBAC): HTTP 403" in line
    assert worker.refused("contoso") == line
    assert worker.changes.status.is_set()  # the status loop will say so in Ready

    asyncio.run(worker.reconcile(ref("api")))
    assert worker.refused("contoso") == line  # another workload's write says nothing about this one
    asyncio.run(worker.reconcile(ref("web")))
    assert worker.refused("contoso") is None


def test_a_workload_gone_from_the_api_is_forgotten() -> None:
    kube = FakeKube()
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    worker = reconciler(kube)
    del kube.objects[PATH]  # deleted; its DELETED event is still on the way
    asyncio.run(worker.reconcile(ref("web")))
    assert worker.cluster.view(ref("web")) is None
    assert kube.count("GET", PATH) == 0
    assert worker.enqueue_if_needed(worker.cluster.views()) == 0


def test_a_timeout_is_retried_with_backoff_and_the_workload_written_once() -> None:
    kube = FakeKube()
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    worker = reconciler(kube)
    kube.fail("PATCH", PATH, TimeoutError(), times=2)
    asyncio.run(worker.reconcile(ref("web")))
    assert kube.count("PATCH", PATH) == 3
    assert image(kube, "web") == f"{EAST}/web:1"
    assert kube.objects[PATH]["metadata"]["generation"] == 2


def test_after_every_retry_timed_out_it_gives_up_until_the_next_resync(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    worker = reconciler(kube)
    kube.fail("PATCH", PATH, TimeoutError(), times=worker.retries)
    with caplog.at_level(logging.WARNING, logger="geopin.control.reconciler"):
        asyncio.run(worker.reconcile(ref("web")))
    assert kube.count("PATCH", PATH) == worker.retries
    assert image(kube, "web") == f"{REGISTRY}/web:1"
    assert "gave up on Deployment apps/web after 5 attempts" in caplog.records[-1].getMessage()
    assert worker.enqueue_if_needed(worker.cluster.views()) == 1  # the next resync finds it again


def test_a_replica_that_no_longer_leads_sends_nothing_and_does_not_retry(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube(may_write=lambda: False)
    kube.add(deployment("web", f"{REGISTRY}/web:1"))
    worker = reconciler(kube)
    with caplog.at_level(logging.WARNING):
        asyncio.run(worker.reconcile(ref("web")))
    assert kube.count("PATCH", PATH) == 1  # refused before it left (FakeKube, like Kube, asks may_write)
    assert image(kube, "web") == f"{REGISTRY}/web:1"
    assert not caplog.records


def test_workers_write_only_divergent_workloads_and_then_report_idle() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        for i in range(20):
            kube.add(deployment(f"app-{i}", f"{REGISTRY}/app-{i}:1"))
        kube.add(deployment("other", "docker.io/library/nginx:1"))
        worker = reconciler(kube)
        await worker.start()
        try:
            assert worker.enqueue_if_needed(worker.cluster.views()) == 20
            assert not worker.idle
            assert await worker.wait_idle(5.0)
            await eventually(lambda: all(image(kube, f"app-{i}").startswith(EAST) for i in range(20)), "all pinned")
        finally:
            await worker.stop()
        assert kube.count("PATCH") == 20  # nothing for nginx, nothing twice
        assert image(kube, "other") == "docker.io/library/nginx:1"

    asyncio.run(scenario())


def test_one_set_of_snapshots_per_unit_of_work(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    for i in range(30):
        kube.add(deployment(f"app-{i}", f"{REGISTRY}/app-{i}:1"))
    worker = reconciler(kube, policy("a"), policy("b", "fabrikam.azurecr.io"), policy("c", "example.azurecr.io"))
    calls: list[int] = []
    snapshots = worker.book.snapshots

    def counted() -> list[PolicySnapshot]:
        calls.append(1)
        return snapshots()

    monkeypatch.setattr(worker.book, "snapshots", counted)
    assert worker.enqueue_if_needed(worker.cluster.views()) == 30
    assert len(calls) == 1  # one resync of 30 workloads under 3 policies: one set of snapshots
    calls.clear()
    asyncio.run(worker.reconcile(ref("app-0")))
    assert len(calls) == 1  # one write: one set (no lookups were needed)
