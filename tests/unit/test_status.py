"""A policy's workload counts (status.py) over views built from Deployment objects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES, PolicySnapshot
from geopin.core.policy import Policy, from_spec
from geopin.core.rewrite import encode_record
from geopin.core.status import WorkloadCounts, count_workloads, uses_registry
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_SKIP,
    KINDS,
    WorkloadView,
    view_of,
)

REPLICAS = [{"region": "eastus"}, {"region": "westus"}]
CONTOSO = from_spec("contoso", {"registry": "contoso.azurecr.io", "replicas": REPLICAS})
WEB = "contoso.azurecr.io/shop/web:1"


def snapshot(policy: Policy = CONTOSO) -> PolicySnapshot:
    return PolicySnapshot(
        policy=policy,
        cluster_region="eastus",
        usable=frozenset({"eastus", "westus"}),
        excluded_namespaces=DEFAULT_EXCLUDED_NAMESPACES | {"geopin-system"},
    )


def deployment(
    name: str,
    images: Mapping[str, str],
    namespace: str = "default",
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> WorkloadView:
    body: dict[str, Any] = {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": name, "labels": dict(labels or {})},
        "spec": {"template": {"spec": {"containers": [{"name": n, "image": i} for n, i in images.items()]}}},
    }
    if annotations is not None:
        body["metadata"]["annotations"] = dict(annotations)
    return view_of(KINDS["Deployment"], body)


def pinned_to(name: str, region: str | None, namespace: str = "default") -> WorkloadView:
    """A workload geopin pinned: image on the region's endpoint, original recorded."""
    host = "contoso.azurecr.io" if region in (None, "global") else f"contoso.{region}.geo.azurecr.io"
    annotations = {ANNOTATION_ORIGINAL_IMAGES: encode_record({"containers/web": WEB})}
    if region is not None:
        annotations[ANNOTATION_PINNED_REGION] = region
    return deployment(name, {"web": f"{host}/shop/web:1"}, namespace, annotations)


def mix() -> list[WorkloadView]:
    return [
        pinned_to("east-1", "eastus"),
        pinned_to("east-2", "eastus", namespace="shop"),
        pinned_to("west", "westus"),
        pinned_to("global", "global"),
        pinned_to("no-region-annotation", None),  # counted under global
        # pinned, then opted out but not restored yet: still pinned, not skipped
        deployment(
            "pinned-then-skipped",
            {"web": "contoso.eastus.geo.azurecr.io/shop/web:1"},
            annotations={
                ANNOTATION_ORIGINAL_IMAGES: encode_record({"containers/web": WEB}),
                ANNOTATION_PINNED_REGION: "eastus",
                ANNOTATION_SKIP: "true",
            },
        ),
        deployment("awaiting-write", {"web": WEB}),  # selected, not pinned yet: total only
        deployment("opted-out", {"web": WEB}, annotations={ANNOTATION_SKIP: "true"}),
        deployment("system", {"web": WEB}, namespace="kube-system"),
        deployment("operator", {"web": WEB}, namespace="geopin-system"),
        deployment("bad", {"web": "contoso.azurecr.io/Shop/Web:1"}),  # invalid, names the registry
        deployment("bad-and-good", {"web": WEB, "bad": "CONTOSO.azurecr.io/x@sha256:nope"}),
        # never counted: no image of the registry
        deployment("other-registry", {"api": "fabrikam.azurecr.io/api:1"}),
        deployment("docker-hub", {"nginx": "nginx:1.25"}),
        deployment("users-own-pin", {"web": "contoso.westus.geo.azurecr.io/shop/web:1"}),
        deployment("lookalike", {"web": "contoso.azurecr.io.evil.com/shop/web:1"}),
        deployment("bad-other-registry", {"web": "fabrikam.azurecr.io/Bad:1"}),
        deployment("empty", {}),
    ]


def test_count_workloads_over_a_mix() -> None:
    counts = count_workloads(mix(), snapshot(), {})
    assert counts.total == 12
    assert counts.pinned == 6
    assert counts.skipped == 3  # opted-out, kube-system, the operator's namespace
    assert counts.invalid == 2
    assert counts.awaiting_replication == 0
    assert counts.by_region == Counter({"eastus": 3, "westus": 1, "global": 2})
    assert counts.as_status() == {
        "total": 12,
        "pinned": 6,
        "skipped": 3,
        "invalid": 2,
        "awaitingReplication": 0,
        "gitOpsManaged": 0,
    }


def test_no_workloads_count_zero() -> None:
    assert count_workloads([], snapshot(), {}) == WorkloadCounts()


def test_namespace_selector_uses_the_namespace_labels() -> None:
    policy = from_spec(
        "contoso",
        {"registry": "contoso.azurecr.io", "replicas": REPLICAS, "namespaceSelector": {"matchLabels": {"pin": "yes"}}},
    )
    views = [
        deployment("in", {"web": WEB}, namespace="on"),
        deployment("out", {"web": WEB}, namespace="off"),
        deployment("unknown", {"web": WEB}, namespace="not-listed"),
        pinned_to("pinned", "westus", namespace="off"),
    ]
    counts = count_workloads(views, snapshot(policy), {"on": {"pin": "yes"}, "off": {"pin": "no"}})
    assert (counts.total, counts.pinned, counts.skipped) == (4, 1, 2)
    assert counts.by_region == Counter({"westus": 1})


def test_record_of_another_registry_is_not_counted_as_pinned() -> None:
    foreign = deployment(
        "fabrikam-pinned",
        {"api": "fabrikam.eastus.geo.azurecr.io/api:1", "web": WEB},
        annotations={
            ANNOTATION_ORIGINAL_IMAGES: encode_record({"containers/api": "fabrikam.azurecr.io/api:1"}),
            ANNOTATION_PINNED_REGION: "eastus",
        },
    )
    counts = count_workloads([foreign], snapshot(), {})
    assert (counts.total, counts.pinned, counts.skipped) == (1, 0, 0)
    assert counts.by_region == Counter()


def test_uses_registry_flags() -> None:
    assert uses_registry(deployment("a", {"web": WEB}), CONTOSO) == (True, False)
    assert uses_registry(deployment("b", {"web": "contoso.azurecr.io/Bad:1"}), CONTOSO) == (True, True)
    assert uses_registry(deployment("c", {"web": "nginx"}), CONTOSO) == (False, False)
    assert uses_registry(pinned_to("d", "westus"), CONTOSO) == (True, False)
