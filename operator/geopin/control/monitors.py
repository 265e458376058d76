"""The probe loops of every policy while this replica leads, and the book's source of health.

A policy whose loop cannot start (an unreadable credentials Secret, a caBundle that is no PEM, ARM
discovery for a registry that is not an ACR) gets ``Ready=False, ProbeSetupFailed`` and a Warning
Event; the other policies and the leader's own start never see the error. Failed starts are tried
again on the status loop's passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from geopin.control.book import PolicyEntry, policy_region
from geopin.control.changes import Changes
from geopin.control.monitor import PolicyMonitor
from geopin.core.endpoints import arm_endpoint
from geopin.core.health import ReplicaState, Transition, preference_order
from geopin.core.keyring import credentials_for
from geopin.core.policy import Policy
from geopin.core.pullsecrets import parse_dockerconfig
from geopin.core.text import one_line
from geopin.io.cache import ClusterCache
from geopin.io.event_backlog import EventBacklog
from geopin.io.images import ImageCache
from geopin.io.kube import KubeAPI
from geopin.io.probes import BasicCredentials, RegistryClient

if TYPE_CHECKING:
    from geopin.io.azure import ArmDiscovery

__all__ = ["Monitors", "ProbeSetupError"]

logger = logging.getLogger(__name__)

RETRY_SECONDS = 30.0  # a policy whose probes could not start is tried again this often


class ProbeSetupError(Exception):
    """Why a policy's probe loop cannot start, in one line naming the field or object at fault."""


