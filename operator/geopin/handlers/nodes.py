"""Nodes: the cluster's own region is the region label most nodes carry."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.kube import REGION_LABEL


@kopf.index("", "v1", "nodes")
def node_regions(name: str, labels: kopf.Labels, **_: Any) -> dict[str, str]:
    return {name: labels.get(REGION_LABEL, "")}


@kopf.on.event("", "v1", "nodes")
async def node_changed(memo: kopf.Memo, **_: Any) -> None:
    # A region change re-decides every policy in auto mode; the policy loops do the work.
    if "runtime" in memo:
        memo.runtime.reconciler.touch()
