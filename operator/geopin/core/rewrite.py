"""Pod template + decision → the desired images and record, and the JSON patch that gets there.

Level-based: the desired state is computed from what the object holds now, never from history.
For each container the *intent* is the image the user asked for:

- if ``geopin.io/original-images`` records an original for the container and the current image is
  that original moved to one of the policy's endpoints, the intent is the recorded original. An
  endpoint counts when the policy lists it now, when it is a ``<name>.<region>.geo`` host of the
  registry, or when ``geopin.io/pinned-endpoints`` says geopin wrote it (an explicit endpoint that
  the policy has since changed or dropped);
- otherwise the intent is the current image (the user changed it since, or geopin never touched it;
  a stale record entry is dropped).

An intent on the policy's registry is pointed at the target endpoint and recorded; any other image
(other registries, Docker Hub short names, a user's own regional pin, an invalid reference) is left
byte-identical. Restoring is the same computation with no target.

The JSON patch guards every write with ``test`` operations on the values it was computed from
(container name and image, geopin's annotations), so a concurrent edit makes the API server reject
the patch instead of geopin overwriting the user; the patch is one atomic write of images and record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geopin.core.endpoints import parse_regional
from geopin.core.health import Target
from geopin.core.policy import Policy
from geopin.core.references import (
    InvalidReference,
    Reference,
    name_fits_older_runtimes,
    parse,
    same_host,
    split_host,
    split_reference,
)
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_ENDPOINTS,
    ANNOTATION_PINNED_REGION,
    Container,
    Kind,
    WorkloadView,
)

__all__ = ["Desired", "InvalidImage", "desired_state", "json_patch", "moves_pin", "read_record"]

JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class InvalidImage:
    container: str  # the container's key, e.g. "containers/web"
    image: str
    reason: str


@dataclass(frozen=True, slots=True)
class Desired:
    images: Mapping[str, str]  # container key → image it should have (every container)
    originals: Mapping[str, str]  # the full record to store; empty → no annotation
    pinned_region: str | None
    invalid: tuple[InvalidImage, ...] = ()
    record_was_malformed: bool = False
    awaiting: tuple[tuple[str, str], ...] = ()  # (policy, region) held back by replication
    # pullSecrets: Extend — the imagePullSecrets the pod spec should list (None: leave them as they are)
    pull_secrets: tuple[str, ...] | None = None
    unknown: tuple[tuple[str, str, str], ...] = ()  # (policy, image, region) to look up first; nothing else set
    unknown_secrets: tuple[tuple[str, str], ...] = ()  # (namespace, name) of pull secrets to read first
    # geopin.io/pinned-endpoints: registry → explicit endpoint its images point to (empty → no annotation)
    pinned_endpoints: Mapping[str, str] = field(default_factory=dict)

    @property
    def undecided(self) -> bool:
        """Lookups must answer before this workload can be decided (nothing else is set then)."""
        return bool(self.unknown or self.unknown_secrets)


def moves_pin(view: WorkloadView, desired: Desired) -> bool:
    """Does writing ``desired`` move a pin the workload already has (another region or endpoint)?

    That is what a switch does (failover, failback, a changed replica list), and what
    ``maxRepointsPerSecond`` paces; a first pin, a restore or a re-pin of a user's new image is not.
    """
    before = view.annotations.get(ANNOTATION_PINNED_REGION)
    if desired.undecided or before is None or not desired.originals:
        return False
    if desired.pinned_region is not None and desired.pinned_region != before:
        return True
    return dict(desired.pinned_endpoints) != read_pinned_endpoints(view.annotations)


def read_record(annotations: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """The ``geopin.io/original-images`` record, and whether it was malformed (then treated as empty)."""
    raw = annotations.get(ANNOTATION_ORIGINAL_IMAGES)
    if raw is None:
        return {}, False
    try:
        record = json.loads(raw)
    except ValueError:
        return {}, True
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        return {}, True
    return {str(k): v for k, v in record.items()}, False


def read_pinned_endpoints(annotations: Mapping[str, str]) -> dict[str, str]:
    """The ``geopin.io/pinned-endpoints`` map (registry → endpoint); a malformed one counts as empty."""
    raw = annotations.get(ANNOTATION_PINNED_ENDPOINTS)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def registry_key(registry: str) -> str:
    """A registry as a key of ``geopin.io/pinned-endpoints``: lower-case host, port kept."""
    name, port = split_host(registry)
    return name if port is None else f"{name}:{port}"


def implied_by_registry(host: str, policy: Policy) -> bool:
    """Is ``host`` the registry's global host, or one of its ``<name>.<region>.geo.<suffix>`` hosts?"""
    if policy.manages_host(host):
        return True
    regional = parse_regional(host)
    return (
        regional is not None
        and regional.kind == "geo"
        and policy.manages_host(f"{regional.registry}.{regional.suffix}")
    )


