"""One workload + every policy's current view of the world → the workload's desired state (pure).

A policy acts on a workload in one of three ways: point its images at a target, restore them (the
workload opted out, is not selected, or the policy is being deleted), or leave it alone (the policy
is invalid, in Audit mode, or conflicts with an older one). Several policies (one per registry) are
folded one after the other, each keeping the others' record entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from geopin.core.health import Target, choose, preference_order
from geopin.core.keyring import key_matches
from geopin.core.nodes import needs_node_credentials
from geopin.core.policy import GLOBAL_REGION, Mode, Policy, PullSecrets
from geopin.core.rewrite import (
    SIBLING_SUFFIX,
    Desired,
    InvalidImage,
    changed_containers,
    desired_state,
    encode_record,
    extended_pull_secrets,
    managed_intents,
    pinned_digest,
    served_intents,
)
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_ENDPOINTS,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_REGION,
    WorkloadView,
)

__all__ = ["DEFAULT_EXCLUDED_NAMESPACES", "PolicySnapshot", "decide", "is_selected", "plan_workload"]

DEFAULT_EXCLUDED_NAMESPACES = frozenset({"kube-system"})


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """What one policy knows at an instant; immutable so workers can share it without locks."""

    policy: Policy
    cluster_region: str | None
    usable: frozenset[str]
    deleting: bool = False
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    # (image, region) → is the manifest there? None: not looked up yet. Used when replicationCheck is on.
    availability: Callable[[str, str], bool | None] | None = None
    # (image, region) → did the replica itself answer "present" (not a guess after a failed HEAD)?
    # None: every presence counts as verified (a standby's published gaps hold no guesses).
    verified: Callable[[str, str], bool] | None = None
    # image → digest resolved for it (digestPinning), None: not resolved yet.
    digest_of: Callable[[str], str | None] | None = None
    # nodeImageCheck: Enforce while a schedulable node's kubelet has no credentials for regional hosts.
    node_credentials_enforced: bool = False
    # (namespace, Secret name) → the registry keys of a pull secret (never its credentials);
    # () when it does not exist or cannot be read, None: not read yet.
    pull_secret_keys: Callable[[str, str], tuple[str, ...] | None] | None = None
    # strategy: Redirect with a working admission path: new Pods of a workload whose pinned replica is
    # unusable are pinned at admission to the target.
    redirects: bool = False
    # Unusable replicas whose pinned templates keep their pin for now (Redirect, repointAfterSeconds).
    held: frozenset[str] = frozenset()

    @property
    def writes(self) -> bool:
        """Does the policy write workload templates? Patch mode pins them; Admission mode restores
        them (it rewrites Pods at creation instead); Audit mode writes nothing."""
        return self.policy.mode in (Mode.PATCH, Mode.ADMISSION)

    def home(self) -> Target:
        """Where a workload without preferences (nor pull secrets of its own) points now."""
        if self.node_credentials_enforced:
            endpoints = self.policy.endpoints
            covered = frozenset(r for r in self.usable if not needs_node_credentials(endpoints[r]))
            return choose(self.policy, self.cluster_region, covered)
        return choose(self.policy, self.cluster_region, self.usable)


def is_selected(snapshot: PolicySnapshot, view: WorkloadView, namespace_labels: Mapping[str, str] | None) -> bool:
    policy = snapshot.policy
    if view.skipped:
        return False
    if policy.namespace_selector.empty:
        if view.namespace in snapshot.excluded_namespaces:
            return False
    elif namespace_labels is None or not policy.namespace_selector.matches(namespace_labels):
        return False
    return policy.workload_selector.matches(view.labels)


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one workload goes under one policy, and what held it back."""

    target: Target | None  # None: restore
    awaiting: str | None = None  # a preferred region skipped because an image has not replicated there yet
    unknown: tuple[tuple[str, str], ...] = ()  # (image, region) to look up before deciding; region "" = digest
    digests: Mapping[str, str] | None = None  # image → digest to append (digestPinning), else None
    unknown_secrets: tuple[str, ...] = ()  # pull secrets (in the workload's namespace) to read before deciding


