"""The RegistryPolicy handlers on a standby: a policy deleted and created again under its name.

Found by the 20-minute soak (seed 26): the standby's deletion handler was still waiting on the leader's
restores when the finalizer went, so it never forgot the old policy; the new one inherited its
"deleting" mark, and once that replica led, it restored every workload and never pinned them again.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from geopin.control.runtime import Runtime
from geopin.core.config import RunConfig
from geopin.handlers import policies
from tests.unit.asyncworld import EAST, REGISTRY, cache_of, deployment
from tests.unit.fakekube import FakeKube

# Called as Kopf calls them, with only the arguments they read (Kopf's decorator types want them all).
policy_changed: Any = policies.policy_changed
policy_deleted: Any = policies.policy_deleted
SPEC = {"registry": REGISTRY, "region": "eastus", "replicas": [{"region": "eastus"}, {"region": "westus"}]}


def policy_body(uid: str, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "contoso", "uid": uid, "generation": 1, "creationTimestamp": "2026-12-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:01:00Z"
    return {"metadata": meta, "spec": dict(SPEC)}


def standby() -> Runtime:
    """A replica that does not lead, watching a workload the leader pinned."""
    kube = FakeKube()
    pinned = deployment("web", f"{EAST}/web:1")
    pinned["metadata"]["annotations"] = {
        "geopin.io/original-images": json.dumps({"containers/app": f"{REGISTRY}/web:1"}),
        "geopin.io/pinned-region": "eastus",
    }
    kube.add(pinned)
    return Runtime(RunConfig(operator_namespace="geopin-system", workers=1), kube, cache_of(kube))


async def old_policy_being_deleted(memo: SimpleNamespace) -> None:
    """The old object is created, then deleted; the leader restores, so this replica's handler waits."""
    await policy_changed(name="contoso", body=policy_body("old"), type="ADDED", memo=memo)
    with pytest.raises(kopf.TemporaryError):
        await policy_deleted(name="contoso", body=policy_body("old", deleting=True), memo=memo)
    assert memo.runtime.book.entries["contoso"].deleting


def test_a_policy_created_again_under_its_name_is_not_deleting() -> None:
    runtime = standby()
    memo = SimpleNamespace(runtime=runtime)

    async def scenario() -> None:
        await old_policy_being_deleted(memo)
        # ...until the leader's handler removes the finalizer and the object is gone.
        await policy_changed(name="contoso", body=policy_body("old", deleting=True), type="DELETED", memo=memo)
        assert "contoso" not in runtime.book.entries
        await policy_changed(name="contoso", body=policy_body("new"), type="ADDED", memo=memo)
        entry = runtime.book.entries["contoso"]
        assert (entry.uid, entry.deleting) == ("new", False)
        await runtime.monitors.forget("contoso")

    asyncio.run(scenario())


def test_a_new_object_inherits_nothing_even_when_its_deletion_event_was_missed() -> None:
    runtime = standby()
    memo = SimpleNamespace(runtime=runtime)

    async def scenario() -> None:
        await old_policy_being_deleted(memo)
        # A watch that resumed after the deletion: no DELETED event, the new object straight away.
        await policy_changed(name="contoso", body=policy_body("new"), type="ADDED", memo=memo)
        entry = runtime.book.entries["contoso"]
        assert (entry.uid, entry.deleting) == ("new", False)
        await runtime.monitors.forget("contoso")

    asyncio.run(scenario())
