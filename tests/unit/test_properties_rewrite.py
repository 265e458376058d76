"""Properties of the rewrite as a whole: no sequence of policy edits loses a workload's original, and any
reference the rewrite accepts comes out as a reference that parses and restores.

Each step is what the operator does: plan the workload under the policy as it is now (decisions.plan_workload),
turn the result into the guarded JSON patch (rewrite.json_patch) and apply it with RFC 6902 semantics
(jsonpatch), as the API server does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import string
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.health import Target
from geopin.core.policy import Policy, from_spec
from geopin.core.references import name_fits_older_runtimes, parse, split_reference
from geopin.core.rewrite import desired_state, json_patch
from geopin.core.workloads import KINDS, view_of
from tests.unit.conftest import examples
from tests.unit.test_references import hosts, references

Body = dict[str, Any]
REGIONS = ("eastus", "westus", "centralus", "northeurope", "japaneast")
REGISTRIES = ("contoso.azurecr.io", "registry.contoso.com", "registry.contoso.com:5000")
KIND_NAMES = ("Deployment", "StatefulSet", "CronJob", "ReplicaSet")


# --------------------------------------------------------------------------- workloads


def _image_on(registry: str) -> st.SearchStrategy[str]:
    path = st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6), min_size=1, max_size=3)
    tag = st.none() | st.sampled_from(["1", "v1.2.3", "latest", "1.0-rc_1"])
    digest = st.none() | st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
    host = st.sampled_from([registry, registry.upper()])

    def build(host: str, path: list[str], tag: str | None, digest: str | None) -> str:
        return f"{host}/{'/'.join(path)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    return st.builds(build, host, path, tag, digest)


def _images(registry: str) -> st.SearchStrategy[str]:
    others = st.sampled_from(
        [
            "nginx:1.27",
            "docker.io/library/redis:7",
            "fabrikam.azurecr.io/app:1",
            "contoso.westus.geo.azurecr.io/user/pin:1",  # a user's own regional pin
            f"{registry}/Bad/Ref:1",  # invalid: left and reported
            f"{registry}.evil.com/app:1",
        ]
    )
    return st.one_of(_image_on(registry), _image_on(registry), others)


@st.composite
def workloads(draw: st.DrawFn, registry: str) -> Body:
    kind = KINDS[draw(st.sampled_from(KIND_NAMES))]
    names = draw(
        st.lists(st.sampled_from(["web", "api", "proxy", "init", "side"]), min_size=1, max_size=4, unique=True)
    )
    split = draw(st.integers(0, len(names) - 1))
    pod_spec: Body = {"containers": [{"name": n, "image": draw(_images(registry))} for n in names[split:]]}
    if split:
        pod_spec["initContainers"] = [{"name": n, "image": draw(_images(registry))} for n in names[:split]]
    spec: Body = pod_spec
    for key in reversed(kind.pod_spec_path[1:]):
        spec = {key: spec}
    metadata: Body = {"name": "w", "namespace": "shop", "uid": "u-1", "labels": {"app": "w"}}
    annotations = draw(st.sampled_from([None, {}, {"team": "shop", "note": "12:30"}]))
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": f"{kind.group}/{kind.version}", "kind": kind.kind, "metadata": metadata, "spec": spec}


# --------------------------------------------------------------------------- policies and their edits


def _endpoint_choices(registry: str, region: str) -> list[str | None]:
    explicit: list[str | None] = [
        f"{region}.mirror.contoso.com",
        f"{region}-2.mirror.contoso.com:8443",
        f"127.0.0.{REGIONS.index(region) + 1}:5000",
    ]
    if registry == "contoso.azurecr.io":
        return [None, None, f"contoso.{region}.geo.azurecr.io", *explicit]
    return explicit


@st.composite
def replica_lists(draw: st.DrawFn, registry: str) -> list[dict[str, str]]:
    regions = draw(st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4, unique=True))
    replicas = []
    for region in regions:
        endpoint = draw(st.sampled_from(_endpoint_choices(registry, region)))
        replicas.append({"region": region} if endpoint is None else {"region": region, "endpoint": endpoint})
    return replicas


def _edit(draw: st.DrawFn, spec: Body) -> Body:
    """One edit a platform team makes: an endpoint changed, a replica added, removed or moved, the region."""
    spec = copy.deepcopy(spec)
    replicas: list[dict[str, str]] = spec["replicas"]
    edit = draw(st.sampled_from(["endpoint", "add", "remove", "reorder", "region", "digest"]))
    if edit == "endpoint":
        replica = draw(st.sampled_from(replicas))
        choice = draw(st.sampled_from(_endpoint_choices(spec["registry"], replica["region"])))
        replica.pop("endpoint", None)
        if choice is not None:
            replica["endpoint"] = choice
    elif edit == "add":
        free = [r for r in REGIONS if r not in {x["region"] for x in replicas}]
        if free:
            region = draw(st.sampled_from(free))
            endpoint = draw(st.sampled_from(_endpoint_choices(spec["registry"], region)))
            replicas.insert(
                draw(st.integers(0, len(replicas))), {"region": region} | ({"endpoint": endpoint} if endpoint else {})
            )
    elif edit == "remove" and len(replicas) > 1:
        replicas.pop(draw(st.integers(0, len(replicas) - 1)))
    elif edit == "reorder":
        spec["replicas"] = draw(st.permutations(replicas))
    elif edit == "region":
        spec["region"] = draw(st.sampled_from(REGIONS))
    elif edit == "digest":
        spec["digestPinning"] = not spec.get("digestPinning", False)
    return spec


def _policy(spec: Body) -> Policy | None:
    """The parsed policy, or None when the edit made it invalid (the API server would refuse it)."""
    try:
        return from_spec("p", spec)
    except ValueError:
        return None


def _digest(image: str) -> str:
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def _reconcile(body: Body, policy: Policy, healthy: frozenset[str], deleting: bool = False) -> Body:
    kind = KINDS[body["kind"]]
    snapshot = PolicySnapshot(
        policy=policy,
        cluster_region=policy.region,
        usable=healthy,
        deleting=deleting,
        digest_of=_digest,
    )
    view = view_of(kind, body)
    desired = plan_workload(view, [snapshot], {})
    if desired is None or desired.unknown:
        return body
    result: Body = jsonpatch.apply_patch(body, json_patch(kind, view, desired))
    return result


def _without_empty_annotations(body: Body) -> Body:
    # The API server drops an empty annotations map (omitempty): the only difference it may leave.
    if body["metadata"].get("annotations") == {}:
        body = copy.deepcopy(body)
        del body["metadata"]["annotations"]
    return body


@st.composite
def histories(draw: st.DrawFn) -> tuple[Body, list[tuple[Policy, frozenset[str] | None]], Policy]:
    """A workload, the policy as it is at each reconcile (with the replicas usable then, or None when the
    operator was down), and the policy as it is when it is deleted."""
    registry = draw(st.sampled_from(REGISTRIES))
    body = draw(workloads(registry))
    spec: Body = {"registry": registry, "region": "eastus", "replicas": draw(replica_lists(registry))}
    steps: list[tuple[Policy, frozenset[str] | None]] = []
    policy = _policy(spec)
    assert policy is not None
    for _ in range(draw(st.integers(1, 6))):
        listed = [r.region for r in policy.replicas]
        healthy = draw(st.none() | st.frozensets(st.sampled_from(listed)))
        steps.append((policy, healthy))
        edited = _edit(draw, spec)
        if (parsed := _policy(edited)) is not None:
            spec, policy = edited, parsed
    return body, steps, policy


@settings(max_examples=examples(200))
@given(histories())
def test_any_sequence_of_policy_edits_then_deletion_restores_the_original(
    history: tuple[Body, list[tuple[Policy, frozenset[str] | None]], Policy],
) -> None:
    original, steps, final = history
    body = original
    for policy, healthy in steps:
        if healthy is not None:  # None: the operator was down while the policy changed
            body = _reconcile(body, policy, healthy)
            record = json.loads((body["metadata"].get("annotations") or {}).get("geopin.io/original-images", "{}"))
            # The record only ever holds what the user wrote.
            originals = {c.key: c.image for c in view_of(KINDS[original["kind"]], original).containers}
            assert all(originals[key] == image for key, image in record.items()), (record, originals)
    restored = _reconcile(body, final, frozenset(), deleting=True)
    assert json.dumps(_without_empty_annotations(restored)) == json.dumps(_without_empty_annotations(original))


def _pod(body: Body) -> Body:
    node = body
    for key in KINDS[body["kind"]].pod_spec_path:
        node = node[key]
    return node


# --------------------------------------------------------------------------- any reference the rewrite accepts

_LONG_PATHS = (
    st.integers(1, 4)
    .flatmap(
        lambda n: st.lists(
            st.text(string.ascii_lowercase + string.digits, min_size=40, max_size=64), min_size=n, max_size=n
        )
    )
    .map("/".join)
)


@st.composite
def accepted_candidates(draw: st.DrawFn) -> tuple[str, str, str]:
    """(registry, an image on it, an endpoint): references of the grammar, some near the 255-character limit."""
    registry = draw(hosts())
    text, ref = draw(references())
    if draw(st.booleans()):
        text = text.replace(ref.path, draw(_LONG_PATHS), 1) if ref.host is None else text
    rest = text if ref.host is None else text[len(ref.host) + 1 :]
    image = f"{registry}/{rest}"
    endpoint = draw(hosts())
    return registry, image, endpoint


@settings(max_examples=examples(300))
@given(accepted_candidates())
def test_any_reference_the_rewrite_accepts_parses_and_restores(case: tuple[str, str, str]) -> None:
    registry, image, endpoint = case
    policy = _policy(
        {"registry": registry, "region": "eastus", "replicas": [{"region": "eastus", "endpoint": endpoint}]}
    )
    if policy is None:  # a registry or endpoint the policy itself refuses (a port out of range, an IPv6 literal)
        return
    kind = KINDS["Deployment"]
    body: Body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
    }
    view = view_of(kind, body)
    desired = desired_state(view, policy, Target("eastus", endpoint))
    pinned: Body = jsonpatch.apply_patch(body, json_patch(kind, view, desired))
    moved = _pod(pinned)["containers"][0]["image"]
    if moved != image:
        ref = parse(moved)  # what geopin writes, geopin can read
        assert name_fits_older_runtimes(ref)
        assert split_reference(moved)[1] == split_reference(image)[1]  # only the host changed
        again = desired_state(view_of(kind, pinned), policy, Target("eastus", endpoint))
        assert again.originals == desired.originals  # recognised as geopin's own on the next pass
    restored: Body = jsonpatch.apply_patch(
        pinned, json_patch(kind, view_of(kind, pinned), desired_state(view_of(kind, pinned), policy, None))
    )
    assert json.dumps(_without_empty_annotations(restored)) == json.dumps(_without_empty_annotations(body))
