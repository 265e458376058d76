"""RegistryPolicy: keep the in-memory book current, restore on deletion, report status."""

from __future__ import annotations

from typing import Any

import kopf

from geopin.control.book import PolicyEntry, records_policy
from geopin.control.runtime import Runtime
from geopin.core.crd import GROUP, PLURAL, VERSION
from geopin.core.policy import InvalidPolicy, Policy, from_spec


def entry_from(body: kopf.Body, previous: PolicyEntry | None) -> PolicyEntry:
    meta = body.get("metadata", {})
    name = meta.get("name", "")
    uid = meta.get("uid", "")
    # A policy deleted and created again under its name is a new object: it inherits nothing of the
    # old one (above all not its deletion, which would restore every workload and never pin again).
    previous = previous if previous is not None and previous.uid == uid else None
    policy: Policy | None
    try:
        policy, error = from_spec(name, body.get("spec") or {}), None
    except InvalidPolicy as e:
        # Keep acting as the last valid spec said (pins stay put); the status says what is wrong.
        policy, error = (previous.policy if previous else None), str(e)
    return PolicyEntry(
        name=name,
        uid=uid,
        created=meta.get("creationTimestamp", ""),
        generation=int(meta.get("generation") or 0),
        policy=policy,
        error=error,
        deleting=previous.deleting if previous else False,
        observed_status=dict(body.get("status") or {}),
    )


# An event handler, not create/update/resume: Kopf then keeps no progress on the policy and a
# restart writes nothing. Status events come back here too; an unchanged generation is skipped.
@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_changed(name: str, body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    previous = runtime.book.entries.get(name)
    if type == "DELETED":
        # Gone from the API. Where policy_deleted did not get to forget it (a standby whose handler was
        # still waiting on the leader's restores when the finalizer went), forget it now.
        if previous is not None and previous.uid == body.get("metadata", {}).get("uid"):
            await runtime.policy_forgotten(name)
        return
    if body.get("metadata", {}).get("deletionTimestamp"):
        return  # policy_deleted restores and forgets it
    entry = entry_from(body, previous)
    if previous is not None and (previous.generation, previous.uid) == (entry.generation, entry.uid):
        previous.observed_status = entry.observed_status  # a status update (the leader's verdicts)
        return
    if entry.error:
        kopf.warn(body, reason="InvalidSpec", message=entry.error)
    await runtime.policy_applied(entry)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def policy_deleted(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Restore every workload this policy rewrote; the finalizer stays until none is left."""
    runtime: Runtime = memo.runtime
    entry = runtime.book.entries.get(name) or entry_from(body, None)
    entry.deleting = True
    runtime.book.upsert(entry)
    if entry.policy is None:
        kopf.warn(body, reason="InvalidSpec", message="never valid: nothing was rewritten by it")
        runtime.book.remove(name)
        return
    views = runtime.cluster.views()
    runtime.reconciler.enqueue_if_needed(views)
    remaining = sum(records_policy(view, entry.policy) for view in views)
    if remaining:
        raise kopf.TemporaryError(f"restoring {remaining} workloads", delay=1)
    if runtime.mutating_policies is not None and runtime.leading:
        await runtime.mutating_policies.forget(entry.policy)
    await runtime.policy_forgotten(name)
    kopf.info(body, reason="Restored", message="every workload's original images are restored")
