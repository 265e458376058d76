"""Nodes as geopin sees them: region, AKS node image, pool, schedulability; which ones cannot pull
from regional hosts with the kubelet's own credentials (pure).

AKS kubelets get ACR credentials from the credential provider only for the hosts its
``matchImages`` lists; ``*.*.geo.azurecr.io`` (the regional endpoints) was added in node image
202607.29. A node's image is its ``kubernetes.azure.com/node-image-version`` label. The shapes
checked (2026-11-30):

- today's Linux images: ``AKSUbuntu-2204gen2containerd-202309.06.0`` (a node label quoted in
  VijayRod/demo, container-storage/logs/image-k8s-nodepool.md), ``AKSCBLMariner-V2katagen2-202503.13.0``,
  ``AKSUbuntu-2204minimalcontainerd-202401.12.0``: ``<os>-<sku>-YYYYMM.DD.<patch>``;
- older ones: ``AKSUbuntu-1804-2020.03.05`` (MicrosoftDocs/azure-aks-docs, use-labels.md) and
  ``AKSUbuntu-1804gen2containerd-2022.01.19``: ``YYYY.MM.DD``;
- Windows: ``AKSWindows-2022-containerd-20348.2340.240401`` (build.revision.YYMMDD) and
  ``AKSWindows-23H2-gen2`` (no date): not the Linux release train, so not judged.

Only the last ``-``-separated part is read, so an SKU with digits (``2204gen2``) never passes for a
date. A version geopin cannot read, and a node without the label (not AKS), is *unknown*, never at
risk: geopin cannot tell, and guessing would pin healthy clusters to the global endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from geopin.core.endpoints import parse_regional

__all__ = [
    "AGENT_POOL_LABEL",
    "DEFAULT_CREDENTIAL_FIX",
    "LEGACY_AGENT_POOL_LABEL",
    "NODE_IMAGE_LABEL",
    "REGION_LABEL",
    "NodeInfo",
    "NodeRisk",
    "PoolAtRisk",
    "assess",
    "image_release",
    "needs_node_credentials",
    "node_info",
    "parse_threshold",
]

REGION_LABEL = "topology.kubernetes.io/region"
NODE_IMAGE_LABEL = "kubernetes.azure.com/node-image-version"
AGENT_POOL_LABEL = "kubernetes.azure.com/agentpool"
LEGACY_AGENT_POOL_LABEL = "agentpool"  # older AKS nodes carry only this one
# The first node image whose credential provider matches *.*.geo.azurecr.io (api.md).
DEFAULT_CREDENTIAL_FIX = "202607.29"

Release = tuple[int, int, int, int]  # year, month, day, patch

_CURRENT = re.compile(r"^(\d{4})(\d{2})\.(\d{2})(?:\.(\d{1,4}))?$")  # 202607.29.0
_DOTTED = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # 2020.03.05


def _release(text: str) -> Release | None:
    for pattern in (_CURRENT, _DOTTED):
        match = pattern.match(text)
        if match is None:
            continue
        year, month, day = int(match.group(1)), int(match.group(2)), int(match.group(3))
        patch = int(match.group(4) or 0) if pattern is _CURRENT else 0
        if 2000 <= year <= 2999 and 1 <= month <= 12 and 1 <= day <= 31:
            return year, month, day, patch
    return None


def image_release(node_image_version: str | None) -> Release | None:
    """``AKSUbuntu-2204gen2containerd-202607.29.0`` → (2026, 7, 29, 0); None when not readable."""
    if not node_image_version:
        return None
    return _release(node_image_version.strip().rsplit("-", 1)[-1])


def parse_threshold(value: str) -> Release:
    """``--node-image-credential-fix``: ``202607.29``, ``202607.29.1``, ``2026.07.29`` or a whole
    node image version; ValueError naming the accepted shapes otherwise."""
    release = _release(value.strip()) or image_release(value)
    if release is None:
        raise ValueError(
            f"not a node image release: {value!r} (expected YYYYMM.DD, e.g. {DEFAULT_CREDENTIAL_FIX}, "
            "or a node image version such as AKSUbuntu-2204gen2containerd-202607.29.0)"
        )
    return release


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What geopin keeps per node: a few labels and whether new Pods may land on it."""

    name: str
    region: str = ""
    image_version: str = ""
    pool: str = ""
    schedulable: bool = True