def encode_record(record: Mapping[str, str]) -> str:
    """Canonical JSON, so that the same record is always the same string (no write on resync)."""
    return json.dumps(dict(record), sort_keys=True, separators=(",", ":"))


def _try_parse(image: str) -> Reference | None:
    try:
        return parse(image)
    except InvalidReference:
        return None


def _appended_digest(rest: str, original_rest: str) -> bool:
    """Is ``rest`` the ``original_rest`` with a digest appended (digestPinning)?"""
    if "@" in original_rest or not rest.startswith(original_rest + "@"):
        return False
    try:
        parse(f"x.io/a@{rest[len(original_rest) + 1 :]}")
    except InvalidReference:
        return False
    return True


def is_rewrite_of(image: str, original: str, policy: Policy, pinned_endpoint: str | None = None) -> bool:
    """Is ``image`` the ``original`` moved to one of the policy's endpoints (optionally digest-pinned)?

    ``pinned_endpoint`` is the explicit endpoint ``geopin.io/pinned-endpoints`` records for the
    registry: geopin wrote it, whatever the policy says now.

    Compared as text, host against the rest, so that a reference that does not parse (any more) is
    still recognised: a record must never be dropped because the current image fails to parse.
    """
    if image == original:
        return True
    host, rest = split_reference(image)
    original_host, original_rest = split_reference(original)
    if host is None or not policy.manages_host(original_host):
        return False
    if rest != original_rest and not _appended_digest(rest, original_rest):
        return False
    if pinned_endpoint is not None and same_host(host, pinned_endpoint):
        return True
    if any(same_host(host, endpoint) for endpoint in policy.endpoints.values()):
        return True
    # A pin to a geo-replica of this registry that has since left the policy (spec edit, ARM discovery):
    # still geopin's own rewrite, or the workload would stay on the removed replica and lose its original.
    return implied_by_registry(host, policy)


def intent_of(
    container: Container, record: Mapping[str, str], policy: Policy, pinned_endpoint: str | None = None
) -> tuple[str, bool]:
    """(the image the user asked for, whether the record entry belongs to another policy)."""
    recorded = record.get(container.key)
    if recorded is None:
        return container.image, False
    recorded_ref = _try_parse(recorded)
    if recorded_ref is not None and not policy.manages_host(recorded_ref.host):
        return recorded, True
    return (recorded if is_rewrite_of(container.image, recorded, policy, pinned_endpoint) else container.image), False


def managed_intents(view: WorkloadView, policy: Policy) -> dict[str, str]:
    """Container key → the user's image, for every valid image on the policy's registry."""
    record, _ = read_record(view.annotations)
    pinned_endpoint = read_pinned_endpoints(view.annotations).get(registry_key(policy.registry))
    intents: dict[str, str] = {}
    for container in view.containers:
        intent, foreign = intent_of(container, record, policy, pinned_endpoint)
        ref = None if foreign else _try_parse(intent)
        if ref is not None and policy.manages_host(ref.host):
            intents[container.key] = intent
    return intents


