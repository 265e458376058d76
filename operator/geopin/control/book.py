"""What every policy knows: its spec, the cluster's region, the replicas it may use now, its deletion.

The book decides nothing about workloads; it hands out one immutable :class:`PolicySnapshot` per
policy for the pure decision (``core.decisions``). Which replicas a policy may use, and what its
registries hold, come from a :class:`HealthSource`: the probe loops while this replica leads, the
leader's published verdict on a standby, every listed replica offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from geopin.core.crd import involved_policy
from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES, PolicySnapshot
from geopin.core.nodes import NodeRisk
from geopin.core.policy import AUTO_REGION, Mode, NodeImageCheck, Policy, Strategy
from geopin.core.references import image_host, split_host
from geopin.core.replication import published_availability
from geopin.core.rewrite import read_record
from geopin.core.workloads import WorkloadView
from geopin.io.images import ImageCache

__all__ = [
    "EveryListedReplica",
    "HealthSource",
    "NodeCredentialSource",
    "PolicyBook",
    "PolicyEntry",
    "policy_region",
    "records_policy",
]


@dataclass
class PolicyEntry:
    name: str
    uid: str
    created: str  # creationTimestamp: the older of two policies for one registry wins
    generation: int
    policy: Policy | None  # None while the spec is invalid
    error: str | None = None
    deleting: bool = False
    conflict_with: str | None = None
    observed_status: dict[str, Any] = field(default_factory=dict)  # as read from the API at first sight

    def involved(self) -> dict[str, Any]:
        """The policy as the object of an Event."""
        return involved_policy(self.name, self.uid)


def policy_region(policy: Policy, majority: str | None) -> str | None:
    """The cluster's region for ``policy``: its ``spec.region``, or with ``auto`` the nodes' majority."""
    return policy.region if policy.region != AUTO_REGION else majority


class HealthSource(Protocol):
    def usable(self, entry: PolicyEntry) -> frozenset[str] | None:
        """The replicas the policy's workloads may point to now; None while undecided."""

    def held(self, entry: PolicyEntry) -> frozenset[str]:
        """Unusable replicas whose pinned templates keep their pin for now (``strategy: Redirect``)."""

    def images(self, name: str) -> ImageCache | None:
        """The policy's manifest answers (replicationCheck, digestPinning); None: no lookups."""

    def effective(self, name: str, policy: Policy) -> Policy:
        """The policy as it stands now: its spec plus the replicas ARM discovered."""


class NodeCredentialSource(Protocol):
    """What ``credentials.nodeImageCheck`` needs to know about the nodes and the workloads' pull secrets."""

    def node_risk(self) -> NodeRisk | None:
        """Nodes whose kubelet has no credentials for regional hosts; None: not known."""

    def pull_secret_keys(self, namespace: str, name: str) -> tuple[str, ...] | None:
        """A pull secret's registry keys (never its credentials); None while not read."""


class EveryListedReplica:
    """No probes: every listed replica is usable, nothing is looked up (offline planning, tests)."""

    def usable(self, entry: PolicyEntry) -> frozenset[str] | None:
        return frozenset(r.region for r in entry.policy.replicas) if entry.policy is not None else None

    def held(self, entry: PolicyEntry) -> frozenset[str]:
        return frozenset()

    def images(self, name: str) -> ImageCache | None:
        return None

    def effective(self, name: str, policy: Policy) -> Policy:
        return policy


class PolicyBook:
    """Every known policy; one policy per registry (the older wins)."""

    def __init__(
        self,
        health: HealthSource,
        cluster_region: Callable[[], str | None],
        excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES,
        nodes: NodeCredentialSource | None = None,
    ) -> None:
        self.health = health
        self._cluster_region = cluster_region
        self.nodes = nodes  # None: nodeImageCheck has nothing to judge (offline planning, tests)
        self.excluded_namespaces = excluded_namespaces
        self.entries: dict[str, PolicyEntry] = {}
        # Why new Pods cannot be redirected at admission (strategy: Redirect then repoints templates);
        # None: geopin's webhook is registered and answers for every Pod.
        self.no_redirect_path: str | None = "geopin serves no admission webhook (geopin run --webhook-port)"
        self.redirect_path = "geopin's webhook"  # or the API server's MutatingAdmissionPolicy

    def upsert(self, entry: PolicyEntry) -> None:
        self.entries[entry.name] = entry
        self._resolve_conflicts()

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self._resolve_conflicts()

    def _resolve_conflicts(self) -> None:
        owners: dict[tuple[str, str | None], PolicyEntry] = {}
        for entry in sorted(self.entries.values(), key=lambda e: (e.created, e.name)):
            entry.conflict_with = None
            if entry.policy is None:
                continue
            host = split_host(entry.policy.registry)
            if host in owners:
                entry.conflict_with = owners[host].name
            else:
                owners[host] = entry

    def cluster_region(self, policy: Policy) -> str | None:
        return policy_region(policy, self._cluster_region())

    def snapshot(self, entry: PolicyEntry) -> PolicySnapshot | None:
        """What the policy knows now; None while it must not act (invalid, conflicting, still probing)."""
        if entry.policy is None or entry.conflict_with is not None:
            return None
        usable = frozenset[str]() if entry.deleting else self.health.usable(entry)  # restoring needs no health
        if usable is None:
            return None
        cache = self.health.images(entry.name)
        policy = self.health.effective(entry.name, entry.policy)
        redirects = self.redirects(policy)
        return PolicySnapshot(
            redirects=redirects,
            held=self.health.held(entry) if redirects else frozenset(),
            node_credentials_enforced=self.enforces_node_credentials(policy),
            pull_secret_keys=self.nodes.pull_secret_keys if self.nodes is not None else None,
            policy=policy,
            cluster_region=self.cluster_region(entry.policy),
            usable=usable,
            # A standby looks nothing up: it answers admission from the leader's published gaps.
            availability=cache.available if cache is not None else published_availability(entry.observed_status),
            verified=cache.verified if cache is not None else None,
            digest_of=cache.digest_of if cache is not None else None,
            deleting=entry.deleting,
            excluded_namespaces=self.excluded_namespaces,
        )

    def redirects(self, policy: Policy) -> bool:
        """Are the policy's new Pods redirected at admission while their pinned replica is unusable?"""
        return (
            policy.mode is Mode.PATCH
            and policy.failover.strategy is Strategy.REDIRECT
            and self.no_redirect_path is None
        )

    def node_risk(self) -> NodeRisk | None:
        return self.nodes.node_risk() if self.nodes is not None else None

    def enforces_node_credentials(self, policy: Policy) -> bool:
        """nodeImageCheck: Enforce, and a schedulable node cannot authenticate to regional hosts."""
        if policy.credentials.node_image_check is not NodeImageCheck.ENFORCE:
            return False
        risk = self.node_risk()
        return risk is not None and risk.schedulable > 0

    def snapshots(self) -> list[PolicySnapshot]:
        return [s for e in sorted(self.entries.values(), key=lambda e: e.name) if (s := self.snapshot(e))]


def records_policy(view: WorkloadView, policy: Policy) -> bool:
    """Does the workload hold an original-images entry of this policy's registry?"""
    record, _ = read_record(view.annotations)
    return any(policy.manages_host(image_host(v)) for v in record.values())
