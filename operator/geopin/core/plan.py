"""``geopin plan``: the operator's rewrite, offline, for GitOps pipelines and review.

Reads a policy and manifests, applies to each workload the JSON patch the operator would send
(with the same ``jsonpatch`` semantics as the API server), and returns the rewritten documents with a
summary and warnings. Pure apart from reading the documents it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from geopin.core.decisions import PolicySnapshot, plan_workload
from geopin.core.policy import AUTO_REGION, GLOBAL_REGION, REGION_RE, Policy
from geopin.core.rewrite import changed_containers, json_patch
from geopin.core.workloads import KINDS, PATCH_KINDS, view_of

__all__ = ["PlanResult", "PlanUsageError", "plan_documents"]

TEMPLATE_KINDS = {name: KINDS[name] for name in PATCH_KINDS}


class PlanUsageError(ValueError):
    pass


@dataclass
class PlanResult:
    documents: list[Any]
    rewritten: list[str] = field(default_factory=list)  # "Kind ns/name: container: old -> new"
    warnings: list[str] = field(default_factory=list)
    workloads: int = 0
    target: str = ""

    @property
    def problems(self) -> bool:
        return bool(self.warnings)


def plan_documents(
    policy: Policy, documents: Iterable[Any], region: str | None, active_region: str | None
) -> PlanResult:
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

    docs = [d for d in documents if d is not None]
    namespace_labels: dict[str, Mapping[str, str]] = {
        d["metadata"]["name"]: d["metadata"].get("labels") or {}
        for d in docs
        if isinstance(d, dict) and d.get("kind") == "Namespace" and d.get("metadata", {}).get("name")
    }
    result = PlanResult(documents=[], target=f"{snapshot.home().region} ({snapshot.home().endpoint})")
    for doc in docs:
        result.documents.append(_plan_one(doc, snapshot, namespace_labels, result))
    return result


def _plan_one(
    doc: Any, snapshot: PolicySnapshot, namespace_labels: Mapping[str, Mapping[str, str]], result: PlanResult
) -> Any:
    if not isinstance(doc, dict) or doc.get("kind") not in TEMPLATE_KINDS:
        return doc
    kind = TEMPLATE_KINDS[doc["kind"]]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        result.warnings.append(f"{doc['kind']} without metadata: left as it is")
        return doc
    namespace = metadata.get("namespace") or "default"
    view = view_of(kind, {**doc, "metadata": {**metadata, "namespace": namespace}})
    where = f"{kind.kind} {namespace}/{view.name}"
    result.workloads += 1
    labels = namespace_labels.get(namespace)
    if labels is None and not snapshot.policy.namespace_selector.empty:
        result.warnings.append(f"{where}: namespace {namespace!r} not in the input; its labels are unknown")
    desired = plan_workload(view, [snapshot], labels)
    if desired is None:
        return doc
    for invalid in desired.invalid:
        result.warnings.append(f"{where}: {invalid.container}: {invalid.image!r} left untouched: {invalid.reason}")
    ops = json_patch(kind, view, desired)
    if not ops:
        return doc
    for container in changed_containers(view, desired):
        result.rewritten.append(f"{where}: {container.key}: {container.image} -> {desired.images[container.key]}")
    return jsonpatch.apply_patch(doc, ops)
