"""RegistryPolicy: keep the in-memory book current, restore on deletion, report status."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from geopin.endpoints import arm_endpoint
from geopin.engine import PolicyEntry, records_policy
from geopin.handlers.runtime import Runtime
from geopin.health import ReplicaState, Transition
from geopin.kube import POLICY_GROUP, POLICY_PLURAL, POLICY_VERSION
from geopin.monitor import PolicyMonitor
from geopin.policy import InvalidPolicy, Policy, from_spec
from geopin.probes import RegistryClient, credentials_from_dockerconfig
from geopin.reporting import forget_metrics, policy_ref

logger = logging.getLogger(__name__)


def entry_from(body: kopf.Body, previous: PolicyEntry | None) -> PolicyEntry:
    meta = body.get("metadata", {})
    name = meta.get("name", "")
    policy: Policy | None
    try:
        policy, error = from_spec(name, body.get("spec") or {}), None
    except InvalidPolicy as e:
        # Keep acting as the last valid spec said (pins stay put); the status says what is wrong.
        policy, error = (previous.policy if previous else None), str(e)
    return PolicyEntry(
        name=name,
        uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp", ""),
        generation=int(meta.get("generation") or 0),
        policy=policy,
        error=error,
        deleting=previous.deleting if previous else False,
        observed_status=dict(body.get("status") or {}),
    )


# An event handler, not create/update/resume: Kopf then keeps no progress on the policy and a
# restart writes nothing. Status events come back here too; an unchanged generation is skipped.
@kopf.on.event(POLICY_GROUP, POLICY_VERSION, POLICY_PLURAL)
async def policy_changed(name: str, body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    previous = runtime.book.entries.get(name)
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return  # policy_deleted restores and forgets it
    entry = entry_from(body, previous)
    if previous is not None and (previous.generation, previous.uid) == (entry.generation, entry.uid):
        return
    runtime.book.upsert(entry)
    if entry.error:
        kopf.warn(body, reason="InvalidSpec", message=entry.error)
    if entry.policy is not None:
        await ensure_monitor(runtime, entry)
    queued = runtime.reconciler.enqueue_if_needed(runtime.views())
    runtime.reconciler.touch()
    logger.info("policy %s applied: %d workloads queued", name, queued)


@kopf.on.delete(POLICY_GROUP, POLICY_VERSION, POLICY_PLURAL)
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
    runtime.reconciler.enqueue_if_needed(runtime.views())
    remaining = sum(records_policy(view, entry.policy) for view in runtime.views())
    if remaining:
        raise kopf.TemporaryError(f"restoring {remaining} workloads", delay=1)
    runtime.book.remove(name)
    if (monitor := runtime.monitors.pop(name, None)) is not None:
        await monitor.stop()
    kopf.info(body, reason="Restored", message="every workload's original images are restored")
    forget_metrics(name)


async def registry_client(runtime: Runtime, policy: Policy) -> RegistryClient:
    """A probe client with the policy's TLS trust and credentials (read from the Secret each time)."""
    credentials = None
    ref = policy.credentials.secret_ref
    if ref is not None:
        data = await runtime.kube.get_secret_data(ref.namespace, ref.name)
        if data is None:
            logger.warning(
                "policy %s: credentials secret %s/%s not found; probing anonymously",
                policy.name,
                ref.namespace,
                ref.name,
            )
        else:
            credentials = credentials_from_dockerconfig(data, policy.registry)
    aad_credential = None
    if policy.credentials.azure_workload_identity:
        from azure.identity.aio import DefaultAzureCredential

        aad_credential = DefaultAzureCredential()
    return RegistryClient(
        scheme=policy.probe.scheme,
        timeout_seconds=policy.probe.timeout_seconds,
        ca_bundle=policy.probe.ca_bundle,
        credentials=credentials,
        aad_credential=aad_credential,
    )


async def ensure_monitor(runtime: Runtime, entry: PolicyEntry) -> None:
    """Start the policy's probe loop, or hand it the new spec (known replicas keep their health)."""
    assert entry.policy is not None
    client = await registry_client(runtime, entry.policy)
    monitor = runtime.monitors.get(entry.name)
    if monitor is None:

        async def on_transition(transition: Transition) -> None:
            if transition.previous is ReplicaState.UNKNOWN and transition.current is ReplicaState.HEALTHY:
                return  # a first verdict (start-up, a new replica), not a recovery
            unhealthy = transition.current in (ReplicaState.UNHEALTHY, ReplicaState.EXCLUDED)
            await runtime.kube.post_event(
                policy_ref(entry),
                "Warning" if unhealthy else "Normal",
                "ReplicaUnhealthy" if unhealthy else "ReplicaRecovered",
                f"{transition.region}: {transition.previous} -> {transition.current}: {transition.message}"[:1024],
            )

        discovery = None
        if entry.policy.azure is not None:
            from geopin.azure import ArmDiscovery

            base_url = runtime.config.arm_endpoint or arm_endpoint(entry.policy.registry)
            discovery = ArmDiscovery(entry.policy.azure, entry.policy.registry, base_url=base_url)
        monitor = PolicyMonitor(
            entry.policy,
            client,
            on_change=lambda: runtime.usable_changed(entry.name),
            on_transition=on_transition,
            discovery=discovery,
        )
        runtime.monitors[entry.name] = monitor
        monitor.start()
    elif (old := monitor.update(entry.policy, client)) is not None:
        await old.aclose()
