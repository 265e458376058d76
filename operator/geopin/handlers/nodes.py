"""Nodes: the cluster's own region (the region label most nodes carry) and, for nodeImageCheck,
each node's AKS node image, pool and schedulability."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.runtime import Runtime
from geopin.core.nodes import node_info


@kopf.on.event("", "v1", "nodes")
async def node_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    metadata = body.get("metadata", {})
    runtime.node_changed(name, metadata.get("resourceVersion"), None if type == "DELETED" else node_info(body))
