"""``geopin plan``: the operator's rewrite, offline, for GitOps pipelines and review.

Reads a policy and manifests (as kubectl reads them), computes for each workload the JSON patch the
operator would send, and applies it (with the same ``jsonpatch`` semantics as the API server) to the
document it was read from, whose other values stay exactly as they were. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.policy import AUTO_REGION, GLOBAL_REGION, REGION_RE, Policy
from geopin.core.rewrite import JsonPatch, changed_containers, json_patch
from geopin.core.workloads import patch_kind, shape_errors, view_of

__all__ = ["PlanResult", "PlanUsageError", "apply_patches", "plan_documents"]


class PlanUsageError(ValueError):
    pass


@dataclass
class PlanResult:
    patches: list[JsonPatch] = field(default_factory=list)  # one per document, empty when it stays as it is
    rewritten: list[str] = field(default_factory=list)  # "Kind ns/name: container: old -> new"
    warnings: list[str] = field(default_factory=list)
    workloads: int = 0
    target: str = ""

    @property
    def problems(self) -> bool:
        return bool(self.warnings)


def plan_documents(
    policy: Policy, documents: Sequence[Any], region: str | None, active_region: str | None
) -> PlanResult:
    """The patch of every document (as kubectl reads it), with the summary and warnings."""
    cluster_region = policy.region if policy.region != AUTO_REGION else region
    if cluster_region is None:
        raise PlanUsageError("the policy says region: auto; give the cluster's region with --region")
    if not REGION_RE.fullmatch(cluster_region):
        raise PlanUsageError(f"--region {cluster_region!r} is not an Azure region name (lower-case letters and digits)")
    usable = frozenset(r.region for r in policy.replicas)
    if active_region is not None:
        if active_region != GLOBAL_REGION and policy.replica(active_region) is None:
            listed = ", ".join([r.region for r in policy.replicas] + [GLOBAL_REGION])
            raise PlanUsageError(f"--active-region {active_region!r} is not one of: {listed}")
        usable = frozenset({active_region}) - {GLOBAL_REGION}
    snapshot = PolicySnapshot(policy=policy, cluster_region=cluster_region, usable=usable)

    namespace_labels: dict[str, Mapping[str, str]] = {}
    for obj, _ in (found for doc in documents for found in _objects(doc)):
        metadata = obj.get("metadata")
        if obj.get("kind") == "Namespace" and isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
            labels = metadata.get("labels")
            namespace_labels[metadata["name"]] = labels if isinstance(labels, Mapping) else {}
    result = PlanResult(target=f"{snapshot.home().region} ({snapshot.home().endpoint})")
    for doc in documents:
        patch: JsonPatch = []
        for obj, pointer in _objects(doc):
            patch += _plan_one(obj, pointer, snapshot, namespace_labels, result)
        result.patches.append(patch)
    return result


def _objects(doc: Any, pointer: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """Every object of a document with its JSON pointer: the document itself, or the items of a List
    (``kind: List`` as ``kubectl get -o yaml`` prints it, or a typed one such as ``DeploymentList``)."""
    if not isinstance(doc, dict):
        return
    items = doc.get("items")
    if isinstance(doc.get("kind"), str) and doc["kind"].endswith("List") and isinstance(items, list):
        for index, item in enumerate(items):
            yield from _objects(item, f"{pointer}/items/{index}")
    else:
        yield doc, pointer


def apply_patches(trees: Sequence[Any], result: PlanResult) -> list[Any]:
    """Each document with its patch applied; a quoted or plain image keeps its style."""
    rewritten: list[Any] = []
    for tree, ops in zip(trees, result.patches, strict=True):
        if ops:
            tree = jsonpatch.apply_patch(tree, [_same_style(tree, op) for op in ops])
        rewritten.append(tree)
    return rewritten


def _same_style(tree: Any, op: dict[str, Any]) -> dict[str, Any]:
    """A replacement string of the type (a str subclass: quoting style) of the string it replaces."""
    if op["op"] != "replace" or not isinstance(op["value"], str):
        return op
    old = jsonpatch.JsonPointer(op["path"]).resolve(tree, None)
    if isinstance(old, str) and type(old) is not str:
        value = type(old)(op["value"])
        if hasattr(old, "__dict__"):
            vars(value).update(vars(old))  # a tag, a style
        return {**op, "value": value}
    return op


def _plan_one(
    doc: dict[str, Any],
    pointer: str,
    snapshot: PolicySnapshot,
    namespace_labels: Mapping[str, Mapping[str, str]],
    result: PlanResult,
) -> JsonPatch:
    """The patch of one object (its paths under ``pointer``), or none with a warning when it is malformed."""
    kind = patch_kind(doc)
    if kind is None:
        return []
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = (metadata.get("namespace") if isinstance(metadata, dict) else None) or "default"
    where = f"{kind.kind} {namespace}/{name}" if isinstance(name, str) and isinstance(namespace, str) else kind.kind
    result.workloads += 1
    if problems := shape_errors(kind, doc):
        result.warnings.append(f"{where}: {'; '.join(problems)}; left as it is")
        return []
    assert isinstance(metadata, dict)
    view = view_of(kind, {**doc, "metadata": {**metadata, "namespace": namespace}})
    labels = namespace_labels.get(namespace)
    if labels is None and not snapshot.policy.namespace_selector.empty:
        result.warnings.append(f"{where}: namespace {namespace!r} not in the input; its labels are unknown")
    desired = plan_workload(view, [snapshot], labels)
    if desired is None:
        return []
    for invalid in desired.invalid:
        result.warnings.append(f"{where}: {invalid.container}: {invalid.image!r} left untouched: {invalid.reason}")
    ops = json_patch(kind, view, desired)
    for container in changed_containers(view, desired):
        result.rewritten.append(f"{where}: {container.key}: {container.image} -> {desired.images[container.key]}")
    return [{**op, "path": pointer + op["path"]} for op in ops]
