"""Admission mode's Pod mutation (pure): pinned at creation from the in-memory decision only."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonpatch

from geopin.core.admission import mutate_pod
from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.policy import Mode, from_spec
from geopin.core.workloads import KINDS, view_of

REGISTRY = "contoso.azurecr.io"


def snapshot(mode: str = "Admission", **spec: Any) -> PolicySnapshot:
    policy = from_spec(
        "contoso",
        {
            "registry": REGISTRY,
            "mode": mode,
            "replicas": [{"region": "eastus"}, {"region": "westus"}],
            **spec,
        },
    )
    return PolicySnapshot(policy=policy, cluster_region="eastus", usable=frozenset({"eastus", "westus"}))


def pod(*images: str, ephemeral: tuple[str, ...] = (), annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "web-"}
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": f"debug{i}", "image": image} for i, image in enumerate(ephemeral)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def test_a_pod_is_pinned_with_its_original_recorded() -> None:
    body = pod(f"{REGISTRY}/shop/web:1", "nginx:1.27")
    ops = mutate_pod(body, "shop", [snapshot()], {})
    patched = jsonpatch.apply_patch(body, ops)
    assert [c["image"] for c in patched["spec"]["containers"]] == [
        "contoso.eastus.geo.azurecr.io/shop/web:1",
        "nginx:1.27",
    ]
    assert patched["metadata"]["annotations"]["geopin.io/pinned-region"] == "eastus"
    assert json.loads(patched["metadata"]["annotations"]["geopin.io/original-images"]) == {
        "containers/c0": f"{REGISTRY}/shop/web:1"
    }


def test_only_admission_mode_policies_mutate_pods() -> None:
    body = pod(f"{REGISTRY}/shop/web:1")
    assert mutate_pod(body, "shop", [snapshot("Patch")], {}) == []
    assert mutate_pod(body, "shop", [snapshot("Audit")], {}) == []


def test_excluded_namespace_and_opt_out_are_left_alone() -> None:
    assert mutate_pod(pod(f"{REGISTRY}/shop/web:1"), "kube-system", [snapshot()], {}) == []
    skipped = pod(f"{REGISTRY}/shop/web:1", annotations={"geopin.io/skip": "true"})
    assert mutate_pod(skipped, "shop", [snapshot()], {}) == []


def test_the_pod_follows_the_current_decision() -> None:
    failed_over = replace(snapshot(), usable=frozenset({"westus"}))
    body = pod(f"{REGISTRY}/shop/web:1")
    patched = jsonpatch.apply_patch(body, mutate_pod(body, "shop", [failed_over], {}))
    assert patched["spec"]["containers"][0]["image"] == "contoso.westus.geo.azurecr.io/shop/web:1"
    nothing_healthy = replace(snapshot(), usable=frozenset())
    patched = jsonpatch.apply_patch(body, mutate_pod(body, "shop", [nothing_healthy], {}))
    assert patched["spec"]["containers"][0]["image"] == f"{REGISTRY}/shop/web:1", "global: the image as written"


def test_no_registry_lookup_is_awaited_unknown_counts_as_present_absent_does_not() -> None:
    unknown = replace(snapshot(), availability=lambda image, region: None)
    body = pod(f"{REGISTRY}/shop/web:1")
    patched = jsonpatch.apply_patch(body, mutate_pod(body, "shop", [unknown], {}))
    assert patched["spec"]["containers"][0]["image"].startswith("contoso.eastus.geo")
    absent_home = replace(snapshot(), availability=lambda image, region: region != "eastus")
    patched = jsonpatch.apply_patch(body, mutate_pod(body, "shop", [absent_home], {}))
    assert patched["spec"]["containers"][0]["image"].startswith("contoso.westus.geo")


def test_digest_pinning_does_not_apply_to_pods() -> None:
    pinned = replace(snapshot(digestPinning=True), digest_of=lambda image: None)
    body = pod(f"{REGISTRY}/shop/web:1")
    patched = jsonpatch.apply_patch(body, mutate_pod(body, "shop", [pinned], {}))
    assert patched["spec"]["containers"][0]["image"] == "contoso.eastus.geo.azurecr.io/shop/web:1"


def test_ephemeral_containers_subresource_patches_only_ephemeral_containers() -> None:
    body = pod(
        "contoso.eastus.geo.azurecr.io/shop/web:1",
        ephemeral=(f"{REGISTRY}/tools/debug:1",),
        annotations={
            "geopin.io/original-images": json.dumps({"containers/c0": f"{REGISTRY}/shop/web:1"}),
            "geopin.io/pinned-region": "eastus",
        },
    )
    ops = mutate_pod(body, "shop", [snapshot()], {}, subresource="ephemeralcontainers")
    assert ops
    assert all(op["path"].startswith("/spec/ephemeralContainers/") for op in ops)
    patched = jsonpatch.apply_patch(body, ops)
    assert patched["spec"]["ephemeralContainers"][0]["image"] == "contoso.eastus.geo.azurecr.io/tools/debug:1"


def test_admission_mode_restores_a_template_patch_mode_had_pinned() -> None:
    patch_mode = snapshot("Patch")
    deployment = {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": f"{REGISTRY}/shop/web:1"}]}}},
    }
    kind = KINDS["Deployment"]
    pinned = plan_workload(view_of(kind, deployment), [patch_mode], {})
    assert pinned is not None
    assert pinned.images["containers/web"].startswith("contoso.eastus.geo")
    after_pin = {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "annotations": {
                "geopin.io/original-images": json.dumps({"containers/web": f"{REGISTRY}/shop/web:1"}),
                "geopin.io/pinned-region": "eastus",
            },
        },
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": pinned.images["containers/web"]}]}}},
    }
    admission = replace(patch_mode, policy=replace(patch_mode.policy, mode=Mode.ADMISSION))
    restored = plan_workload(view_of(kind, after_pin), [admission], {})
    assert restored is not None
    assert restored.images["containers/web"] == f"{REGISTRY}/shop/web:1"
    assert restored.originals == {}
