"""Which endpoint a workload's images should point to, given the replicas that are healthy.

Pure: the caller supplies the healthy set (static in Patch mode's first cut: every listed replica).
The order of preference is: the workload's own ``geopin.io/region`` (if it is a listed replica), the
cluster's home region (if listed), then the other replicas in ``spec.replicas`` order; with none
healthy, the global endpoint (``fallback: Global``) or the current pin (``fallback: Stay``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from geopin.policy import GLOBAL_REGION, Fallback, Policy

__all__ = ["Target", "choose", "preference_order"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where images point: a replica region and its host, or ``global`` and the global login server."""

    region: str
    endpoint: str

    @property
    def is_global(self) -> bool:
        return self.region == GLOBAL_REGION


def preference_order(policy: Policy, cluster_region: str | None, preferred: str | None = None) -> list[str]:
    """Replica regions from most to least preferred for one workload."""
    listed = [r.region for r in policy.replicas]
    order: list[str] = []
    for region in (preferred, cluster_region):
        if region in listed and region not in order:
            order.append(region)
    order.extend(r for r in listed if r not in order)
    return order


def choose(
    policy: Policy,
    cluster_region: str | None,
    healthy: Collection[str],
    preferred: str | None = None,
    current: str | None = None,
) -> Target:
    """The target for one workload: a healthy replica, else the fallback.

    Only ``fallback: Stay`` ever returns a replica outside ``healthy``: the pin the user asked to keep.
    """
    for region in preference_order(policy, cluster_region, preferred):
        if region in healthy:
            return Target(region, policy.endpoints[region])
    if policy.fallback is Fallback.STAY and current is not None and current in policy.endpoints:
        return Target(current, policy.endpoints[current])
    return Target(GLOBAL_REGION, policy.registry)
