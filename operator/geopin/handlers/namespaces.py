"""Namespaces: their labels, for each policy's namespaceSelector."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.runtime import Runtime


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    metadata = body.get("metadata", {})
    labels = None if type == "DELETED" else (metadata.get("labels") or {})
    runtime.namespace_changed(name, metadata.get("resourceVersion"), labels)
