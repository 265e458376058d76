"""Namespaces: their labels, for each policy's namespaceSelector."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.index("", "v1", "namespaces")
def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(memo: kopf.Memo, **_: Any) -> None:
    if "runtime" in memo:
        memo.runtime.reconciler.touch()