def _secret_keys(snapshot: PolicySnapshot, view: WorkloadView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys of the workload's own pull secrets, names of those not read yet)."""
    keys: list[str] = []
    unread: list[str] = []
    lookup = snapshot.pull_secret_keys
    for name in view.pull_secrets:
        if name.endswith(SIBLING_SUFFIX):
            continue  # geopin's sibling holds the regional keys Extend derives from the workload's own
        found = lookup(view.namespace, name) if lookup is not None else ()
        if found is None:
            unread.append(name)
        else:
            keys.extend(found)
    return tuple(keys), tuple(unread)


def _has_regional_credentials(policy: Policy, keys: tuple[str, ...], host: str) -> bool:
    """Would the kubelet find pull-secret credentials for ``host`` (its own matching rules)?

    With ``pullSecrets: Extend`` a key for the global host is enough: geopin copies it to every
    regional host in a sibling secret before the pin is written.
    """
    if any(key_matches(key, host) for key in keys):
        return True
    return policy.pull_secrets is PullSecrets.EXTEND and any(key_matches(key, policy.registry) for key in keys)


def decide(snapshot: PolicySnapshot, view: WorkloadView, namespace_labels: Mapping[str, str] | None) -> Choice:
    """The target for this workload under this policy (or restore), honouring replication.

    Healthy replicas are tried in preference order. With ``replicationCheck``, a replica qualifies only
    once every image of the workload is there; at the region the workload already points to, only the
    images its pin does not serve yet are checked (its pods pull the others from it now; a user's new
    tag may not have reached it). With none qualifying, the fallback applies (global, or stay).
    """
    if snapshot.deleting or not is_selected(snapshot, view, namespace_labels):
        return Choice(None)
    images = sorted(set(managed_intents(view, snapshot.policy).values()))
    found = _first_qualifying(snapshot, view, images)
    if isinstance(found, Choice):
        return found  # something must be looked up first
    target, awaiting = found
    if not snapshot.policy.digest_pinning or target.is_global:
        return Choice(target, awaiting)
    return _with_digests(snapshot, view, images, target, awaiting)


def _first_qualifying(
    snapshot: PolicySnapshot, view: WorkloadView, images: list[str]
) -> tuple[Target, str | None] | Choice:
    """The first usable replica in preference order that qualifies (credentials, replication), else the
    fallback; with the first region still awaiting replication. A Choice when a lookup is needed first.

    A presence that is only a guess (the HEAD failed) qualifies a replica only when no replica's own
    answer does: a workload is never moved to a replica that may lack its images while one that has
    them is usable, and fails open only when nothing better is known."""
    policy = snapshot.policy
    current = view.annotations.get(ANNOTATION_PINNED_REGION)
    preferred = view.annotations.get(ANNOTATION_REGION)
    check = snapshot.availability if policy.replication_check and images else None
    # At the current pin only the images it does not serve yet need a look-up (a user's new tag).
    served = served_intents(view, policy) if check is not None and current is not None else frozenset()
    unserved = [image for image in images if image not in served]
    awaiting: str | None = None
    # nodeImageCheck: Enforce: a regional host the nodes cannot authenticate to needs the workload's
    # own pull secrets to cover it; without them the global endpoint (which every AKS node covers).
    keys: tuple[str, ...] | None = None
    lacks_credentials = False
    # Redirect: a template pinned to a replica unusable for less than repointAfterSeconds stays; its
    # new Pods are pinned to the target at admission instead (running Pods never restart).
    usable = snapshot.usable | (snapshot.held & {current}) if current is not None else snapshot.usable
    verified = snapshot.verified
    guessed: tuple[Target, str | None] | None = None  # the first replica qualified by a guess alone
    for region in preference_order(policy, snapshot.cluster_region, preferred):
        if region not in usable:
            continue
        endpoint = policy.endpoints[region]
        if snapshot.node_credentials_enforced and needs_node_credentials(endpoint):
            if keys is None:
                keys, unread = _secret_keys(snapshot, view)
                if unread:
                    return Choice(None, unknown_secrets=unread)
            if not _has_regional_credentials(policy, keys, endpoint):
                lacks_credentials = True
                continue
        checked = unserved if region == current else images
        if check is not None and checked:
            found = [check(image, region) for image in checked]
            missing = [image for image, present in zip(checked, found, strict=True) if present is None]
            if missing:
                return Choice(None, unknown=tuple((image, region) for image in missing))
            if not all(found):
                awaiting = awaiting or region
                continue
            if verified is not None and not all(verified(image, region) for image in checked):
                guessed = guessed or (Target(region, endpoint), awaiting)
                awaiting = awaiting or region
                continue
        return Target(region, endpoint), awaiting
    if guessed is not None:
        return guessed  # fail open: no replica answered for the images, and this one may have them
    if lacks_credentials:
        return Target(GLOBAL_REGION, policy.registry), awaiting  # not Stay: a kept regional pin fails to pull
    return choose(policy, snapshot.cluster_region, frozenset(), preferred, current), awaiting


def _with_digests(
    snapshot: PolicySnapshot, view: WorkloadView, images: list[str], target: Target, awaiting: str | None
) -> Choice:
    """``digestPinning``: the target with each image's digest, or the digests to look up first."""
    digests: dict[str, str] = {}
    unresolved: list[tuple[str, str]] = []
    for image in images:
        digest = snapshot.digest_of(image) if snapshot.digest_of is not None else None
        if digest is not None:
            digests[image] = digest
        elif "@" not in image:
            unresolved.append((image, ""))
    if unresolved and not _already_digest_pinned(view, snapshot.policy):
        return Choice(None, unknown=tuple(unresolved))
    return Choice(target, awaiting, digests=digests)


def _already_digest_pinned(view: WorkloadView, policy: Policy) -> bool:
    """Every managed image already carries the digest geopin appended (kept on a repoint)."""
    intents = managed_intents(view, policy)
    by_key = {c.key: c.image for c in view.containers}
    return all(pinned_digest(by_key[key], intent) is not None or "@" in intent for key, intent in intents.items())


def _applied(view: WorkloadView, desired: Desired) -> WorkloadView:
    """The view as it would be after ``desired`` is written (for folding the next policy)."""
    containers = tuple(replace(c, image=desired.images.get(c.key, c.image)) for c in view.containers)
    written = (ANNOTATION_ORIGINAL_IMAGES, ANNOTATION_PINNED_REGION, ANNOTATION_PINNED_ENDPOINTS)
    annotations = {k: v for k, v in view.annotations.items() if k not in written}
    if desired.originals:
        annotations[ANNOTATION_ORIGINAL_IMAGES] = encode_record(desired.originals)
        if desired.pinned_endpoints:
            annotations[ANNOTATION_PINNED_ENDPOINTS] = encode_record(desired.pinned_endpoints)
        if desired.pinned_region is not None:
            annotations[ANNOTATION_PINNED_REGION] = desired.pinned_region
        elif ANNOTATION_PINNED_REGION in view.annotations:
            annotations[ANNOTATION_PINNED_REGION] = view.annotations[ANNOTATION_PINNED_REGION]
    pull_secrets = desired.pull_secrets if desired.pull_secrets is not None else view.pull_secrets
    return replace(view, containers=containers, annotations=annotations, pull_secrets=pull_secrets)


def plan_workload(
    view: WorkloadView,
    snapshots: Iterable[PolicySnapshot],
    namespace_labels: Mapping[str, str] | None,
    *,
    admission: bool = False,
) -> Desired | None:
    """The workload's desired state under every writing policy; None when no policy writes.

    For a workload template (``admission=False``) Patch-mode policies pin and Admission-mode ones
    restore; for a Pod at creation (``admission=True``) only Admission-mode policies act, and pin.
    """
    if len({c.key for c in view.containers}) != len(view.containers):
        return None  # one record key would stand for two containers (the API server refuses such Pods)
    current = view
    result: Desired | None = None
    invalid: list[InvalidImage] = []
    awaiting: list[tuple[str, str]] = []
    unknown: list[tuple[str, str, str]] = []
    unknown_secrets: list[tuple[str, str]] = []
    for snapshot in snapshots:
        mode = snapshot.policy.mode
        if admission and mode is not Mode.ADMISSION:
            continue
        restore_template = mode is Mode.ADMISSION and not admission
        choice = Choice(None) if restore_template else decide(snapshot, current, namespace_labels)
        if choice.unknown or choice.unknown_secrets:
            unknown.extend((snapshot.policy.name, image, region) for image, region in choice.unknown)
            unknown_secrets.extend((view.namespace, name) for name in choice.unknown_secrets)
            continue
        if choice.awaiting is not None:
            awaiting.append((snapshot.policy.name, choice.awaiting))
        desired = desired_state(current, snapshot.policy, choice.target, choice.digests)
        if mode is Mode.PATCH or restore_template:
            extend = snapshot.policy.pull_secrets is PullSecrets.EXTEND and not restore_template
            regional = extend and desired.pinned_region not in (None, GLOBAL_REGION) and bool(desired.originals)
            desired = replace(desired, pull_secrets=extended_pull_secrets(current, regional))
        invalid.extend(i for i in desired.invalid if i not in invalid)
        if not snapshot.writes:
            continue
        pinned = desired.pinned_region
        if pinned is None and result is not None and desired.originals:
            pinned = result.pinned_region
        result = replace(desired, pinned_region=pinned)
        current = _applied(current, result)
    if unknown or unknown_secrets:
        # Not decidable until the registry (or the API server) answers: the caller looks these up
        # and plans again.
        return Desired(
            images={},
            originals={},
            pinned_region=None,
            unknown=tuple(unknown),
            unknown_secrets=tuple(dict.fromkeys(unknown_secrets)),
        )
    if result is None:
        return None
    return replace(result, invalid=tuple(invalid), awaiting=tuple(awaiting))


def audit_changes(
    snapshot: PolicySnapshot, view: WorkloadView, namespace_labels: Mapping[str, str] | None
) -> list[tuple[str, str, str]]:
    """Audit mode: (container key, current image, image Patch mode would write), nothing written."""
    choice = decide(snapshot, view, namespace_labels)
    if choice.unknown or choice.unknown_secrets:
        return []
    desired = desired_state(view, snapshot.policy, choice.target, choice.digests)
    return [(c.key, c.image, desired.images[c.key]) for c in changed_containers(view, desired)]
