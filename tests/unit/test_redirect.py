"""Failover without restarts, pure: which Pods move where (admission and rescue), and which templates stay."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from geopin.core.conditions import failover_path
from geopin.core.decisions import PolicySnapshot, decide
from geopin.core.health import held_regions, hold_ends
from geopin.core.policy import FailoverSettings, Policy, Strategy, from_spec
from geopin.core.redirect import move_pod, owner_candidates
from geopin.core.workloads import KINDS, view_of

REGISTRY = "contoso.azurecr.io"
EAST, WEST = "contoso.eastus.geo.azurecr.io", "contoso.westus.geo.azurecr.io"
SIDECAR = {"name": "log", "image": "busybox:1"}
RECORD = json.dumps({"containers/app": f"{REGISTRY}/shop/web:1"}, separators=(",", ":"))


def policy(**failover: Any) -> Policy:
    spec = {"registry": REGISTRY, "region": "eastus", "replicas": [{"region": "eastus"}, {"region": "westus"}]}
    return from_spec("contoso", {**spec, "failover": failover} if failover else spec)


def snapshot(
    usable: set[str], *, redirects: bool = True, held: frozenset[str] | set[str] = frozenset(), **failover: Any
) -> PolicySnapshot:
    return PolicySnapshot(
        policy=policy(**failover),
        cluster_region="eastus",
        usable=frozenset(usable),
        redirects=redirects,
        held=frozenset(held),
    )


def deployment(image: str = f"{EAST}/shop/web:1", **annotations: str) -> Any:
    body = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "web"},
            "annotations": {"geopin.io/original-images": RECORD, "geopin.io/pinned-region": "eastus", **annotations},
        },
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "image": image}, {"name": "log", "image": "busybox:1"}]}
            }
        },
    }
    return view_of(KINDS["Deployment"], body)


def pod(image: str = f"{EAST}/shop/web:1", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-7d4b9-x2k",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4b9"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9", "controller": True}],
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {"containers": [{"name": "app", "image": image}, dict(SIDECAR)]},
    }


def applied(body: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    return jsonpatch.apply_patch(copy.deepcopy(body), patch)  # type: ignore[no-any-return]


def test_owner_candidates_follow_the_controllers_naming() -> None:
    assert owner_candidates(pod(), "shop") == [("Deployment", "shop", "web"), ("ReplicaSet", "shop", "web-7d4b9")]
    job_pod = {"metadata": {"ownerReferences": [{"kind": "Job", "name": "nightly-2906", "controller": True}]}}
    assert owner_candidates(job_pod, "ops") == [("Job", "ops", "nightly-2906"), ("CronJob", "ops", "nightly")]
    sts_pod = {"metadata": {"ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": True}]}}
    assert owner_candidates(sts_pod, "ops") == [("StatefulSet", "ops", "db")]
    not_controller = {"metadata": {"ownerReferences": [{"kind": "StatefulSet", "name": "db"}]}}
    assert owner_candidates(not_controller, "ops") == []


def test_a_new_pod_of_a_template_pinned_to_an_unusable_replica_is_pinned_to_the_target() -> None:
    move = move_pod(pod(), "shop", deployment(), [snapshot({"westus"})], None, admission=True)
    assert move is not None
    assert (move.policy, move.from_region, move.to_region) == ("contoso", "eastus", "westus")
    after = applied(pod(), move.patch)
    assert [c["image"] for c in after["spec"]["containers"]] == [f"{WEST}/shop/web:1", "busybox:1"]
    assert after["metadata"]["annotations"]["geopin.io/pinned-region"] == "westus"
    assert json.loads(after["metadata"]["annotations"]["geopin.io/original-images"]) == json.loads(RECORD)


@pytest.mark.parametrize(
    ("why", "the_pod", "owner", "snap"),
    [
        ("its replica is usable", pod(), deployment(), snapshot({"eastus", "westus"})),
        ("no admission path", pod(), deployment(), snapshot({"westus"}, redirects=False)),
        ("the user edited the Pod's image", pod(f"{EAST}/shop/web:2"), deployment(), snapshot({"westus"})),
        # The soak found it: a user rolls the Deployment to a new tag while its pinned replica is down; the
        # first Pod of the edit (the global name, not yet pinned by geopin) was taken for the old pin's and
        # redirected to a replica the new tag had not reached, before any lookup of it.
        (
            "the user edited the template, not yet pinned",
            pod(f"{REGISTRY}/shop/web:2"),
            deployment(f"{REGISTRY}/shop/web:2"),
            snapshot({"westus"}),
        ),
        ("no owner geopin knows", pod(), None, snapshot({"westus"})),
        ("the owner opted out", pod(), deployment(**{"geopin.io/skip": "true"}), snapshot({"westus"})),
        ("nothing usable: the global endpoint is the template's business", pod(), deployment(), snapshot(set())),
    ],
)
def test_pods_geopin_would_not_pin_there_are_left_alone(why: str, the_pod: Any, owner: Any, snap: Any) -> None:
    moved = move_pod(the_pod, "shop", owner, [snap], None, admission=True)
    if why.startswith("nothing usable"):
        assert moved is not None
        assert moved.to_region == "global"
    else:
        assert moved is None, why


def test_a_workload_pinned_by_its_own_preference_to_a_healthy_replica_is_not_redirected() -> None:
    owner = deployment(f"{WEST}/shop/web:1", **{"geopin.io/region": "westus", "geopin.io/pinned-region": "westus"})
    assert move_pod(pod(f"{WEST}/shop/web:1"), "shop", owner, [snapshot({"westus"})], None, admission=True) is None


def test_rescue_moves_only_the_containers_waiting_on_a_pull_and_only_when_enabled() -> None:
    stuck = pod()
    stuck["spec"]["containers"][1]["image"] = f"{EAST}/shop/log:1"
    record = json.dumps({"containers/app": f"{REGISTRY}/shop/web:1", "containers/log": f"{REGISTRY}/shop/log:1"})
    owner = view_of(
        KINDS["Deployment"],
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "geopin.io/original-images": record, "geopin.io/pinned-region": "eastus"}},
            "spec": {"template": {"spec": {"containers": stuck["spec"]["containers"]}}},
        },
    )  # fmt: skip
    move = move_pod(stuck, "shop", owner, [snapshot({"westus"})], None, admission=False, containers={"containers/app"})
    assert move is not None
    after = applied(stuck, move.patch)
    assert [c["image"] for c in after["spec"]["containers"]] == [f"{WEST}/shop/web:1", f"{EAST}/shop/log:1"]
    off = snapshot({"westus"}, rescuePods=False)
    assert move_pod(stuck, "shop", owner, [off], None, admission=False, containers={"containers/app"}) is None


def test_a_redirected_pod_carries_its_pin_and_is_rescued_again_from_it() -> None:
    """A Pod redirected to westus, whose westus then fails too, moves on by its own record."""
    carried = pod(f"{WEST}/shop/web:1", **{"geopin.io/original-images": RECORD, "geopin.io/pinned-region": "westus"})
    three = from_spec("contoso", {"registry": REGISTRY, "region": "eastus", "replicas": [
        {"region": "eastus"}, {"region": "westus"}, {"region": "centralus"}]})  # fmt: skip
    snap = PolicySnapshot(policy=three, cluster_region="eastus", usable=frozenset({"centralus"}), redirects=True)
    move = move_pod(carried, "shop", None, [snap], None, admission=False, containers={"containers/app"})
    assert move is not None
    assert (move.from_region, move.to_region) == ("westus", "centralus")


def test_a_held_replica_keeps_the_templates_pin_and_only_that_workloads() -> None:
    pinned = deployment()
    template: dict[str, Any] = {"spec": {"containers": [{"name": "app", "image": f"{REGISTRY}/x:1"}]}}
    body = {"kind": "Deployment", "metadata": {"name": "new", "namespace": "shop"}, "spec": {"template": template}}
    fresh = view_of(KINDS["Deployment"], body)
    held = snapshot({"westus"}, held={"eastus"})
    assert decide(held, pinned, None).target.region == "eastus"  # type: ignore[union-attr]
    assert decide(held, fresh, None).target.region == "westus"  # type: ignore[union-attr]  # a first pin: the target
    assert decide(snapshot({"westus"}), pinned, None).target.region == "westus"  # type: ignore[union-attr]


def test_holds_last_repoint_after_seconds_and_only_for_redirect() -> None:
    since = {"eastus": 100.0}
    redirect = FailoverSettings(repoint_after_seconds=600)
    assert held_regions(since, 699.0, redirect) == {"eastus"}
    assert held_regions(since, 700.0, redirect) == frozenset()
    assert hold_ends(since, redirect) == [700.0]
    never = FailoverSettings(repoint_after_seconds=0)
    assert held_regions(since, 10**9, never) == {"eastus"}
    assert hold_ends(since, never) == []
    assert held_regions(since, 101.0, FailoverSettings(strategy=Strategy.REPOINT)) == frozenset()


def test_the_failover_path_condition_says_which_way_and_why() -> None:
    assert failover_path(snapshot({"eastus"}), None)[:3] == ("FailoverPath", True, "Redirect")
    reason = "geopin serves no admission webhook"
    condition = failover_path(snapshot({"eastus"}, redirects=False), reason)
    assert condition[:3] == ("FailoverPath", False, "NoAdmissionPath")
    assert reason in condition[3]
    assert "20/s" in condition[3]
    repoint = failover_path(snapshot({"eastus"}, redirects=False, strategy="Repoint", maxRepointsPerSecond=0), None)
    assert repoint[:3] == ("FailoverPath", True, "Repoint")
    assert "unpaced" in repoint[3]


def test_a_mutating_admission_policy_is_an_admission_path_for_redirect() -> None:
    from geopin.core.config import RunConfig
    from geopin.handlers.lifecycle import no_redirect_path

    no_webhook = RunConfig()
    assert no_redirect_path(no_webhook, admission_policies=False) is not None
    assert no_redirect_path(no_webhook, admission_policies=True) is None  # the API server redirects
    webhook = RunConfig(webhook_port=9443, webhook_config="geopin")
    assert no_redirect_path(webhook, admission_policies=False) is None
    condition = failover_path(snapshot({"eastus"}), None, "the API server's MutatingAdmissionPolicy")
    assert condition[:3] == ("FailoverPath", True, "Redirect")
    assert "MutatingAdmissionPolicy" in condition[3]