def needs_node_credentials(host: str) -> bool:
    """Is ``host`` a regional ACR endpoint (``<name>.<region>.geo.azurecr.<cloud>``), the kind of host
    old AKS node images have no credentials for? Custom endpoints were never in matchImages."""
    regional = parse_regional(host)
    return regional is not None and regional.kind == "geo"


def node_info(body: Mapping[str, Any]) -> NodeInfo:
    """The :class:`NodeInfo` of a Node object (as the API returns it)."""
    metadata = body.get("metadata") or {}
    labels = metadata.get("labels") or {}
    name = str(metadata.get("name", ""))
    spec = body.get("spec") or {}
    return NodeInfo(
        name=name,
        region=str(labels.get(REGION_LABEL, "")),
        image_version=str(labels.get(NODE_IMAGE_LABEL, "")),
        pool=str(labels.get(AGENT_POOL_LABEL) or labels.get(LEGACY_AGENT_POOL_LABEL) or name),
        schedulable=not spec.get("unschedulable", False),
    )


@dataclass(frozen=True, slots=True)
class PoolAtRisk:
    pool: str
    nodes: int  # nodes of the pool at risk
    oldest: str  # the oldest node image among them, as labelled


@dataclass(frozen=True, slots=True)
class NodeRisk:
    """Which nodes cannot authenticate to regional hosts with the kubelet's credentials."""

    threshold: str  # as given, for messages
    pools: tuple[PoolAtRisk, ...] = ()  # sorted by pool name
    schedulable: int = 0  # schedulable nodes at risk: Enforce acts while this is above zero
    nodes: int = 0  # every node at risk, cordoned ones included
    judged: int = 0  # nodes with a readable node image version
    total: int = 0

    @property
    def at_risk(self) -> bool:
        return self.nodes > 0

    def message(self) -> str:
        """One line for the NodeCredentials condition."""
        if not self.at_risk:
            unknown = self.total - self.judged
            tail = f"; {unknown} without an AKS node image version (not judged)" if unknown else ""
            return f"{self.judged} nodes have node image {self.threshold} or newer{tail}"
        pools = ", ".join(f"{p.pool} ({p.nodes} nodes, {p.oldest})" for p in self.pools)
        cordoned = self.nodes - self.schedulable
        tail = f"; {cordoned} of them cordoned" if cordoned else ""
        return (
            f"node pools at risk: {pools}: node image older than {self.threshold}, the kubelet has no "
            f"credentials for *.*.geo.azurecr.io{tail}"
        )


def assess(nodes: Iterable[NodeInfo], threshold: str) -> NodeRisk:
    """The nodes whose AKS node image is older than ``threshold`` (``parse_threshold`` rules)."""
    fix = parse_threshold(threshold)
    by_pool: dict[str, list[tuple[Release, NodeInfo]]] = {}
    judged = total = schedulable = 0
    for node in nodes:
        total += 1
        release = image_release(node.image_version)
        if release is None:
            continue
        judged += 1
        if release >= fix:
            continue
        by_pool.setdefault(node.pool or node.name, []).append((release, node))
        schedulable += node.schedulable
    pools = tuple(
        PoolAtRisk(pool=pool, nodes=len(found), oldest=min(found, key=lambda item: item[0])[1].image_version)
        for pool, found in sorted(by_pool.items())
    )
    return NodeRisk(
        threshold=threshold,
        pools=pools,
        schedulable=schedulable,
        nodes=sum(p.nodes for p in pools),
        judged=judged,
        total=total,
    )
