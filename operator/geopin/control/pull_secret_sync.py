"""pullSecrets: Report and Extend — pull credentials that cover the regional hosts (I/O edge).

A pull secret keyed by ``contoso.azurecr.io`` does not cover ``contoso.eastus.geo.azurecr.io``: the
kubelet matches one DNS label per ``*`` and the same number of labels (geopin.core.pullsecrets). After
geopin points a workload at a regional host:

- Report: the workload's own imagePullSecrets are checked with the kubelet's rules; a miss is a
  ``PullSecretMissingRegionalHost`` Warning Event (once per workload and host).
- Extend: geopin keeps a sibling Secret ``<first secret>-geopin-regional`` in the workload's
  namespace with the global host's credentials copied to every regional host, referenced from the
  template in the same guarded patch as the images, dropped from it on restore, and deleted when no
  workload references it any more.

Workloads without imagePullSecrets pull with the node's credentials (on AKS the kubelet credential
provider, which covers regional hosts only when its matchImages lists ``*.*.geo.azurecr.io``): there
is nothing here to check or extend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from geopin.core.keyring import covers, credentials_for
from geopin.core.policy import GLOBAL_REGION, PullSecrets
from geopin.core.pullsecrets import DockerAuth, MalformedPullSecret, parse_dockerconfig, sibling_dockerconfig
from geopin.core.rewrite import SIBLING_SUFFIX

if TYPE_CHECKING:
    from geopin.control.notices import WorkloadNotices
    from geopin.core.decisions import PolicySnapshot
    from geopin.core.rewrite import Desired
    from geopin.core.workloads import WorkloadView
    from geopin.io.kube import KubeAPI

__all__ = ["PullSecretSync"]

logger = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "geopin"}


class PullSecretSync:
    def __init__(self, kube: KubeAPI, notices: WorkloadNotices) -> None:
        self.kube = kube
        self.notices = notices

    async def _parsed(self, namespace: str, name: str) -> dict[str, DockerAuth] | None:
        data = await self.kube.get_secret_data(namespace, name)
        if data is None:
            return None
        try:
            return parse_dockerconfig(data)
        except MalformedPullSecret as e:
            logger.warning("pull secret %s/%s is not usable: %s", namespace, name, e)
            return None

    async def prepare(self, view: WorkloadView, desired: Desired, snapshot: PolicySnapshot | None) -> Desired:
        """Before a pin is written: make the sibling Secret it references (Extend), check coverage."""
        if snapshot is None or snapshot.policy.pull_secrets is PullSecrets.IGNORE:
            return desired
        region = desired.pinned_region
        own = [name for name in view.pull_secrets if not name.endswith(SIBLING_SUFFIX)]
        if region in (None, GLOBAL_REGION) or not own or not desired.originals:
            return desired
        policy = snapshot.policy
        host = policy.endpoints.get(region, "")
        secrets = {name: parsed for name in own if (parsed := await self._parsed(view.namespace, name)) is not None}
        covering = list(secrets.values())
        if policy.pull_secrets is PullSecrets.EXTEND and desired.pull_secrets is not None:
            sibling = next((n for n in desired.pull_secrets if n.endswith(SIBLING_SUFFIX)), None)
            auth = credentials_for(policy.registry, secrets.values())
            if sibling is not None and auth is not None:
                regional = [e for r, e in policy.endpoints.items() if r != GLOBAL_REGION]
                await self._ensure_sibling(
                    view.namespace, sibling, sibling_dockerconfig(policy.registry, regional, auth)
                )
                covering.append({h: auth for h in regional})
            elif sibling is not None:
                desired = replace(desired, pull_secrets=tuple(own))  # nothing to extend from
        if not covers(covering, host):
            self.notices.missing_pull_secret(view, host, own)
        return desired

    async def _ensure_sibling(self, namespace: str, name: str, data: dict[str, str]) -> None:
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "data": data,
        }
        if await self.kube.create_or_replace(path, body, unchanged="data") == "created":
            logger.info("created pull secret %s/%s for the regional hosts", namespace, name)

    async def collect(self, namespace: str, referenced: Callable[[str], bool]) -> None:
        """Delete geopin's sibling Secrets in ``namespace`` that no workload references any more."""
        try:
            listing = await self.kube.request(
                f"/api/v1/namespaces/{namespace}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dgeopin", "GET"
            )
        except ApiException as e:
            logger.warning("listing geopin's pull secrets in %s failed: %s", namespace, e)
            return
        for item in listing.get("items", []):
            name = item["metadata"]["name"]
            if name.endswith(SIBLING_SUFFIX) and not referenced(name):
                try:
                    await self.kube.request(f"/api/v1/namespaces/{namespace}/secrets/{name}", "DELETE")
                    logger.info("deleted pull secret %s/%s (no workload references it)", namespace, name)
                except ApiException as e:
                    if e.status != 404:
                        raise
