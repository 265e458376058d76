"""Nodes: the cluster's own region is the region label most nodes carry."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.io.kube import REGION_LABEL


@kopf.on.event("", "v1", "nodes")
async def node_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if "runtime" not in memo:
        return
    runtime = memo.runtime
    if type == "DELETED":
        runtime.nodes.discard(name, body.get("metadata", {}).get("resourceVersion"))
    else:
        labels = body.get("metadata", {}).get("labels") or {}
        runtime.nodes.upsert(name, body.get("metadata", {}).get("resourceVersion"), labels.get(REGION_LABEL, ""))
    # A region change re-decides every policy in auto mode; the status loop does the work.
    runtime.reconciler.touch()
