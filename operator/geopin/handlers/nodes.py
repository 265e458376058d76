"""Nodes: the cluster's own region (the region label most nodes carry) and, for nodeImageCheck,
each node's AKS node image, pool and schedulability."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.core.nodes import node_info


@kopf.on.event("", "v1", "nodes")
async def node_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if "runtime" not in memo:
        return
    runtime = memo.runtime
    before = runtime.nodes.changes
    if type == "DELETED":
        runtime.nodes.discard(name, body.get("metadata", {}).get("resourceVersion"))
    else:
        runtime.nodes.upsert(name, body.get("metadata", {}).get("resourceVersion"), node_info(body))
    if runtime.nodes.changes != before:
        # A new region, node image or cordon re-decides the policies; the status loop does the work.
        # A node's heartbeat (status only) changes nothing geopin keeps and costs no pass.
        runtime.reconciler.touch()
