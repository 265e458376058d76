"""Selection, decision and the fold of several policies over one workload (decisions.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest

from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES, PolicySnapshot, decide, is_selected, plan_workload
from geopin.core.health import Target
from geopin.core.policy import Policy, from_spec
from geopin.core.rewrite import Desired, json_patch
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_REGION,
    ANNOTATION_SKIP,
    KINDS,
    WorkloadView,
    view_of,
)

Body = dict[str, Any]
DEPLOYMENT = KINDS["Deployment"]
REPLICAS = [{"region": "eastus"}, {"region": "westus"}]
CONTOSO_WEB = "contoso.azurecr.io/shop/web:1.2"
FABRIKAM_API = "fabrikam.azurecr.io/api:7"
NGINX = "docker.io/library/nginx:1.25"


def target_of(*args: Any) -> Target | None:
    """The chosen target (decide() also reports replication and digest needs)."""
    return decide(*args).target


def policy(registry: str = "contoso.azurecr.io", **extra: Any) -> Policy:
    return from_spec(registry.split(".", 1)[0], {"registry": registry, "replicas": REPLICAS, **extra})


CONTOSO = policy()
FABRIKAM = policy("fabrikam.azurecr.io")


def snapshot(p: Policy = CONTOSO, **extra: Any) -> PolicySnapshot:
    fields: dict[str, Any] = {"cluster_region": "eastus", "usable": frozenset({"eastus", "westus"}), **extra}
    return PolicySnapshot(policy=p, **fields)


def deployment(
    containers: Mapping[str, str] | None = None,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Body:
    images = containers if containers is not None else {"web": CONTOSO_WEB}
    metadata: Body = {"name": "web", "namespace": namespace, "uid": "u-1", "labels": dict(labels or {})}
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {"template": {"spec": {"containers": [{"name": n, "image": i} for n, i in images.items()]}}},
    }


def view(body: Body) -> WorkloadView:
    return view_of(DEPLOYMENT, body)


def apply(body: Body, desired: Desired) -> Body:
    """Write ``desired`` as the operator would (its JSON patch, applied with API-server semantics)."""
    result: Body = jsonpatch.apply_patch(body, json_patch(DEPLOYMENT, view(body), desired))
    return result


def images_of(body: Body) -> dict[str, str]:
    return {c["name"]: c["image"] for c in body["spec"]["template"]["spec"]["containers"]}


def record_of(body: Body) -> dict[str, str]:
    raw = (body["metadata"].get("annotations") or {}).get(ANNOTATION_ORIGINAL_IMAGES)
    record: dict[str, str] = json.loads(raw) if raw is not None else {}
    return record


def pinned(images: Mapping[str, str] | None = None) -> Body:
    """A workload already pinned by contoso to its home region, eastus."""
    body = deployment(images)
    desired = plan_workload(view(body), [snapshot()], None)
    assert desired is not None
    return apply(body, desired)


# --------------------------------------------------------------------------- namespace selection


def test_ordinary_namespace_is_selected_by_default_without_labels() -> None:
    assert is_selected(snapshot(), view(deployment(namespace="shop")), None)


def test_kube_system_is_excluded_by_default() -> None:
    workload = view(deployment(namespace="kube-system"))
    assert not is_selected(snapshot(), workload, {})
    assert target_of(snapshot(), workload, {}) is None


def test_operator_namespace_is_excluded_when_passed_in() -> None:
    workload = view(deployment(namespace="geopin-system"))
    assert is_selected(snapshot(), workload, {})  # not excluded unless the operator says so
    excluded = snapshot(excluded_namespaces=DEFAULT_EXCLUDED_NAMESPACES | {"geopin-system"})
    assert not is_selected(excluded, workload, {})
    assert not is_selected(excluded, view(deployment(namespace="kube-system")), {})
    assert is_selected(excluded, view(deployment(namespace="shop")), {})


def test_excluded_namespace_workload_is_not_written() -> None:
    body = deployment(namespace="kube-system")
    desired = plan_workload(view(body), [snapshot()], {})
    assert desired is not None
    assert json_patch(DEPLOYMENT, view(body), desired) == []


SELECTIVE = policy(namespaceSelector={"matchLabels": {"geopin": "enabled"}})


@pytest.mark.parametrize(
    ("labels", "selected"),
    [
        ({"geopin": "enabled"}, True),
        ({"geopin": "enabled", "team": "shop"}, True),
        ({"geopin": "disabled"}, False),
        ({}, False),
        (None, False),  # the namespace's labels are unknown: never selected by a non-empty selector
    ],
)
def test_namespace_selector(labels: dict[str, str] | None, selected: bool) -> None:
    workload = view(deployment(namespace="shop"))
    assert is_selected(snapshot(SELECTIVE), workload, labels) is selected
    assert (target_of(snapshot(SELECTIVE), workload, labels) is not None) is selected


def test_explicit_namespace_selector_replaces_the_default_exclusion() -> None:
    workload = view(deployment(namespace="kube-system"))
    assert is_selected(snapshot(SELECTIVE), workload, {"geopin": "enabled"})


# --------------------------------------------------------------------------- workload selection


TIERED = policy(workloadSelector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]})


@pytest.mark.parametrize(
    ("labels", "selected"),
    [({"tier": "web"}, True), ({"tier": "web", "app": "x"}, True), ({"tier": "db"}, False), ({}, False)],
)
def test_workload_selector(labels: dict[str, str], selected: bool) -> None:
    workload = view(deployment(labels=labels))
    assert is_selected(snapshot(TIERED), workload, {}) is selected


def test_unselected_workload_is_restored() -> None:
    body = pinned()
    assert images_of(body)["web"] == "contoso.eastus.geo.azurecr.io/shop/web:1.2"
    desired = plan_workload(view(body), [snapshot(TIERED)], {})
    assert desired is not None
    restored = apply(body, desired)
    assert images_of(restored) == {"web": CONTOSO_WEB}
    assert ANNOTATION_ORIGINAL_IMAGES not in restored["metadata"]["annotations"]
    assert ANNOTATION_PINNED_REGION not in restored["metadata"]["annotations"]


# --------------------------------------------------------------------------- opt-out and deletion


@pytest.mark.parametrize("value", ["true", "True", "TRUE"])
def test_skip_annotation_deselects_and_decides_restore(value: str) -> None:
    workload = view(deployment(annotations={ANNOTATION_SKIP: value}))
    assert workload.skipped
    assert not is_selected(snapshot(), workload, {})
    assert target_of(snapshot(), workload, {}) is None


def test_skip_false_is_not_an_opt_out() -> None:
    workload = view(deployment(annotations={ANNOTATION_SKIP: "false"}))
    assert target_of(snapshot(), workload, {}) == Target("eastus", "contoso.eastus.geo.azurecr.io")


def test_skip_on_a_pinned_workload_restores_it_exactly() -> None:
    body = pinned()
    body["metadata"]["annotations"][ANNOTATION_SKIP] = "true"
    desired = plan_workload(view(body), [snapshot()], {})
    assert desired is not None
    assert desired.originals == {}
    assert desired.pinned_region is None
    restored = apply(body, desired)
    assert images_of(restored) == {"web": CONTOSO_WEB}
    assert restored["metadata"]["annotations"] == {ANNOTATION_SKIP: "true"}


def test_skipped_unpinned_workload_gets_no_write() -> None:
    body = deployment(annotations={ANNOTATION_SKIP: "true"})
    desired = plan_workload(view(body), [snapshot()], {})
    assert desired is not None
    assert json_patch(DEPLOYMENT, view(body), desired) == []


def test_deleting_policy_decides_restore_and_restores() -> None:
    body = pinned()
    deleting = snapshot(deleting=True)
    assert target_of(deleting, view(body), {}) is None
    desired = plan_workload(view(body), [deleting], {})
    assert desired is not None
    restored = apply(body, desired)
    assert images_of(restored) == {"web": CONTOSO_WEB}
    assert restored["metadata"]["annotations"] == {}


# --------------------------------------------------------------------------- per-workload region preference


def test_listed_preferred_region_wins_over_home() -> None:
    workload = view(deployment(annotations={ANNOTATION_REGION: "westus"}))
    assert target_of(snapshot(), workload, {}) == Target("westus", "contoso.westus.geo.azurecr.io")
    desired = plan_workload(workload, [snapshot()], {})
    assert desired is not None
    assert desired.images == {"containers/web": "contoso.westus.geo.azurecr.io/shop/web:1.2"}
    assert desired.pinned_region == "westus"


def test_unlisted_preferred_region_is_ignored() -> None:
    workload = view(deployment(annotations={ANNOTATION_REGION: "northeurope"}))
    assert target_of(snapshot(), workload, {}) == Target("eastus", "contoso.eastus.geo.azurecr.io")


def test_unhealthy_preferred_region_falls_back_to_home() -> None:
    workload = view(deployment(annotations={ANNOTATION_REGION: "westus"}))
    assert target_of(snapshot(usable=frozenset({"eastus"})), workload, {}) == Target(
        "eastus", "contoso.eastus.geo.azurecr.io"
    )


# --------------------------------------------------------------------------- Audit mode


def test_audit_mode_computes_but_never_writes() -> None:
    audit = snapshot(policy(mode="Audit"))
    assert not audit.writes
    assert snapshot().writes
    workload = view(deployment())
    assert target_of(audit, workload, {}) == Target("eastus", "contoso.eastus.geo.azurecr.io")
    assert plan_workload(workload, [audit], {}) is None


def test_no_policies_plan_nothing() -> None:
    assert plan_workload(view(deployment()), [], {}) is None


def test_audit_policy_next_to_a_writing_one_touches_only_the_writer_s_images() -> None:
    body = deployment({"web": CONTOSO_WEB, "api": FABRIKAM_API})
    desired = plan_workload(view(body), [snapshot(policy(mode="Audit")), snapshot(FABRIKAM)], {})
    assert desired is not None
    assert desired.images == {"containers/web": CONTOSO_WEB, "containers/api": "fabrikam.eastus.geo.azurecr.io/api:7"}
    assert desired.originals == {"containers/api": FABRIKAM_API}


# --------------------------------------------------------------------------- two policies, one workload


def both() -> list[PolicySnapshot]:
    return [snapshot(CONTOSO), snapshot(FABRIKAM)]


def test_two_policies_fold_onto_one_workload() -> None:
    body = deployment({"web": CONTOSO_WEB, "api": FABRIKAM_API, "proxy": NGINX})
    desired = plan_workload(view(body), both(), {})
    assert desired is not None
    assert desired.images == {
        "containers/web": "contoso.eastus.geo.azurecr.io/shop/web:1.2",
        "containers/api": "fabrikam.eastus.geo.azurecr.io/api:7",
        "containers/proxy": NGINX,
    }
    assert desired.originals == {"containers/web": CONTOSO_WEB, "containers/api": FABRIKAM_API}
    assert desired.pinned_region == "eastus"

    written = apply(body, desired)
    assert record_of(written) == {"containers/web": CONTOSO_WEB, "containers/api": FABRIKAM_API}
    assert written["metadata"]["annotations"][ANNOTATION_PINNED_REGION] == "eastus"
    # Level-based: the next resync computes the same state and writes nothing.
    again = plan_workload(view(written), both(), {})
    assert again is not None
    assert json_patch(DEPLOYMENT, view(written), again) == []


def test_fold_order_does_not_change_the_result() -> None:
    body = deployment({"web": CONTOSO_WEB, "api": FABRIKAM_API})
    forward = plan_workload(view(body), both(), {})
    backward = plan_workload(view(body), list(reversed(both())), {})
    assert forward is not None
    assert backward is not None
    assert dict(forward.images) == dict(backward.images)
    assert dict(forward.originals) == dict(backward.originals)
    assert forward.pinned_region == backward.pinned_region == "eastus"


@pytest.mark.parametrize("order", ["contoso-first", "fabrikam-first"])
def test_restoring_one_policy_keeps_the_other_s_entry(order: str) -> None:
    body = deployment({"web": CONTOSO_WEB, "api": FABRIKAM_API})
    first = plan_workload(view(body), both(), {})
    assert first is not None
    body = apply(body, first)

    snapshots = [snapshot(CONTOSO), snapshot(FABRIKAM, deleting=True)]
    if order == "fabrikam-first":
        snapshots.reverse()
    desired = plan_workload(view(body), snapshots, {})
    assert desired is not None
    restored = apply(body, desired)
    assert images_of(restored) == {"web": "contoso.eastus.geo.azurecr.io/shop/web:1.2", "api": FABRIKAM_API}
    assert record_of(restored) == {"containers/web": CONTOSO_WEB}
    assert restored["metadata"]["annotations"][ANNOTATION_PINNED_REGION] == "eastus"

    # And then the other one: the workload is back to exactly what the user wrote.
    desired = plan_workload(view(restored), [snapshot(CONTOSO, deleting=True)], {})
    assert desired is not None
    final = apply(restored, desired)
    assert images_of(final) == {"web": CONTOSO_WEB, "api": FABRIKAM_API}
    assert final["metadata"]["annotations"] == {}


def test_invalid_reference_is_reported_once_across_policies() -> None:
    bad = "contoso.azurecr.io/Shop/Web:1"
    body = deployment({"web": bad, "api": FABRIKAM_API})
    desired = plan_workload(view(body), both(), {})
    assert desired is not None
    assert [(i.container, i.image) for i in desired.invalid] == [("containers/web", bad)]
    assert desired.images["containers/web"] == bad
    assert "containers/web" not in desired.originals


def test_restore_keeps_pinned_region_of_a_non_writing_policy_s_images() -> None:
    body = deployment({"web": CONTOSO_WEB, "api": FABRIKAM_API})
    first = plan_workload(view(body), both(), {})
    assert first is not None
    body = apply(body, first)

    # contoso is deleted while fabrikam (which pinned "api") has since been switched to Audit.
    snapshots = [snapshot(CONTOSO, deleting=True), snapshot(policy("fabrikam.azurecr.io", mode="Audit"))]
    desired = plan_workload(view(body), snapshots, {})
    assert desired is not None
    restored = apply(body, desired)
    assert images_of(restored) == {"web": CONTOSO_WEB, "api": "fabrikam.eastus.geo.azurecr.io/api:7"}
    assert record_of(restored) == {"containers/api": FABRIKAM_API}
    assert restored["metadata"]["annotations"].get(ANNOTATION_PINNED_REGION) == "eastus"


def test_duplicate_container_names_get_no_decision() -> None:
    """Two containers under one record key would swap images: such a workload is never written."""
    body = deployment()
    body["spec"]["template"]["spec"]["containers"] = [
        {"name": "web", "image": CONTOSO_WEB},
        {"name": "web", "image": "contoso.azurecr.io/shop/api:1"},
    ]
    assert plan_workload(view(body), [snapshot()], {}) is None
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "web", "image": CONTOSO_WEB}]
    del body["spec"]["template"]["spec"]["containers"][1]
    assert plan_workload(view(body), [snapshot()], {}) is not None  # another list: another key