class Monitors:
    def __init__(
        self,
        kube: KubeAPI,
        cluster: ClusterCache,
        events: EventBacklog,
        changes: Changes,
        *,
        arm_endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``probe_transport``: what the registry clients send through (tests: ``httpx.MockTransport``)."""
        self.kube = kube
        self.cluster = cluster
        self.events = events
        self.changes = changes
        self.arm_endpoint = arm_endpoint
        self.clock = clock
        self.probe_transport = probe_transport
        self.loops: dict[str, PolicyMonitor] = {}
        self.failures: dict[str, str] = {}  # policy → why its probe loop could not start (or take its new spec)
        self.running = False
        self._involved: dict[str, dict[str, Any]] = {}
        self._failed_at: dict[str, float] = {}

    # -- HealthSource: what the book asks ----------------------------------------------------------

    def usable(self, entry: PolicyEntry) -> frozenset[str] | None:
        """The leader's own verdict; a standby reads the leader's from the status (for admission)."""
        if self.running:
            loop = self.loops.get(entry.name)
            return loop.usable if loop is not None else None
        published = entry.observed_status.get("usableRegions")
        return frozenset(published) if isinstance(published, list) else None

    def held(self, entry: PolicyEntry) -> frozenset[str]:
        """Unusable replicas whose pinned templates stay (Redirect); a standby writes none, so holds none."""
        loop = self.loops.get(entry.name) if self.running else None
        return loop.held if loop is not None else frozenset()

    def images(self, name: str) -> ImageCache | None:
        loop = self.loops.get(name)
        return loop.images if loop is not None else None

    def effective(self, name: str, policy: Policy) -> Policy:
        loop = self.loops.get(name)
        return loop.effective(policy) if loop is not None else policy

    # -- MonitorListener: what the loops tell -------------------------------------------------------

    def usable_changed(self, policy: str) -> None:
        self.changes.usable_changed(policy)

    def transition(self, policy: str, transition: Transition) -> None:
        if transition.previous is ReplicaState.UNKNOWN and transition.current is ReplicaState.HEALTHY:
            return  # a first verdict (start-up, a new replica), not a recovery
        involved = self._involved.get(policy)
        if involved is None:
            return
        unhealthy = transition.current in (ReplicaState.UNHEALTHY, ReplicaState.EXCLUDED)
        self.events.add(
            involved,
            "Warning" if unhealthy else "Normal",
            "ReplicaUnhealthy" if unhealthy else "ReplicaRecovered",
            f"{transition.region}: {transition.previous} -> {transition.current}: {transition.message}",
            urgent=True,
        )
        self.changes.touch()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self, entries: Iterable[PolicyEntry]) -> None:
        self.running = True
        for entry in entries:
            await self.ensure(entry)

    async def stop(self) -> None:
        self.running = False
        loops, self.loops = list(self.loops.values()), {}
        self.failures.clear()
        self._failed_at.clear()
        for loop in loops:
            await loop.stop()

    async def ensure(self, entry: PolicyEntry) -> None:
        """Start the policy's probe loop, or hand it the new spec (known replicas keep their health).

        Any failure is the policy's own: reported in its status and Events, never raised.
        """
        if entry.policy is None or not self.running:
            return
        self._involved[entry.name] = entry.involved()
        try:
            await self._ensure(entry.name, entry.policy, entry.observed_status)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(entry.name, e)
        else:
            self._failed_at.pop(entry.name, None)
            if self.failures.pop(entry.name, None) is not None:
                logger.info("policy %s: probes started", entry.name)
                self.changes.touch()

    async def retry_failed(self, entries: Iterable[PolicyEntry]) -> None:
        """Try again the policies whose probes could not start (a Secret may have been fixed)."""
        now = self.clock()
        for entry in entries:
            if entry.name in self.failures and now - self._failed_at.get(entry.name, 0.0) >= RETRY_SECONDS:
                await self.ensure(entry)

    async def forget(self, name: str) -> None:
        """The policy is gone."""
        self.failures.pop(name, None)
        self._failed_at.pop(name, None)
        self._involved.pop(name, None)
        if (loop := self.loops.pop(name, None)) is not None:
            await loop.stop()

    def pull_failed(self, message: str) -> list[tuple[str, str]]:
        """A kubelet's pull error: probe now every replica whose endpoint it names; (policy, region) probed."""
        probed = []
        for name, loop in self.loops.items():
            for region, health in loop.tracker.replicas.items():
                if f"{health.endpoint}/" in message:
                    loop.trigger(region)
                    probed.append((name, region))
        return probed

    # -- ImageResolver: registry lookups for decisions ---------------------------------------------

    async def resolve(self, policy: str, pairs: list[tuple[str, str]]) -> None:
        """Registry lookups a decision needs; digests are resolved at the first usable replica."""
        loop = self.loops.get(policy)
        if loop is not None:
            await loop.images.resolve(loop.spec_policy, loop.client, pairs, self._via(loop))

    async def refresh_images(self) -> bool:
        """Re-ask the registries for expired manifest answers; did any answer change?"""
        changed = False
        for loop in list(self.loops.values()):
            changed |= await loop.images.refresh_stale(loop.effective(loop.spec_policy), loop.client, self._via(loop))
        return changed

    def _via(self, loop: PolicyMonitor) -> str:
        usable = loop.usable or frozenset()
        order = preference_order(loop.spec_policy, policy_region(loop.spec_policy, self.cluster.region()))
        return next((region for region in order if region in usable), "")

    # -- starting one loop --------------------------------------------------------------------------

    async def _ensure(self, name: str, policy: Policy, status: Mapping[str, Any]) -> None:
        client = await self.registry_client(policy)
        loop = self.loops.get(name)
        if loop is not None:
            if (old := loop.update(policy, client)) is not None:
                await old.aclose()
            return
        try:
            loop = PolicyMonitor(policy, client, self, discovery=self._discovery(policy))
        except BaseException:
            await client.aclose()
            raise
        loop.restore(status)  # failback delays under way when the last status was written
        self.loops[name] = loop
        loop.start()

    def _discovery(self, policy: Policy) -> ArmDiscovery | None:
        if policy.azure is None:
            return None
        from geopin.io.azure import ArmDiscovery

        try:
            base_url = self.arm_endpoint or arm_endpoint(policy.registry)
        except ValueError as e:
            raise ProbeSetupError(f"spec.azure: {e}") from None
        return ArmDiscovery(policy.azure, policy.registry, base_url=base_url)

    async def registry_client(self, policy: Policy) -> RegistryClient:
        """A probe client with the policy's TLS trust and credentials (read from the Secret each time)."""
        credentials = None
        ref = policy.credentials.secret_ref
        if ref is not None:
            where = f"credentials secret {ref.namespace}/{ref.name}"
            try:
                data = await self.kube.get_secret_data(ref.namespace, ref.name)
                if data is None:
                    logger.warning("policy %s: %s not found; probing anonymously", policy.name, where)
                elif (auth := credentials_for(policy.registry, [parse_dockerconfig(data)])) is not None:
                    credentials = BasicCredentials(auth.username, auth.password)
            except Exception as e:
                raise ProbeSetupError(f"{where}: {e}") from None
        aad_credential = None
        if policy.credentials.azure_workload_identity:
            from azure.identity.aio import DefaultAzureCredential

            aad_credential = DefaultAzureCredential()
        try:
            return RegistryClient(
                scheme=policy.probe.scheme,
                timeout_seconds=policy.probe.timeout_seconds,
                ca_bundle=policy.probe.ca_bundle,
                credentials=credentials,
                aad_credential=aad_credential,
                transport=self.probe_transport,
            )
        except ValueError as e:
            raise ProbeSetupError(f"spec.probe: {e}") from None

    def _failed(self, name: str, error: Exception) -> None:
        message = one_line(error)
        if name in self.loops:
            message = f"{message}; probing with the previous settings"
        self._failed_at[name] = self.clock()
        if self.failures.get(name) == message:
            return
        self.failures[name] = message
        logger.error("policy %s: probes cannot start: %s", name, message)
        if (involved := self._involved.get(name)) is not None:
            self.events.add(involved, "Warning", "ProbeSetupFailed", message, urgent=True)
        self.changes.touch()
