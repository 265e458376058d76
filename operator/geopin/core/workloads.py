"""Pod-template workloads: where each kind keeps its pod spec, and a compact view of one object.

The view is what the operator keeps in memory per workload (a Kopf index value): just enough to
decide, without another API call, whether the object needs a write. At 10,000 workloads it stays
small because it holds images and a few annotations, never the whole object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geopin.core.gitops import managed_by

__all__ = [
    "ANNOTATION_ORIGINAL_IMAGES",
    "ANNOTATION_PINNED_ENDPOINTS",
    "ANNOTATION_PINNED_REGION",
    "ANNOTATION_REGION",
    "ANNOTATION_SKIP",
    "CONTAINER_LISTS",
    "KINDS",
    "PATCH_KINDS",
    "Container",
    "Kind",
    "WorkloadView",
    "is_standalone",
    "patch_kind",
    "shape_errors",
    "tracked",
    "view_of",
]

ANNOTATION_SKIP = "geopin.io/skip"
ANNOTATION_REGION = "geopin.io/region"
ANNOTATION_ORIGINAL_IMAGES = "geopin.io/original-images"
ANNOTATION_PINNED_REGION = "geopin.io/pinned-region"
# registry → explicit endpoint its images point to (one that the registry's name does not imply): how
# geopin recognises its own rewrite once the policy changes or drops that endpoint.
ANNOTATION_PINNED_ENDPOINTS = "geopin.io/pinned-endpoints"
_OWN_ANNOTATIONS = (
    ANNOTATION_SKIP,
    ANNOTATION_REGION,
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_PINNED_ENDPOINTS,
)

# Ephemeral containers exist only on Pods and are rewritten only in Admission mode.
CONTAINER_LISTS = ("initContainers", "containers")


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    pod_spec_path: tuple[str, ...]  # from the object's root to the pod spec

    @property
    def pod_spec_pointer(self) -> str:
        """The JSON pointer of the pod spec, e.g. ``/spec/template/spec``."""
        return "/" + "/".join(self.pod_spec_path)


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("Deployment", "apps", "v1", "deployments", ("spec", "template", "spec")),
        Kind("StatefulSet", "apps", "v1", "statefulsets", ("spec", "template", "spec")),
        Kind("DaemonSet", "apps", "v1", "daemonsets", ("spec", "template", "spec")),
        Kind("ReplicaSet", "apps", "v1", "replicasets", ("spec", "template", "spec")),
        Kind("CronJob", "batch", "v1", "cronjobs", ("spec", "jobTemplate", "spec", "template", "spec")),
        Kind("Pod", "", "v1", "pods", ("spec",)),
    )
}


# The kinds whose pod templates the operator rewrites in Patch mode (bare Pods: Admission mode only).
PATCH_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "CronJob", "ReplicaSet")


@dataclass(frozen=True, slots=True)
class Container:
    list: str  # "containers" | "initContainers" | "ephemeralContainers"
    index: int
    name: str
    image: str

    @property
    def key(self) -> str:
        """The key of this container in ``geopin.io/original-images``: ``<list>/<name>``."""
        return f"{self.list}/{self.name}"


WorkloadRef = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True, slots=True)
class WorkloadView:
    kind: str
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]  # only geopin.io/* ones
    containers: tuple[Container, ...]
    has_annotations: bool  # whether metadata.annotations exists at all (JSON patch needs to know)
    gitops: str | None = None  # "Argo CD" / "Flux" when a GitOps tool manages the object
    pull_secrets: tuple[str, ...] = ()  # the pod spec's imagePullSecrets names, in order

    @property
    def ref(self) -> WorkloadRef:
        return (self.kind, self.namespace, self.name)

    @property
    def skipped(self) -> bool:
        return self.annotations.get(ANNOTATION_SKIP, "").lower() == "true"


def _dig(obj: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for key in path:
        value = obj.get(key)
        if not isinstance(value, Mapping):
            return {}
        obj = value
    return obj


def view_of(kind: Kind, body: Mapping[str, Any]) -> WorkloadView:
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations")
    pod_spec = _dig(body, kind.pod_spec_path)
    lists = (*CONTAINER_LISTS, "ephemeralContainers") if kind.kind == "Pod" else CONTAINER_LISTS
    containers = tuple(
        Container(list=list_name, index=index, name=str(c.get("name", "")), image=str(c.get("image") or ""))
        for list_name in lists
        for index, c in enumerate(pod_spec.get(list_name) or [])
        if isinstance(c, Mapping)
    )
    return WorkloadView(
        kind=kind.kind,
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        labels=dict(metadata.get("labels") or {}),
        annotations={k: v for k, v in (annotations or {}).items() if k in _OWN_ANNOTATIONS},
        containers=containers,
        has_annotations=annotations is not None,
        gitops=managed_by(metadata) if kind.kind != "Pod" else None,
        pull_secrets=tuple(
            str(s.get("name"))
            for s in pod_spec.get("imagePullSecrets") or []
            if isinstance(s, Mapping) and s.get("name")
        ),
    )


def is_standalone(body: Mapping[str, Any]) -> bool:
    """Not managed by a controller (a Deployment's ReplicaSets, a CronJob's Jobs are not ours)."""
    owners = body.get("metadata", {}).get("ownerReferences") or []
    return not any(isinstance(owner, Mapping) and owner.get("controller") is True for owner in owners)


def tracked(kind: Kind, body: Mapping[str, Any]) -> bool:
    """Is this object of a watched kind a workload of its own? The one rule the operator and plan share."""
    return kind.kind != "ReplicaSet" or is_standalone(body)


def patch_kind(body: Mapping[str, Any]) -> Kind | None:
    """The kind of a manifest whose pod template Patch mode rewrites, or None (``geopin plan``)."""
    name = body.get("kind")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None or kind.kind not in PATCH_KINDS:
        return None
    api_version = body.get("apiVersion")
    if isinstance(api_version, str) and api_version.rpartition("/")[0] != kind.group:
        return None  # the same kind name in another API group is not what the operator watches
    return kind if tracked(kind, body) else None


def shape_errors(kind: Kind, body: Mapping[str, Any]) -> list[str]:
    """What the API server's schema would reject in the fields geopin reads, as ``field: problem``.

    Only offline manifests (``geopin plan``) can be malformed; objects from the API server never are.
    Duplicate container names are included: one record key would stand for two containers.
    """
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        return ["metadata: must be an object"]
    errors = _metadata_errors(metadata)
    path = ""
    node: Any = body
    for key in kind.pod_spec_path:
        path = f"{path}.{key}" if path else key
        node = node.get(key)
        if node is None:
            return errors
        if not isinstance(node, Mapping):
            return [*errors, f"{path}: must be an object"]
    return errors + _container_errors(node, path)


def _metadata_errors(metadata: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    for field in ("name", "namespace"):
        if metadata.get(field) is not None and not isinstance(metadata[field], str):
            errors.append(f"metadata.{field}: must be a string")
    for field in ("labels", "annotations"):
        values = metadata.get(field)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            errors.append(f"metadata.{field}: must be an object")
            continue
        errors += [
            f"metadata.{field}.{key}: {_not_a_string(value)}"
            for key, value in values.items()
            if not isinstance(value, str)
        ]
    owners = metadata.get("ownerReferences")
    if owners is not None and not (isinstance(owners, list) and all(isinstance(o, Mapping) for o in owners)):
        errors.append("metadata.ownerReferences: must be a list of objects")
    return errors


def _container_errors(pod_spec: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for list_name in CONTAINER_LISTS:
        containers = pod_spec.get(list_name)
        if containers is None:
            continue
        if not isinstance(containers, list):
            errors.append(f"{path}.{list_name}: must be a list")
            continue
        for index, container in enumerate(containers):
            where = f"{path}.{list_name}[{index}]"
            if not isinstance(container, Mapping):
                errors.append(f"{where}: must be an object")
                continue
            name, image = container.get("name"), container.get("image")
            if name is None:
                errors.append(f"{where}.name: required")
            elif not isinstance(name, str):
                errors.append(f"{where}.name: must be a string")
            elif (list_name, name) in seen:
                errors.append(f"{where}.name: {name!r} is used twice")
            else:
                seen.add((list_name, name))
            if image is not None and not isinstance(image, str):
                errors.append(f"{where}.image: must be a string")
    return errors


def _not_a_string(value: Any) -> str:
    if isinstance(value, Mapping | list):
        return "must be a string"
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f'must be a string (quote it: "{text}")'
