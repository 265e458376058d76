"""Namespaces: their labels, for each policy's namespaceSelector."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if "runtime" not in memo:
        return
    runtime = memo.runtime
    version = body.get("metadata", {}).get("resourceVersion")
    if type == "DELETED":
        runtime.namespaces.discard(name, version)
    else:
        runtime.namespaces.upsert(name, version, dict(body.get("metadata", {}).get("labels") or {}))
    runtime.reconciler.touch()
