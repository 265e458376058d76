"""Keep each policy's MutatingAdmissionPolicy, binding and params ConfigMap in step.

With MutatingAdmissionPolicy, the API server rewrites Pods itself from CEL: an Admission-mode policy's
pin, and a Patch-mode policy's Redirect (new Pods of templates pinned to an unusable replica). geopin
writes the three objects when a policy's spec changes, and on a switch only the params ConfigMap (one
write). Pod creation then never depends on the operator being up. Only the leader writes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from geopin.core.mutating_policy import (
    API_VERSIONS,
    Redirect,
    anchor_objects,
    params_configmap,
    policy_objects,
    redirect_objects,
    redirect_params,
    served,
)

if TYPE_CHECKING:
    from geopin.core.health import Target
    from geopin.core.policy import Policy
    from geopin.io.kube import Kube

__all__ = ["MutatingPolicySync", "mutating_policies_served"]

logger = logging.getLogger(__name__)


async def mutating_policies_served(kube: Kube) -> str | None:
    """The API version in which this API server serves MutatingAdmissionPolicy, by discovery; None if none.

    ``admissionregistration.k8s.io/v1`` first (GA in Kubernetes 1.36), then ``v1beta1`` (1.34 and 1.35
    with the MutatingAdmissionPolicy feature gate and the beta API enabled).
    """
    for api_version in API_VERSIONS:
        try:
            if served(await kube.request(f"/apis/{api_version}", "GET"), api_version):
                return api_version
        except ApiException:
            continue
    return None


def _path(body: dict[str, Any]) -> str:
    name = body["metadata"]["name"]
    if body["kind"] == "ConfigMap":
        return f"/api/v1/namespaces/{body['metadata']['namespace']}/configmaps/{name}"
    plural = {
        "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
        "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    }[body["kind"]]
    return f"/apis/{body['apiVersion']}/{plural}/{name}"


class MutatingPolicySync:
    def __init__(self, kube: Kube, operator_namespace: str, api_version: str) -> None:
        self.kube = kube
        self.operator_namespace = operator_namespace
        self.api_version = api_version  # what mutating_policies_served() found
        self._applied: dict[str, tuple[Policy, str]] = {}  # policy name → (spec applied, region applied)
        self._redirects: dict[str, tuple[Policy, Redirect]] = {}  # policy name → (spec, redirect applied)
        self._anchored = False

    async def _apply(self, body: dict[str, Any]) -> None:
        if not self._anchored:
            # Before any policy's binding, and never deleted: see core.mutating_policy (the anchor).
            for anchor in anchor_objects(self.operator_namespace, api_version=self.api_version):
                await self.kube.create_or_replace(_path(anchor), anchor)
            self._anchored = True
        await self.kube.create_or_replace(_path(body), body)

    async def sync(self, policy: Policy, target: Target) -> None:
        applied = self._applied.get(policy.name)
        if applied is not None and applied == (policy, target.region):
            return
        if applied is not None and applied[0] == policy:
            await self._apply(params_configmap(policy, target, self.operator_namespace))
            logger.info("policy %s: admission policy params now point to %s", policy.name, target.region)
        else:
            for body in policy_objects(policy, target, self.operator_namespace, api_version=self.api_version):
                await self._apply(body)
            logger.info("policy %s: MutatingAdmissionPolicy applied, pointing to %s", policy.name, target.region)
        self._applied[policy.name] = (policy, target.region)

    async def remove(self, policy: Policy) -> None:
        await self._delete(policy_objects(policy, _NOWHERE, self.operator_namespace, api_version=self.api_version))
        self._applied.pop(policy.name, None)

    async def _delete(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            try:
                await self.kube.request(_path(body), "DELETE")
            except ApiException as e:
                if e.status != 404:
                    raise

    def applied(self, name: str) -> bool:
        return name in self._applied

    async def sync_redirect(self, policy: Policy, redirect: Redirect) -> None:
        """A Patch-mode policy's Redirect: the objects on a new spec, else only the params on a switch."""
        applied = self._redirects.get(policy.name)
        if applied is not None and applied == (policy, redirect):
            return
        if applied is not None and applied[0] == policy:
            await self._apply(redirect_params(policy, redirect, self.operator_namespace))
        else:
            for body in redirect_objects(policy, redirect, self.operator_namespace, api_version=self.api_version):
                await self._apply(body)
        hosts = ", ".join(redirect.unusable_hosts) or "none"
        logger.info("policy %s: new Pods on unusable hosts (%s) go to %s", policy.name, hosts, redirect.target.region)
        self._redirects[policy.name] = (policy, redirect)

    async def remove_redirect(self, policy: Policy) -> None:
        nowhere = Redirect((), _NOWHERE)
        await self._delete(redirect_objects(policy, nowhere, self.operator_namespace, api_version=self.api_version))
        self._redirects.pop(policy.name, None)

    async def forget(self, policy: Policy) -> None:
        """The policy is deleted: every object geopin kept for it goes (those never made are a 404)."""
        await self.remove(policy)
        await self.remove_redirect(policy)

    def redirect_applied(self, name: str) -> bool:
        return name in self._redirects


class _Nowhere:
    region = "global"
    endpoint = ""
    is_global = True


_NOWHERE: Any = _Nowhere()
