"""Nodes: the cluster's own region is the region label most nodes carry."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.runtime import Runtime


@kopf.on.event("", "v1", "nodes")
async def node_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    metadata = body.get("metadata", {})
    labels = None if type == "DELETED" else (metadata.get("labels") or {})
    runtime.node_changed(name, metadata.get("resourceVersion"), labels)
