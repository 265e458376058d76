"""The rewrite rules of api.md: desired state, record, restore, and the JSON patch applied for real."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.core.health import Target
from geopin.core.policy import Policy, from_spec
from geopin.core.rewrite import (
    Desired,
    InvalidImage,
    changed_containers,
    desired_state,
    encode_record,
    is_rewrite_of,
    json_patch,
    read_record,
)
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    KINDS,
    Kind,
    view_of,
)

Body = dict[str, Any]

SHA = "sha256:" + "ab" * 32
POLICY = from_spec(
    "contoso",
    {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus"}, {"region": "westus"}]},
)
EAST = Target("eastus", "contoso.eastus.geo.azurecr.io")
WEST = Target("westus", "contoso.westus.geo.azurecr.io")
GLOBAL = Target("global", "contoso.azurecr.io")
DEPLOYMENT = KINDS["Deployment"]
RECORD_POINTER = "/metadata/annotations/geopin.io~1original-images"
PINNED_POINTER = "/metadata/annotations/geopin.io~1pinned-region"


def workload(
    containers: dict[str, str],
    init: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    kind: Kind = DEPLOYMENT,
    ephemeral: dict[str, str] | None = None,
) -> Body:
    """An object of ``kind`` whose pod spec holds the given name → image containers."""
    pod_spec: Body = {
        "containers": [{"name": n, "image": i, "ports": [{"containerPort": 80}]} for n, i in containers.items()]
    }
    if init is not None:
        pod_spec["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
    if ephemeral is not None:
        pod_spec["ephemeralContainers"] = [{"name": n, "image": i} for n, i in ephemeral.items()]
    spec: Body = pod_spec
    for key in reversed(kind.pod_spec_path[1:]):
        spec = {key: spec}
        if key == "template":
            spec[key]["metadata"] = {"labels": {"app": "web"}}
    metadata: Body = {"name": "web", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    body: Body = {"apiVersion": "v1", "kind": kind.kind, "metadata": metadata, "spec": spec}
    if kind.kind == "CronJob":
        body["spec"]["schedule"] = "*/5 * * * *"
    return body


def pod_spec_of(body: Body, kind: Kind = DEPLOYMENT) -> Body:
    node = body
    for key in kind.pod_spec_path:
        node = node[key]
    return node


def images_of(
    body: Body, kind: Kind = DEPLOYMENT, lists: tuple[str, ...] = ("initContainers", "containers")
) -> dict[str, str]:
    spec = pod_spec_of(body, kind)
    return {f"{name}/{c['name']}": c["image"] for name in lists for c in spec.get(name) or []}


def step(
    body: Body,
    target: Target | None,
    kind: Kind = DEPLOYMENT,
    policy: Policy = POLICY,
    digests: dict[str, str] | None = None,
) -> tuple[Body, Desired, list[dict[str, Any]]]:
    """One reconcile: view → desired → patch, applied with jsonpatch as the API server would."""
    view = view_of(kind, body)
    desired = desired_state(view, policy, target, digests)
    patch = json_patch(kind, view, desired)
    result: Body = jsonpatch.apply_patch(body, patch)
    return result, desired, patch


def annotations_of(body: Body) -> dict[str, str]:
    annotations: dict[str, str] = body["metadata"].get("annotations") or {}
    return annotations


# --------------------------------------------------------------------------- which references are rewritten

REWRITTEN = [
    ("contoso.azurecr.io/app:1", "contoso.eastus.geo.azurecr.io/app:1"),
    ("contoso.azurecr.io/team/app", "contoso.eastus.geo.azurecr.io/team/app"),
    ("contoso.azurecr.io/app@" + SHA, "contoso.eastus.geo.azurecr.io/app@" + SHA),
    ("contoso.azurecr.io/a__b/c---d:v1.0_rc@" + SHA, "contoso.eastus.geo.azurecr.io/a__b/c---d:v1.0_rc@" + SHA),
    ("CONTOSO.AzureCR.io/app:1", "contoso.eastus.geo.azurecr.io/app:1"),  # host compared case-insensitively
    ("contoso.azurecr.io/app:UPPER_tag", "contoso.eastus.geo.azurecr.io/app:UPPER_tag"),
]

UNTOUCHED = [
    "contoso.azurecr.io:443/app:1",  # same name, other port
    "contoso.azurecr.io:5000/app:1",
    "contoso.azurecr.io.evil.com/app:1",
    "xcontoso.azurecr.io/app:1",
    "fabrikam.azurecr.io/app:1",
    "contoso.azurecr.cn/app:1",
    "nginx",
    "nginx:1.27",
    "library/nginx@" + SHA,
    "contoso/app:1",  # a Docker Hub user named contoso
    "docker.io/library/nginx:1",
    "mcr.microsoft.com/contoso.azurecr.io/app:1",
    "localhost:5000/contoso.azurecr.io/app",
    "contoso.westus.geo.azurecr.io/app:1",  # the user's own regional pin
    "contoso.eastus.geo.azurecr.io/app:1",  # ... even to the target region
    "contoso.eastus.data.azurecr.io/app:1",
    "[::1]:5000/app",
    "localhost:5000",
]


@pytest.mark.parametrize(("image", "expected"), REWRITTEN)
@pytest.mark.parametrize("with_annotations", [True, False])
def test_managed_images_are_rewritten(image: str, expected: str, with_annotations: bool) -> None:
    body = workload({"web": image}, annotations={"team": "a"} if with_annotations else None)
    result, desired, _ = step(body, EAST)
    assert images_of(result) == {"containers/web": expected}
    assert json.loads(annotations_of(result)[ANNOTATION_ORIGINAL_IMAGES]) == {"containers/web": image}
    assert annotations_of(result)[ANNOTATION_PINNED_REGION] == "eastus"
    assert len(desired.originals) == 1
    assert desired.invalid == ()
    if with_annotations:
        assert annotations_of(result)["team"] == "a"
    # Everything but the image and geopin's annotations is untouched.
    expected_body = copy.deepcopy(body)
    pod_spec_of(expected_body)["containers"][0]["image"] = expected
    expected_body["metadata"].setdefault("annotations", {}).update(
        {ANNOTATION_ORIGINAL_IMAGES: encode_record({"containers/web": image}), ANNOTATION_PINNED_REGION: "eastus"}
    )
    assert result == expected_body


@pytest.mark.parametrize("image", UNTOUCHED)
@pytest.mark.parametrize("target", [EAST, WEST, GLOBAL, None])
def test_other_images_are_never_touched(image: str, target: Target | None) -> None:
    body = workload({"web": image})
    result, desired, patch = step(body, target)
    assert patch == []
    assert result == body
    assert desired.images == {"containers/web": image}
    assert desired.originals == {}
    assert desired.pinned_region is None
    assert desired.invalid == ()


def test_mixed_containers_only_managed_ones_move() -> None:
    body = workload(
        {"web": "contoso.azurecr.io/web:1", "proxy": "nginx:1.27", "sidecar": "fabrikam.azurecr.io/side:2"},
        init={"migrate": "contoso.azurecr.io/migrate:1", "wait": "busybox"},
    )
    result, desired, _ = step(body, WEST)
    assert images_of(result) == {
        "initContainers/migrate": "contoso.westus.geo.azurecr.io/migrate:1",
        "initContainers/wait": "busybox",
        "containers/web": "contoso.westus.geo.azurecr.io/web:1",
        "containers/proxy": "nginx:1.27",
        "containers/sidecar": "fabrikam.azurecr.io/side:2",
    }
    assert annotations_of(result)[ANNOTATION_ORIGINAL_IMAGES] == (
        '{"containers/web":"contoso.azurecr.io/web:1","initContainers/migrate":"contoso.azurecr.io/migrate:1"}'
    )
    assert len(desired.originals) == 2
    view = view_of(DEPLOYMENT, body)
    assert [c.key for c in changed_containers(view, desired)] == ["initContainers/migrate", "containers/web"]


def test_init_containers_share_names_with_containers() -> None:
    body = workload({"app": "contoso.azurecr.io/app:1"}, init={"app": "contoso.azurecr.io/init:1"})
    result, _, _ = step(body, EAST)
    record = json.loads(annotations_of(result)[ANNOTATION_ORIGINAL_IMAGES])
    assert record == {"containers/app": "contoso.azurecr.io/app:1", "initContainers/app": "contoso.azurecr.io/init:1"}
    restored, _, _ = step(result, None)
    assert restored == {**body, "metadata": {**body["metadata"], "annotations": {}}}


def test_registry_with_port_and_explicit_endpoints() -> None:
    policy = from_spec(
        "local",
        {
            "registry": "127.0.0.1:5000",
            "replicas": [
                {"region": "east", "endpoint": "127.0.0.1:5001"},
                {"region": "west", "endpoint": "localhost:5002"},
            ],
        },
    )
    body = workload(
        {
            "a": "127.0.0.1:5000/app:1",
            "b": "127.0.0.1/app:1",
            "c": "127.0.0.1:5002/app:1",
            "d": "127.0.0.1:50000/app:1",
        }
    )
    result, _, _ = step(body, Target("west", "localhost:5002"), policy=policy)
    assert images_of(result) == {
        "containers/a": "localhost:5002/app:1",
        "containers/b": "127.0.0.1/app:1",
        "containers/c": "127.0.0.1:5002/app:1",
        "containers/d": "127.0.0.1:50000/app:1",
    }
    repinned, _, _ = step(result, Target("east", "127.0.0.1:5001"), policy=policy)
    assert images_of(repinned)["containers/a"] == "127.0.0.1:5001/app:1"
    restored, _, _ = step(repinned, None, policy=policy)
    assert images_of(restored) == images_of(body)


def test_a_user_written_regional_endpoint_is_the_users_pin() -> None:
    body = workload({"web": "contoso.westus.geo.azurecr.io/app:1", "api": "contoso.azurecr.io/api:1"})
    result, desired, _ = step(body, EAST)
    assert images_of(result) == {
        "containers/web": "contoso.westus.geo.azurecr.io/app:1",
        "containers/api": "contoso.eastus.geo.azurecr.io/api:1",
    }
    assert desired.originals == {"containers/api": "contoso.azurecr.io/api:1"}


# --------------------------------------------------------------------------- invalid references


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("contoso.azurecr.io/App:1", "lower-case"),
        (" contoso.azurecr.io/app:1", "white space"),
        ("contoso.azurecr.io/app:1 ", "white space"),
        ("contoso.azurecr.io/app@sha256:abc", "digest"),
        ("contoso.azurecr.io/app:", "tag"),
        ("contoso.azurecr.io//app", "path"),
        ("", "empty"),
    ],
)
@pytest.mark.parametrize("target", [EAST, GLOBAL, None])
def test_invalid_references_are_left_and_reported(image: str, reason: str, target: Target | None) -> None:
    body = workload({"bad": image, "good": "contoso.azurecr.io/app:1"})
    result, desired, _ = step(body, target)
    assert images_of(result)["containers/bad"] == image
    (invalid,) = desired.invalid
    assert isinstance(invalid, InvalidImage)
    assert (invalid.container, invalid.image) == ("containers/bad", image)
    assert reason in invalid.reason
    assert "containers/bad" not in desired.originals


def test_invalid_only_workload_gets_no_write() -> None:
    body = workload({"bad": "contoso.azurecr.io/BAD"})
    result, desired, patch = step(body, EAST)
    assert patch == []
    assert result == body
    assert len(desired.invalid) == 1


# --------------------------------------------------------------------------- the 255-character name limit

# A path that fits 255 characters behind the global host but not behind the regional one.
LONG_PATH = "team/" + "a" * (255 - len("contoso.azurecr.io/team/") - 2)
LONG_IMAGE = f"contoso.azurecr.io/{LONG_PATH}:1"


def test_a_rewrite_never_makes_the_name_longer_than_255() -> None:
    assert len(f"contoso.azurecr.io/{LONG_PATH}") <= 255 < len(f"{EAST.endpoint}/{LONG_PATH}")
    body = workload({"web": LONG_IMAGE, "api": "contoso.azurecr.io/api:1"})
    once, desired, _ = step(body, EAST)
    # containerd 1.x counts the host in the 255 characters: the long one stays on the global host.
    assert images_of(once) == {"containers/web": LONG_IMAGE, "containers/api": f"{EAST.endpoint}/api:1"}
    (too_long,) = desired.invalid
    assert (too_long.container, too_long.image) == ("containers/web", LONG_IMAGE)
    assert "255" in too_long.reason
    twice, _, patch = step(once, EAST)
    assert patch == []
    restored, _, _ = step(twice, None)
    assert images_of(restored) == images_of(body)
    assert ANNOTATION_ORIGINAL_IMAGES not in annotations_of(restored)


def test_a_long_name_written_earlier_is_still_recognised_and_restored() -> None:
    """A regional name over 255 characters (as an older geopin wrote it) keeps its record: restored."""
    moved = f"{EAST.endpoint}/{LONG_PATH}:1"
    body = workload(
        {"web": moved},
        annotations={
            ANNOTATION_ORIGINAL_IMAGES: encode_record({"containers/web": LONG_IMAGE}),
            ANNOTATION_PINNED_REGION: "eastus",
        },
    )
    restored, desired, _ = step(body, None)
    assert images_of(restored) == {"containers/web": LONG_IMAGE}
    assert desired.originals == {}
    west, desired, _ = step(body, WEST)
    assert images_of(west) == {"containers/web": LONG_IMAGE}  # moved back to a name that fits
    assert desired.originals == {}


# --------------------------------------------------------------------------- record, restore, idempotence


def test_record_is_canonical_json_of_container_keys() -> None:
    body = workload(
        {"z": "contoso.azurecr.io/z:1", "a": "contoso.azurecr.io/a@" + SHA},
        init={"m": "contoso.azurecr.io/m"},
    )
    result, _, _ = step(body, EAST)
    raw = annotations_of(result)[ANNOTATION_ORIGINAL_IMAGES]
    assert raw == json.dumps(
        {
            "containers/a": "contoso.azurecr.io/a@" + SHA,
            "containers/z": "contoso.azurecr.io/z:1",
            "initContainers/m": "contoso.azurecr.io/m",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert read_record(annotations_of(result)) == (json.loads(raw), False)


@pytest.mark.parametrize("target", [EAST, WEST, GLOBAL])
@pytest.mark.parametrize("annotations", [None, {}, {"team": "a", "deployment.kubernetes.io/revision": "3"}])
def test_restore_gives_back_the_exact_original(target: Target, annotations: dict[str, str] | None) -> None:
    body = workload(
        {"web": "contoso.azurecr.io/web:1@" + SHA, "proxy": "nginx"},
        init={"init": "Contoso.azurecr.io/init"},
        annotations=annotations,
    )
    pinned, _, _ = step(body, target)
    assert annotations_of(pinned)[ANNOTATION_PINNED_REGION] == target.region
    restored, desired, patch = step(pinned, None)
    assert desired.originals == {}
    assert desired.pinned_region is None
    assert any(op["op"] == "remove" and op["path"] == RECORD_POINTER for op in patch)
    assert any(op["op"] == "remove" and op["path"] == PINNED_POINTER for op in patch)
    assert ANNOTATION_ORIGINAL_IMAGES not in annotations_of(restored)
    assert ANNOTATION_PINNED_REGION not in annotations_of(restored)
    assert images_of(restored) == images_of(body)
    if annotations is None:
        # An empty map is what the API server drops (omitempty): the only possible difference.
        assert restored["metadata"].pop("annotations") == {}
    assert json.dumps(restored) == json.dumps(body)


@pytest.mark.parametrize("target", [EAST, WEST, GLOBAL, None])
def test_second_pass_is_empty(target: Target | None) -> None:
    body = workload(
        {"web": "contoso.azurecr.io/web:1", "proxy": "nginx", "bad": "contoso.azurecr.io/Bad"},
        init={"init": "contoso.azurecr.io/init@" + SHA},
    )
    once, _, _ = step(body, target)
    twice, desired, patch = step(once, target)
    assert patch == []
    assert twice == once
    assert desired.images == images_of(once)


def test_untouched_workload_gets_no_annotation() -> None:
    body = workload({"proxy": "nginx"}, init={"x": "fabrikam.azurecr.io/x"})
    for target in (EAST, GLOBAL, None):
        result, _, patch = step(body, target)
        assert patch == []
        assert "annotations" not in result["metadata"]


def test_global_target_records_without_moving() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    result, desired, patch = step(body, GLOBAL)
    assert images_of(result) == images_of(body)
    assert [op["op"] for op in patch] == ["add", "add", "add"]  # annotations map, record, pinned region
    assert annotations_of(result) == {
        ANNOTATION_ORIGINAL_IMAGES: '{"containers/web":"contoso.azurecr.io/web:1"}',
        ANNOTATION_PINNED_REGION: "global",
    }
    assert desired.pinned_region == "global"


def test_repin_keeps_the_original() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"}, init={"init": "contoso.azurecr.io/init:1"})
    east, _, _ = step(body, EAST)
    west, desired, patch = step(east, WEST)
    assert images_of(west) == {
        "initContainers/init": "contoso.westus.geo.azurecr.io/init:1",
        "containers/web": "contoso.westus.geo.azurecr.io/web:1",
    }
    assert annotations_of(west)[ANNOTATION_ORIGINAL_IMAGES] == annotations_of(east)[ANNOTATION_ORIGINAL_IMAGES]
    assert annotations_of(west)[ANNOTATION_PINNED_REGION] == "westus"
    assert desired.originals == {
        "containers/web": "contoso.azurecr.io/web:1",
        "initContainers/init": "contoso.azurecr.io/init:1",
    }
    # The record is not rewritten, only tested: the images were computed from it.
    assert [op["op"] for op in patch if op["path"] == RECORD_POINTER] == ["test"]
    to_global, _, _ = step(west, GLOBAL)
    assert images_of(to_global) == images_of(body)
    assert annotations_of(to_global)[ANNOTATION_PINNED_REGION] == "global"
    back, _, _ = step(to_global, EAST)
    assert images_of(back) == images_of(east)
    restored, _, _ = step(back, None)
    assert images_of(restored) == images_of(body)


def test_repin_after_the_pinned_replica_left_the_policy() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    east, _, _ = step(body, EAST)
    shrunk = from_spec("contoso", {"registry": "contoso.azurecr.io", "replicas": [{"region": "westus"}]})
    west, desired, _ = step(east, WEST, policy=shrunk)
    assert images_of(west) == {"containers/web": "contoso.westus.geo.azurecr.io/web:1"}
    assert desired.originals == {"containers/web": "contoso.azurecr.io/web:1"}
    restored, _, _ = step(east, None, policy=shrunk)
    assert images_of(restored) == images_of(body)
    assert ANNOTATION_ORIGINAL_IMAGES not in annotations_of(restored)


def _corp(*replicas: tuple[str, str]) -> Policy:
    """A registry that is not an ACR: every replica has an explicit endpoint."""
    return from_spec(
        "corp",
        {"registry": "registry.contoso.com", "replicas": [{"region": r, "endpoint": e} for r, e in replicas]},
    )


CORP_IMAGE = "registry.contoso.com/shop/web:1"
CORP_EAST = ("eastus", "eastus.registry.contoso.com")
CORP_EAST2 = ("eastus", "eastus2.registry.contoso.com:5000")
CORP_WEST = ("westus", "westus.registry.contoso.com")


def _without_empty_annotations(body: Body) -> Body:
    # An empty map is what the API server drops (omitempty): the only possible difference.
    if body["metadata"].get("annotations") == {}:
        body = copy.deepcopy(body)
        del body["metadata"]["annotations"]
    return body


@pytest.mark.parametrize("then", ["endpoint-changed", "replica-removed", "both"])
def test_explicit_endpoint_changed_or_removed_then_policy_deleted_restores_exactly(then: str) -> None:
    body = workload({"web": CORP_IMAGE, "proxy": "nginx:1.27"}, annotations={"team": "shop"})
    east, _, _ = step(body, Target(*CORP_EAST), policy=_corp(CORP_EAST, CORP_WEST))
    assert images_of(east)["containers/web"] == "eastus.registry.contoso.com/shop/web:1"
    assert (
        annotations_of(east)["geopin.io/pinned-endpoints"] == '{"registry.contoso.com":"eastus.registry.contoso.com"}'
    )
    current = east
    if then in ("endpoint-changed", "both"):
        edited = _corp(CORP_EAST2, CORP_WEST)
        current, desired, _ = step(current, Target(*CORP_EAST2), policy=edited)
        assert images_of(current)["containers/web"] == "eastus2.registry.contoso.com:5000/shop/web:1"
        assert desired.originals == {"containers/web": CORP_IMAGE}
    if then in ("replica-removed", "both"):
        shrunk = _corp(CORP_WEST)
        current, desired, _ = step(current, Target(*CORP_WEST), policy=shrunk)
        assert images_of(current)["containers/web"] == "westus.registry.contoso.com/shop/web:1"
        assert desired.originals == {"containers/web": CORP_IMAGE}
    final = _corp(CORP_WEST) if then != "endpoint-changed" else _corp(CORP_EAST2, CORP_WEST)
    restored, desired, _ = step(current, None, policy=final)
    assert desired.originals == {}
    assert json.dumps(_without_empty_annotations(restored)) == json.dumps(body)


def test_explicit_endpoint_removed_with_no_replica_left_restores_on_deletion() -> None:
    body = workload({"web": CORP_IMAGE})
    east, _, _ = step(body, Target(*CORP_EAST), policy=_corp(CORP_EAST, CORP_WEST))
    # The policy now lists only another endpoint; deletion comes before any repoint.
    restored, _, _ = step(east, None, policy=_corp(CORP_EAST2))
    assert json.dumps(_without_empty_annotations(restored)) == json.dumps(body)


def test_a_user_edit_to_another_host_is_still_the_users_intent() -> None:
    body = workload({"web": CORP_IMAGE})
    east, _, _ = step(body, Target(*CORP_EAST), policy=_corp(CORP_EAST, CORP_WEST))
    edited = copy.deepcopy(east)
    pod_spec_of(edited)["containers"][0]["image"] = "mirror.example.com/shop/web:1"
    result, desired, _ = step(edited, Target(*CORP_WEST), policy=_corp(CORP_EAST2, CORP_WEST))
    assert images_of(result) == {"containers/web": "mirror.example.com/shop/web:1"}
    assert desired.originals == {}
    assert not {k for k in annotations_of(result) if k.startswith("geopin.io/")}


def test_user_change_after_rewrite_becomes_the_intent() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1", "api": "contoso.azurecr.io/api:1"})
    pinned, _, _ = step(body, EAST)
    edited = copy.deepcopy(pinned)
    pod_spec_of(edited)["containers"][0]["image"] = "contoso.azurecr.io/web:2"
    repinned, desired, _ = step(edited, EAST)
    assert images_of(repinned) == {
        "containers/web": "contoso.eastus.geo.azurecr.io/web:2",
        "containers/api": "contoso.eastus.geo.azurecr.io/api:1",
    }
    assert desired.originals == {
        "containers/web": "contoso.azurecr.io/web:2",
        "containers/api": "contoso.azurecr.io/api:1",
    }
    restored, _, _ = step(repinned, None)
    assert images_of(restored) == {
        "containers/web": "contoso.azurecr.io/web:2",
        "containers/api": "contoso.azurecr.io/api:1",
    }


@pytest.mark.parametrize(
    "new_image",
    [
        "nginx:1.27",
        "fabrikam.azurecr.io/web:1",
        "contoso.westus.geo.azurecr.io/web:9",  # a regional pin of another tag: the user's own
        "contoso.eastus.geo.azurecr.io/other:1",
        "contoso.azurecr.io/Web:1",  # invalid: kept and reported
    ],
)
def test_user_change_to_an_unmanaged_image_drops_the_stale_record(new_image: str) -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    pinned, _, _ = step(body, EAST)
    edited = copy.deepcopy(pinned)
    pod_spec_of(edited)["containers"][0]["image"] = new_image
    for target in (WEST, None):
        result, desired, _ = step(edited, target)
        assert images_of(result) == {"containers/web": new_image}
        assert desired.originals == {}
        assert ANNOTATION_ORIGINAL_IMAGES not in annotations_of(result)
        assert ANNOTATION_PINNED_REGION not in annotations_of(result)


def test_removed_and_renamed_containers_drop_their_record_entries() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1", "side": "contoso.azurecr.io/side:1"})
    pinned, _, _ = step(body, EAST)
    edited = copy.deepcopy(pinned)
    containers = pod_spec_of(edited)["containers"]
    containers[1]["name"] = "sidecar"  # renamed: its image is the intent now (a regional pin)
    del containers[0]
    result, desired, _ = step(edited, EAST)
    assert desired.originals == {}
    assert images_of(result) == {"containers/sidecar": "contoso.eastus.geo.azurecr.io/side:1"}
    assert ANNOTATION_ORIGINAL_IMAGES not in annotations_of(result)


def test_digest_pinning_appends_and_restores() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1", "pinned": "contoso.azurecr.io/p:1@" + SHA})
    other = "sha256:" + "cd" * 32
    digests = {"contoso.azurecr.io/web:1": SHA, "contoso.azurecr.io/p:1@" + SHA: other}
    result, desired, _ = step(body, EAST, digests=digests)
    assert images_of(result) == {
        "containers/web": "contoso.eastus.geo.azurecr.io/web:1@" + SHA,
        "containers/pinned": "contoso.eastus.geo.azurecr.io/p:1@" + SHA,  # a digest is never replaced
    }
    assert desired.originals == {
        "containers/web": "contoso.azurecr.io/web:1",
        "containers/pinned": "contoso.azurecr.io/p:1@" + SHA,
    }
    again, _, patch = step(result, EAST, digests=digests)
    assert patch == []
    assert again == result
    west, _, _ = step(result, WEST, digests=digests)
    assert images_of(west)["containers/web"] == "contoso.westus.geo.azurecr.io/web:1@" + SHA
    restored, _, _ = step(west, None)
    assert images_of(restored) == images_of(body)


def test_is_rewrite_of() -> None:
    original = "contoso.azurecr.io/web:1"
    assert is_rewrite_of(original, original, POLICY)
    assert is_rewrite_of("contoso.westus.geo.azurecr.io/web:1", original, POLICY)
    assert is_rewrite_of("contoso.westus.geo.azurecr.io/web:1@" + SHA, original, POLICY)
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/web:2", original, POLICY)
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/web", original, POLICY)
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/other:1", original, POLICY)
    assert not is_rewrite_of("fabrikam.westus.geo.azurecr.io/web:1", original, POLICY)
    assert not is_rewrite_of("contoso.westus.data.azurecr.io/web:1", original, POLICY)
    assert not is_rewrite_of("evil.com/web:1", original, POLICY)
    assert not is_rewrite_of("web:1", original, POLICY)
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/web:1", "fabrikam.azurecr.io/web:1", POLICY)
    pinned = "contoso.azurecr.io/web:1@" + SHA
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/web:1@sha256:" + "cd" * 32, pinned, POLICY)
    assert not is_rewrite_of("contoso.westus.geo.azurecr.io/web:1", pinned, POLICY)


# --------------------------------------------------------------------------- malformed and foreign records


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"containers/web": 5}', '"x"', "null"])
def test_malformed_record_is_replaced(raw: str) -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"}, annotations={ANNOTATION_ORIGINAL_IMAGES: raw})
    result, desired, patch = step(body, EAST)
    assert desired.record_was_malformed
    assert {"op": "test", "path": RECORD_POINTER, "value": raw} in patch
    assert json.loads(annotations_of(result)[ANNOTATION_ORIGINAL_IMAGES]) == {
        "containers/web": "contoso.azurecr.io/web:1"
    }
    assert read_record({}) == ({}, False)
    assert read_record({ANNOTATION_ORIGINAL_IMAGES: raw}) == ({}, True)


def test_another_policys_record_is_kept() -> None:
    foreign = {"containers/side": "fabrikam.azurecr.io/side:1"}
    body = workload(
        {"web": "contoso.azurecr.io/web:1", "side": "fabrikam.westus.geo.azurecr.io/side:1"},
        annotations={ANNOTATION_ORIGINAL_IMAGES: encode_record(foreign), ANNOTATION_PINNED_REGION: "westus"},
    )
    result, desired, _ = step(body, EAST)
    assert images_of(result)["containers/side"] == "fabrikam.westus.geo.azurecr.io/side:1"
    assert desired.originals == {**foreign, "containers/web": "contoso.azurecr.io/web:1"}
    restored, desired, _ = step(result, None)
    assert images_of(restored)["containers/web"] == "contoso.azurecr.io/web:1"
    assert images_of(restored)["containers/side"] == "fabrikam.westus.geo.azurecr.io/side:1"
    assert json.loads(annotations_of(restored)[ANNOTATION_ORIGINAL_IMAGES]) == foreign


# --------------------------------------------------------------------------- the JSON patch itself


def test_patch_shape_for_an_object_without_annotations() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    view = view_of(DEPLOYMENT, body)
    assert not view.has_annotations
    patch = json_patch(DEPLOYMENT, view, desired_state(view, POLICY, EAST))
    assert patch == [
        {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "web"},
        {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": "contoso.azurecr.io/web:1"},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/image",
            "value": "contoso.eastus.geo.azurecr.io/web:1",
        },
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": RECORD_POINTER, "value": '{"containers/web":"contoso.azurecr.io/web:1"}'},
        {"op": "add", "path": PINNED_POINTER, "value": "eastus"},
    ]


def test_patch_with_null_annotations() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    body["metadata"]["annotations"] = None
    result, _, _ = step(body, EAST)
    assert annotations_of(result)[ANNOTATION_PINNED_REGION] == "eastus"


def test_patch_keeps_existing_annotations() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"}, annotations={"a": "1"})
    result, _, patch = step(body, EAST)
    assert {"op": "add", "path": "/metadata/annotations", "value": {}} not in patch
    assert annotations_of(result)["a"] == "1"


def test_repin_patch_tests_the_current_annotations() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    east, _, _ = step(body, EAST)
    _, _, patch = step(east, WEST)
    assert patch[-2:] == [
        {"op": "test", "path": PINNED_POINTER, "value": "eastus"},
        {"op": "replace", "path": PINNED_POINTER, "value": "westus"},
    ]


def _concurrently(body: Body, change: str) -> Body:
    edited = copy.deepcopy(body)
    containers = pod_spec_of(edited)["containers"]
    if change == "image":
        containers[0]["image"] = "contoso.azurecr.io/web:2"
    elif change == "reorder":
        containers.reverse()
    elif change == "rename":
        containers[0]["name"] = "web2"
    elif change == "record":
        edited["metadata"]["annotations"][ANNOTATION_ORIGINAL_IMAGES] = '{"containers/web":"contoso.azurecr.io/web:0"}'
    elif change == "pinned":
        edited["metadata"]["annotations"][ANNOTATION_PINNED_REGION] = "centralus"
    return edited


@pytest.mark.parametrize("change", ["image", "reorder", "rename"])
def test_concurrent_container_edit_fails_the_patch(change: str) -> None:
    body = workload({"web": "contoso.azurecr.io/web:1", "api": "contoso.azurecr.io/api:1"}, annotations={})
    view = view_of(DEPLOYMENT, body)
    patch = json_patch(DEPLOYMENT, view, desired_state(view, POLICY, EAST))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(_concurrently(body, change), patch)
    jsonpatch.apply_patch(body, patch)  # the unchanged object takes it


@pytest.mark.parametrize("change", ["image", "record", "pinned"])
def test_concurrent_edit_fails_restore_and_repin(change: str) -> None:
    pinned, _, _ = step(workload({"web": "contoso.azurecr.io/web:1", "api": "contoso.azurecr.io/api:1"}), EAST)
    view = view_of(DEPLOYMENT, pinned)
    for target in (None, WEST):
        patch = json_patch(DEPLOYMENT, view, desired_state(view, POLICY, target))
        with pytest.raises(jsonpatch.JsonPatchTestFailed):
            jsonpatch.apply_patch(_concurrently(pinned, change), patch)


def test_patch_does_not_mutate_the_view_source() -> None:
    body = workload({"web": "contoso.azurecr.io/web:1"})
    before = copy.deepcopy(body)
    step(body, EAST)
    assert body == before


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind_name", sorted(KINDS))
def test_every_kind(kind_name: str) -> None:
    kind = KINDS[kind_name]
    body = workload({"web": "contoso.azurecr.io/web:1"}, init={"init": "contoso.azurecr.io/init:1"}, kind=kind)
    result, _, patch = step(body, EAST, kind=kind)
    assert any(op["path"].startswith(kind.pod_spec_pointer + "/containers/0/") for op in patch)
    assert images_of(result, kind) == {
        "initContainers/init": "contoso.eastus.geo.azurecr.io/init:1",
        "containers/web": "contoso.eastus.geo.azurecr.io/web:1",
    }
    assert step(result, EAST, kind=kind)[2] == []
    restored, _, _ = step(result, None, kind=kind)
    assert images_of(restored, kind) == images_of(body, kind)


def test_kind_pointers() -> None:
    assert KINDS["CronJob"].pod_spec_pointer == "/spec/jobTemplate/spec/template/spec"
    assert KINDS["Deployment"].pod_spec_pointer == "/spec/template/spec"
    assert KINDS["Pod"].pod_spec_pointer == "/spec"
    assert {k: (v.group, v.version, v.plural) for k, v in KINDS.items()} == {
        "Deployment": ("apps", "v1", "deployments"),
        "StatefulSet": ("apps", "v1", "statefulsets"),
        "DaemonSet": ("apps", "v1", "daemonsets"),
        "ReplicaSet": ("apps", "v1", "replicasets"),
        "CronJob": ("batch", "v1", "cronjobs"),
        "Pod": ("", "v1", "pods"),
    }


def test_pod_ephemeral_containers() -> None:
    pod = KINDS["Pod"]
    body = workload({"web": "contoso.azurecr.io/web:1"}, kind=pod, ephemeral={"debug": "contoso.azurecr.io/debug:1"})
    result, _, _ = step(body, EAST, kind=pod)
    lists = ("containers", "ephemeralContainers")
    assert images_of(result, pod, lists) == {
        "containers/web": "contoso.eastus.geo.azurecr.io/web:1",
        "ephemeralContainers/debug": "contoso.eastus.geo.azurecr.io/debug:1",
    }
    # Templates have no ephemeral containers: a Deployment's are not even looked at.
    deployment = workload({"web": "nginx"})
    pod_spec_of(deployment)["ephemeralContainers"] = [{"name": "debug", "image": "contoso.azurecr.io/debug:1"}]
    assert step(deployment, EAST)[2] == []


def test_view_of() -> None:
    body = workload(
        {"web": "contoso.azurecr.io/web:1"},
        init={"init": "busybox"},
        annotations={"geopin.io/skip": "TRUE", "geopin.io/region": "westus", "other": "x"},
    )
    view = view_of(DEPLOYMENT, body)
    assert view.ref == ("Deployment", "default", "web")
    assert view.uid == "u-1"
    assert view.labels == {"app": "web"}
    assert view.annotations == {"geopin.io/skip": "TRUE", "geopin.io/region": "westus"}
    assert view.skipped
    assert view.has_annotations
    assert [(c.list, c.index, c.key, c.image) for c in view.containers] == [
        ("initContainers", 0, "initContainers/init", "busybox"),
        ("containers", 0, "containers/web", "contoso.azurecr.io/web:1"),
    ]
    assert not view_of(DEPLOYMENT, workload({"a": "b"}, annotations={"geopin.io/skip": "false"})).skipped
    empty = view_of(DEPLOYMENT, {"metadata": {"name": "x"}})
    assert empty.containers == ()
    assert not empty.has_annotations
    assert view_of(DEPLOYMENT, {}).containers == ()


# --------------------------------------------------------------------------- property: rewrite then restore

_IMAGES = st.sampled_from(
    [
        "contoso.azurecr.io/web:1",
        "contoso.azurecr.io/team/api@" + SHA,
        "contoso.azurecr.io/a__b---c:V1_x@" + SHA,
        "Contoso.AzureCR.IO/mixed",
        "contoso.azurecr.io:443/web:1",
        "contoso.azurecr.io.evil.com/web:1",
        "xcontoso.azurecr.io/web:1",
        "fabrikam.azurecr.io/web:1",
        "contoso.westus.geo.azurecr.io/own:1",
        "contoso.eastus.geo.azurecr.io/own:1",
        "nginx",
        "library/nginx:1.27",
        "localhost:5000",
        "[::1]:5000/x",
        "contoso.azurecr.io/Bad",
        "contoso.azurecr.io/x:",
        "",
    ]
)
_PATHS = st.lists(st.sampled_from(["app", "team/app", "a.b", "x__y", "z---w"]), min_size=1, max_size=2).map("/".join)
_GENERATED = st.builds(
    lambda path, tag, digest: f"contoso.azurecr.io/{path}{tag}{digest}",
    _PATHS,
    st.sampled_from(["", ":1", ":latest", ":V_1.0-rc"]),
    st.sampled_from(["", "@" + SHA]),
)
_NAMES = st.text("abcdefghij", min_size=1, max_size=3)
_TARGETS = st.sampled_from([EAST, WEST, GLOBAL])


@settings(max_examples=150, deadline=None)
@given(
    containers=st.dictionaries(_NAMES, _IMAGES | _GENERATED, min_size=1, max_size=4),
    init=st.none() | st.dictionaries(_NAMES, _IMAGES | _GENERATED, max_size=3),
    annotations=st.none() | st.just({"team": "a"}) | st.just({}),
    targets=st.lists(_TARGETS, min_size=1, max_size=3),
)
def test_rewrite_then_restore_is_identity(
    containers: dict[str, str],
    init: dict[str, str] | None,
    annotations: dict[str, str] | None,
    targets: list[Target],
) -> None:
    original = workload(containers, init=init, annotations=annotations)
    body = original
    for target in targets:
        body, desired, _ = step(body, target)
        for key, image in images_of(original).items():
            now = images_of(body)[key]
            if key in desired.originals:
                assert desired.originals[key] == image
                moved = image if target.is_global else target.endpoint + image[image.index("/") :]
                assert now == moved
            else:
                assert now == image
        assert step(body, target)[2] == []  # idempotent at every pin
    restored, _, _ = step(body, None)
    assert step(restored, None)[2] == []
    if annotations is None and "annotations" in restored["metadata"]:
        assert restored["metadata"].pop("annotations") == {}
    assert json.dumps(restored) == json.dumps(original)
