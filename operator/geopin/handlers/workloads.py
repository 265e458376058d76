"""Workloads: a compact view of each in an index, and a write queued only when one is needed.

Only ``kopf.index`` and ``kopf.on.event`` watch workloads: Kopf then keeps no progress, diff-base or
finalizer on them, so a workload geopin does not rewrite gets no write at all. One index per kind
(``<plural>_views``); ReplicaSets that a controller owns (a Deployment's) are not workloads of
their own and stay out of the index.
"""

from __future__ import annotations

from typing import Any

import kopf

from geopin.workloads import KINDS, PATCH_KINDS, Kind, WorkloadView, view_of


def index_name(kind: Kind) -> str:
    return f"{kind.plural}_views"


def is_standalone(body: kopf.Body, **_: Any) -> bool:
    """Not managed by a controller (a Deployment's ReplicaSets, a CronJob's Jobs are not ours)."""
    owners = body.get("metadata", {}).get("ownerReferences") or []
    return not any(owner.get("controller") for owner in owners)


def _register(kind: Kind) -> None:
    def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], WorkloadView]:
        view = view_of(kind, body)
        return {view.ref: view}

    async def changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        if type == "DELETED" or "runtime" not in memo:
            return
        reconciler = memo.runtime.reconciler
        view = view_of(kind, body)
        if reconciler.needs_write(view):
            reconciler.enqueue(view.ref)

    when = is_standalone if kind.kind == "ReplicaSet" else None
    kopf.index(kind.group, kind.version, kind.plural, id=index_name(kind), when=when)(index)
    kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}_changed", when=when)(changed)


for _name in PATCH_KINDS:
    _register(KINDS[_name])

INDEX_NAMES = tuple(index_name(KINDS[name]) for name in PATCH_KINDS)