def served_intents(view: WorkloadView, policy: Policy) -> frozenset[str]:
    """The user's images the workload's current pin already serves: recorded, and shown rewritten.

    A container the user changed since (a new tag, still on the global name) is not among them: its
    image may not have reached the pinned replica yet.
    """
    record, _ = read_record(view.annotations)
    pinned_endpoint = read_pinned_endpoints(view.annotations).get(registry_key(policy.registry))
    served = set()
    for container in view.containers:
        recorded = record.get(container.key)
        if recorded is not None and is_rewrite_of(container.image, recorded, policy, pinned_endpoint):
            served.add(recorded)
    return frozenset(served)


def pinned_digest(image: str, intent: str) -> str | None:
    """The digest geopin appended to ``intent`` (digestPinning) when ``image`` carries one it lacks."""
    ref, orig = _try_parse(image), _try_parse(intent)
    if ref is None or orig is None or orig.digest is not None:
        return None
    return ref.digest


def desired_state(
    view: WorkloadView,
    policy: Policy,
    target: Target | None,
    digests: Mapping[str, str] | None = None,
) -> Desired:
    """What the workload should hold for ``policy``: pointed at ``target``, or restored when it is None.

    ``digests`` (None when ``digestPinning`` is off) maps an original image to the digest resolved for
    it. A digest geopin appended earlier is kept on a repoint, so a failover never changes what runs.
    """
    record, malformed = read_record(view.annotations)
    pinned_endpoints = read_pinned_endpoints(view.annotations)
    pinned_endpoint = pinned_endpoints.pop(registry_key(policy.registry), None)
    images: dict[str, str] = {}
    originals: dict[str, str] = {}
    invalid: list[InvalidImage] = []
    present = {c.key for c in view.containers}

    for container in view.containers:
        image, original, problem = _container_state(container, record, policy, pinned_endpoint, target, digests)
        images[container.key] = image
        if original is not None:
            originals[container.key] = original
        if problem is not None:
            invalid.append(problem)

    # Entries for containers that no longer exist are stale: dropped with the rest of the record.
    originals = {k: v for k, v in originals.items() if k in present}
    ours = any(not _is_foreign(v, policy) for v in originals.values())
    if ours and target is not None and not implied_by_registry(target.endpoint, policy):
        pinned_endpoints[registry_key(policy.registry)] = target.endpoint
    # Only registries the record still holds keep an entry.
    recorded = {registry_key(host) for v in originals.values() if (host := split_reference(v)[0]) is not None}
    return Desired(
        images=images,
        originals=originals,
        # Another policy's entries keep the region they point to.
        pinned_region=(target.region if target is not None else None)
        if ours
        else (view.annotations.get(ANNOTATION_PINNED_REGION) if originals else None),
        invalid=tuple(invalid),
        record_was_malformed=malformed,
        pinned_endpoints={k: v for k, v in pinned_endpoints.items() if k in recorded},
    )


def _container_state(
    container: Container,
    record: Mapping[str, str],
    policy: Policy,
    pinned_endpoint: str | None,
    target: Target | None,
    digests: Mapping[str, str] | None,
) -> tuple[str, str | None, InvalidImage | None]:
    """One container under ``desired_state``: its image, the original to record, and why it cannot move."""
    intent, foreign = intent_of(container, record, policy, pinned_endpoint)
    if foreign:
        # Another policy's record (one policy per registry): neither ours to rewrite nor to drop.
        return container.image, intent, None
    try:
        ref = parse(intent)
    except InvalidReference as e:
        # Left as the user wrote it: a recorded original that no longer parses is restored.
        return intent, None, InvalidImage(container.key, intent, e.reason)
    if not policy.manages_host(ref.host) or target is None:
        return intent, None, None
    moved = _moved(container, intent, ref, target, digests)
    if moved is None:
        reason = (
            f"{target.endpoint} would make the name longer than 255 characters, which container "
            f"runtimes before containerd 2 refuse; it stays on {ref.host}"
        )
        return intent, None, InvalidImage(container.key, intent, reason)
    return moved, intent, None


