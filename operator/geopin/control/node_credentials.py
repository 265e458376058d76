"""What ``credentials.nodeImageCheck`` knows: the nodes whose kubelet has no credentials for regional
hosts, and the registry keys of the workloads' own pull secrets.

The verdict on the nodes is recomputed only when a node changed (a heartbeat changes nothing geopin
keeps). Pull secrets are read when a decision first needs them (the worker's lookup) and re-read by
the status loop once their keys are older than the cache's TTL.
"""

from __future__ import annotations

from geopin.core.nodes import NodeRisk, assess
from geopin.io.cache import NodeCache
from geopin.io.kube import KubeAPI
from geopin.io.pull_secret_keys import PullSecretKeys

__all__ = ["NodeCredentials"]


class NodeCredentials:
    def __init__(
        self, kube: KubeAPI, nodes: NodeCache, credential_fix: str, keys: PullSecretKeys | None = None
    ) -> None:
        self.kube = kube
        self.nodes = nodes
        self.credential_fix = credential_fix  # the first AKS node image that covers *.*.geo.azurecr.io
        self.keys = keys if keys is not None else PullSecretKeys()
        self._risk: tuple[int, NodeRisk] | None = None  # (nodes.changes it was computed at, the verdict)

    def node_risk(self) -> NodeRisk:
        if self._risk is None or self._risk[0] != self.nodes.changes:
            self._risk = (self.nodes.changes, assess(self.nodes.values(), self.credential_fix))
        return self._risk[1]

    def pull_secret_keys(self, namespace: str, name: str) -> tuple[str, ...] | None:
        return self.keys.get(namespace, name)

    async def read(self, refs: list[tuple[str, str]]) -> None:
        await self.keys.resolve(self.kube, refs)

    async def refresh(self) -> bool:
        """Re-read pull secrets whose keys are older than their TTL; True when any secret's keys changed."""
        return await self.keys.refresh_stale(self.kube)