def _moved(
    container: Container, intent: str, ref: Reference, target: Target, digests: Mapping[str, str] | None
) -> str | None:
    """``intent`` on ``target`` (a digest geopin appended before is kept, else the resolved one is added);
    None when the name would not fit older runtimes."""
    if target.is_global:
        return intent
    moved_ref = ref.with_host(target.endpoint)
    if not name_fits_older_runtimes(moved_ref):
        return None
    digest = None
    if digests is not None:  # digestPinning on
        kept = pinned_digest(container.image, intent) if intent != container.image else None
        digest = kept or digests.get(intent)
    if digest is not None and moved_ref.digest is None:
        moved_ref = moved_ref.with_digest(digest)
    return str(moved_ref)


def _is_foreign(image: str, policy: Policy) -> bool:
    ref = _try_parse(image)
    return ref is None or not policy.manages_host(ref.host)


def json_patch(kind: Kind, view: WorkloadView, desired: Desired) -> JsonPatch:
    """The RFC 6902 patch from ``view`` to ``desired``; empty when the object already matches."""
    ops: JsonPatch = []
    base = kind.pod_spec_pointer
    for container in view.containers:
        new_image = desired.images.get(container.key, container.image)
        if new_image == container.image:
            continue
        pointer = f"{base}/{container.list}/{container.index}"
        ops.append({"op": "test", "path": f"{pointer}/name", "value": container.name})
        ops.append({"op": "test", "path": f"{pointer}/image", "value": container.image})
        ops.append({"op": "replace", "path": f"{pointer}/image", "value": new_image})

    if desired.pull_secrets is not None and desired.pull_secrets != view.pull_secrets:
        pointer = f"{base}/imagePullSecrets"
        if view.pull_secrets:
            for index, name in enumerate(view.pull_secrets):
                ops.append({"op": "test", "path": f"{pointer}/{index}/name", "value": name})
            ops.append({"op": "replace", "path": pointer, "value": [{"name": n} for n in desired.pull_secrets]})
        else:
            ops.append({"op": "add", "path": pointer, "value": [{"name": n} for n in desired.pull_secrets]})

    wanted = {
        ANNOTATION_ORIGINAL_IMAGES: encode_record(desired.originals) if desired.originals else None,
        ANNOTATION_PINNED_REGION: desired.pinned_region if desired.originals else None,
        ANNOTATION_PINNED_ENDPOINTS: (
            encode_record(desired.pinned_endpoints) if desired.originals and desired.pinned_endpoints else None
        ),
    }
    annotation_ops: JsonPatch = []
    for key, new in wanted.items():
        current = view.annotations.get(key)
        pointer = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        if current == new:
            if ops and current is not None and key != ANNOTATION_PINNED_REGION:
                # The images were computed from these: a concurrent change to them must fail the patch.
                annotation_ops.append({"op": "test", "path": pointer, "value": current})
            continue
        if current is not None:
            annotation_ops.append({"op": "test", "path": pointer, "value": current})
        if new is None:
            annotation_ops.append({"op": "remove", "path": pointer})
        else:
            annotation_ops.append({"op": "replace" if current is not None else "add", "path": pointer, "value": new})
    if annotation_ops and not view.has_annotations:
        annotation_ops.insert(0, {"op": "add", "path": "/metadata/annotations", "value": {}})
    return ops + annotation_ops


def changed_containers(view: WorkloadView, desired: Desired) -> list[Container]:
    return [c for c in view.containers if desired.images.get(c.key, c.image) != c.image]


SIBLING_SUFFIX = "-geopin-regional"


def sibling_secret_name(source: str) -> str:
    """The geopin-owned pull secret that extends ``source`` to the regional hosts (pullSecrets: Extend)."""
    return f"{source[: 253 - len(SIBLING_SUFFIX)]}{SIBLING_SUFFIX}"


def extended_pull_secrets(view: WorkloadView, pinned: bool) -> tuple[str, ...]:
    """The imagePullSecrets with geopin's sibling after the first secret it extends (pinned), or without
    any geopin sibling (restored). The user's own entries keep their order."""
    own = tuple(n for n in view.pull_secrets if not n.endswith(SIBLING_SUFFIX))
    if not pinned or not own:
        return own
    return (*own, sibling_secret_name(own[0]))
