"""Admission mode without a webhook: a MutatingAdmissionPolicy (MAP) evaluated inside the API server (pure).

For one :class:`~geopin.core.policy.Policy` geopin keeps three objects:

- a ``MutatingAdmissionPolicy`` (cluster-scoped; ``admissionregistration.k8s.io/v1`` where the API server
  serves it, GA in Kubernetes 1.36, else ``v1beta1``, Kubernetes 1.34 and 1.35 with the feature on: the
  objects are the same in both) whose CEL
  rewrites, on Pod CREATE, the host of every container and init container image that is on
  ``spec.registry`` to the current endpoint, and records ``geopin.io/original-images`` and
  ``geopin.io/pinned-region`` exactly as the webhook does;
- its ``MutatingAdmissionPolicyBinding``, which scopes it: never kube-system or the operator's
  namespace, plus the policy's ``namespaceSelector`` and ``workloadSelector`` (on the Pod's labels);
- a params ``ConfigMap`` in the operator's namespace holding the current pin (``registry`` lower-cased,
  ``endpoint``, ``region``, ``policy``).

The pin lives in the ConfigMap only, so a failover is ONE write (:func:`params_configmap`) and Pod
creation never depends on the operator being up: the API server evaluates the policy itself.
``failurePolicy: Ignore`` and ``parameterNotFoundAction: Allow`` mean a broken policy or a missing
ConfigMap admits Pods unchanged, as the webhook does when it is down.

**Global target.** When ``target.is_global`` the objects are still produced (same policy, same binding)
and the ConfigMap says ``region: global``; a match condition skips every Pod then, so nothing changes
(no rewrite, no annotation: "objects geopin does not rewrite get no write from it"). Moving to or from
global is therefore the same one ConfigMap write as any failover; the caller never deletes the binding.

Matching mirrors :mod:`geopin.core.references`: the part of the image before the first ``/`` is a registry
host only if it contains ``.`` or ``:``, is ``localhost`` or has an upper-case letter (else it is a
Docker Hub name); it must equal the registry case-insensitively, port included; the rest (path, tag,
digest) must match the distribution grammar or the image is left alone (the webhook reports invalid
references; a policy cannot emit Events). Only the host changes: the rest is copied byte for byte.

**Redirect** (Patch mode, ``failover.strategy: Redirect``; :func:`redirect_objects`): a second
MutatingAdmissionPolicy per policy, with the same scoping, moves a new Pod whose images are on the host
of an unusable replica (a template that keeps its pin during the hold) to the current endpoint, with
the same two annotations (the originals are the registry's name plus the image's path). Its params
ConfigMap holds the unusable hosts, empty while every replica is usable (a match condition then skips
every Pod): a switch is again one write. It cannot read the Pod's owner, so unlike the webhook it also
moves a Pod someone pinned by hand to a dead replica's host; it has no per-Pod metric or Event.

**The anchor** (:func:`anchor_objects`). kube-apiserver stops the informer of a built-in ``paramKind``
(our ConfigMap) for good as soon as no binding names it, and a policy bound later then never finds its
params (kubernetes/kubernetes#130887, #133827: only an API server restart recovers). With
``parameterNotFoundAction: Allow`` that means Pods silently unpinned after, say, the last policy was
deleted and a new one created. So geopin keeps one binding naming ConfigMap params for as long as it
uses this mechanism: a policy whose match condition is ``false``, scoped to its own namespace.

What the webhook does and a MAP does not: per-workload ``geopin.io/region`` preferences and replication
awareness (the API server cannot ask a registry), ``pods/ephemeralContainers``, the 255-character name
limit of a reference, and metrics/Events for admissions (``InvalidImageReference`` is not reported).
CEL cannot parse JSON, so an existing ``geopin.io/original-images`` record (another policy's, bound
earlier in the same admission) is extended by string splicing, not merged.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from geopin.core.health import Target
from geopin.core.policy import GLOBAL_REGION, Policy
from geopin.core.selectors import LabelSelector
from geopin.core.workloads import ANNOTATION_ORIGINAL_IMAGES, ANNOTATION_PINNED_REGION, ANNOTATION_SKIP

__all__ = [
    "API_VERSIONS",
    "BINDING_RESOURCE",
    "POLICY_RESOURCE",
    "REMAINDER_PATTERN",
    "Redirect",
    "anchor_objects",
    "mutation_expression",
    "object_names",
    "params_configmap",
    "policy_objects",
    "redirect_for",
    "redirect_names",
    "redirect_objects",
    "redirect_params",
    "served",
]

GROUP = "admissionregistration.k8s.io"
V1 = f"{GROUP}/v1"
V1BETA1 = f"{GROUP}/v1beta1"
API_VERSIONS = (V1, V1BETA1)  # the order of preference: GA (Kubernetes 1.36), then beta (1.34, 1.35)
POLICY_RESOURCE = "mutatingadmissionpolicies"
BINDING_RESOURCE = "mutatingadmissionpolicybindings"
LABELS = {"app.kubernetes.io/name": "geopin", "app.kubernetes.io/component": "admission-policy"}
POLICY_LABEL = "geopin.io/policy"
SYSTEM_NAMESPACE = "kube-system"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Path, tag and digest of a reference (github.com/distribution/reference), as in geopin.core.references.
# No backslashes, so the pattern is the same in Python, in the JSON sent and in the CEL string literal.
_COMPONENT = "[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_TAG = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
# Only go-digest's registered algorithms, each with its exact lower-case hex length.
_DIGEST = "(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})"
REMAINDER_PATTERN = f"^{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$"


def _managed(image: str, registry: str) -> str:
    """CEL: is the image (a CEL string expression) on ``registry`` (a CEL expression, lower-case host)?"""
    first = f"{image}.substring(0, {image}.indexOf('/'))"
    return (
        f"({image}.indexOf('/') > 0"
        f" && {first}.lowerAscii() == {registry}"
        f" && ({first}.contains('.') || {first}.contains(':') || {first} == 'localhost'"
        f" || {first} != {first}.lowerAscii())"
        f" && {image}.substring({image}.indexOf('/') + 1).matches('{REMAINDER_PATTERN}'))"
    )


def _moved(image: str, endpoint: str) -> str:
    """CEL: the image on ``endpoint``: everything from the first ``/`` on is kept byte for byte."""
    return f"{endpoint} + {image}.substring({image}.indexOf('/'))"


# matchConditions cannot use variables (they run first), so they repeat the test over `params`.
_ON_REGISTRY = (
    f"object.spec.containers.exists(c, {_managed('c.image', 'params.data.registry')})"
    f" || object.spec.?initContainers.orValue([]).exists(c, {_managed('c.image', 'params.data.registry')})"
)

VARIABLES: tuple[tuple[str, str], ...] = (
    ("registry", "string(params.data.registry)"),
    ("endpoint", "string(params.data.endpoint)"),
    ("containers", f"object.spec.containers.filter(c, {_managed('c.image', 'variables.registry')})"),
    (
        "initContainers",
        f"object.spec.?initContainers.orValue([]).filter(c, {_managed('c.image', 'variables.registry')})",
    ),
    # {"containers/<name>":"<image>",...}: names are DNS labels and managed images match the reference
    # grammar, so neither needs JSON escaping. Sorted, as geopin.core.rewrite.encode_record sorts its keys.
    (
        "entries",
        "(variables.containers.map(c, '\"containers/' + c.name + '\":\"' + c.image + '\"')"
        " + variables.initContainers.map(c, '\"initContainers/' + c.name + '\":\"' + c.image + '\"')).sort()",
    ),
    # Another policy's record (another registry, bound before this one) is kept: ours is appended.
    (
        "previous",
        f"object.metadata.?annotations[?'{ANNOTATION_ORIGINAL_IMAGES}'].orValue('')",
    ),
    (
        "record",
        "variables.previous.matches('^[{].+[}]$')"
        " ? variables.previous.substring(0, variables.previous.size() - 1) + ',' + variables.entries.join(',') + '}'"
        " : '{' + variables.entries.join(',') + '}'",
    ),
)


def _on_hosts(image: str, hosts: str) -> str:
    """CEL: is the image's host (lower-cased) one of ``hosts`` (a CEL list), the rest a valid reference?"""
    first = f"{image}.substring(0, {image}.indexOf('/'))"
    return (
        f"({image}.indexOf('/') > 0 && {first}.lowerAscii() in {hosts}"
        f" && {image}.substring({image}.indexOf('/') + 1).matches('{REMAINDER_PATTERN}'))"
    )


_UNUSABLE_HOSTS = "string(params.data.unusable).split(' ')"
_ON_UNUSABLE_HOST = (
    f"object.spec.containers.exists(c, {_on_hosts('c.image', _UNUSABLE_HOSTS)})"
    f" || object.spec.?initContainers.orValue([]).exists(c, {_on_hosts('c.image', _UNUSABLE_HOSTS)})"
)

# The same names as VARIABLES, so that mutation_expression() serves both policies.
REDIRECT_VARIABLES: tuple[tuple[str, str], ...] = (
    ("unusable", "string(params.data.unusable).split(' ')"),
    ("registry", "string(params.data.registry)"),
    ("endpoint", "string(params.data.endpoint)"),
    ("containers", f"object.spec.containers.filter(c, {_on_hosts('c.image', 'variables.unusable')})"),
    (
        "initContainers",
        f"object.spec.?initContainers.orValue([]).filter(c, {_on_hosts('c.image', 'variables.unusable')})",
    ),
    # The original is the registry's name with the image's path: what the template was pinned from.
    (
        "entries",
        "(variables.containers.map(c, '\"containers/' + c.name + '\":\"' + variables.registry"
        " + c.image.substring(c.image.indexOf('/')) + '\"')"
        " + variables.initContainers.map(c, '\"initContainers/' + c.name + '\":\"' + variables.registry"
        " + c.image.substring(c.image.indexOf('/')) + '\"')).sort()",
    ),
    *(v for v in VARIABLES if v[0] in ("previous", "record")),
)


def mutation_expression() -> str:
    """The ApplyConfiguration: the managed containers' images (merged by name) and the two annotations."""
    containers = (
        "variables.containers.map(c, Object.spec.containers{"
        f"name: c.name, image: {_moved('c.image', 'variables.endpoint')}}})"
    )
    init_containers = (
        "variables.initContainers.map(c, Object.spec.initContainers{"
        f"name: c.name, image: {_moved('c.image', 'variables.endpoint')}}})"
    )
    return (
        "Object{\n"
        "  metadata: Object.metadata{\n"
        "    annotations: {\n"
        f"      '{ANNOTATION_PINNED_REGION}': string(params.data.region),\n"
        f"      '{ANNOTATION_ORIGINAL_IMAGES}': variables.record\n"
        "    }\n"
        "  },\n"
        "  spec: Object.spec{\n"
        f"    ?containers: variables.containers.size() > 0 ? optional.of({containers}) : optional.none(),\n"
        f"    ?initContainers: variables.initContainers.size() > 0 ? optional.of({init_containers}) : optional.none()\n"
        "  }\n"
        "}"
    )


def object_names(policy: Policy, name_prefix: str = "geopin") -> str:
    """The name shared by the policy, its binding and its params ConfigMap."""
    return f"{name_prefix}-{policy.name}"


def _selector(selector: LabelSelector, *extra: dict[str, Any]) -> dict[str, Any]:
    """A metav1.LabelSelector (matchExpressions only) from geopin's parsed selector plus ``extra``."""
    expressions = list(extra)
    for requirement in selector.requirements:
        expression: dict[str, Any] = {"key": requirement.key, "operator": requirement.operator}
        if requirement.operator in ("In", "NotIn"):
            expression["values"] = sorted(requirement.values)
        expressions.append(expression)
    return {"matchExpressions": expressions} if expressions else {}


def _metadata(name: str, policy: Policy, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {**LABELS, POLICY_LABEL: policy.name}}
    if namespace is not None:
        metadata["namespace"] = namespace
    return metadata


def params_configmap(
    policy: Policy, target: Target, operator_namespace: str, name_prefix: str = "geopin"
) -> dict[str, Any]:
    """The params ConfigMap: the current pin. Writing it is the whole failover (the operator need not run).

    A global target is written
    as ``region: global`` with the registry as endpoint, which the policy's match conditions skip.
    """
    region = target.region
    endpoint = policy.registry if target.is_global else target.endpoint
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(object_names(policy, name_prefix), policy, operator_namespace),
        "data": {
            "registry": policy.registry.lower(),
            "endpoint": endpoint,
            "region": region,
            "policy": policy.name,
        },
    }


def policy_objects(
    policy: Policy,
    target: Target,
    operator_namespace: str,
    name_prefix: str = "geopin",
    *,
    api_version: str = V1,
) -> list[dict[str, Any]]:
    """[MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, params ConfigMap] for one policy.

    Apply all three (the policy and binding only change with the policy's spec); on a failover write
    only the ConfigMap. ``api_version``: one of :data:`API_VERSIONS`, the one the API server serves.
    """
    conditions = {
        "not-global": f"params.data.region != '{GLOBAL_REGION}'",
        "on-registry": _ON_REGISTRY,
    }
    name = object_names(policy, name_prefix)
    return [
        *_policy_and_binding(policy, name, operator_namespace, api_version, conditions, VARIABLES),
        params_configmap(policy, target, operator_namespace, name_prefix),
    ]


@dataclass(frozen=True, slots=True)
class Redirect:
    """New Pods on the host of an unusable replica go to ``target`` (``unusable_hosts`` lower-cased)."""

    unusable_hosts: tuple[str, ...]
    target: Target


def redirect_for(policy: Policy, usable: Collection[str], target: Target) -> Redirect:
    """Every listed replica not ``usable`` redirects to ``target`` (the policy's current endpoint)."""
    hosts = {
        policy.endpoints[replica.region].lower()
        for replica in policy.replicas
        if replica.region not in usable and policy.endpoints[replica.region].lower() != target.endpoint.lower()
    }
    return Redirect(tuple(sorted(hosts)), target)


def redirect_names(policy: Policy, name_prefix: str = "geopin") -> str:
    """The name shared by the redirect policy, its binding and its params ConfigMap."""
    return f"{name_prefix}-redirect-{policy.name}"


def redirect_params(
    policy: Policy, redirect: Redirect, operator_namespace: str, name_prefix: str = "geopin"
) -> dict[str, Any]:
    """The redirect's params ConfigMap: where Pods on an unusable host go. Writing it is the switch."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(redirect_names(policy, name_prefix), policy, operator_namespace),
        "data": {
            "registry": policy.registry,  # as written: the originals recorded on a moved Pod
            "unusable": " ".join(redirect.unusable_hosts),
            "endpoint": redirect.target.endpoint,
            "region": redirect.target.region,
            "policy": policy.name,
        },
    }


def redirect_objects(
    policy: Policy,
    redirect: Redirect,
    operator_namespace: str,
    name_prefix: str = "geopin",
    *,
    api_version: str = V1,
) -> list[dict[str, Any]]:
    """[MutatingAdmissionPolicy, binding, params ConfigMap] of a Patch-mode policy's Redirect."""
    conditions = {
        "some-replica-unusable": "string(params.data.unusable) != ''",
        "on-unusable-host": _ON_UNUSABLE_HOST,
    }
    name = redirect_names(policy, name_prefix)
    return [
        *_policy_and_binding(policy, name, operator_namespace, api_version, conditions, REDIRECT_VARIABLES),
        redirect_params(policy, redirect, operator_namespace, name_prefix),
    ]


def _policy_and_binding(
    policy: Policy,
    name: str,
    operator_namespace: str,
    api_version: str,
    conditions: Mapping[str, str],
    variables: tuple[tuple[str, str], ...],
) -> list[dict[str, Any]]:
    if api_version not in API_VERSIONS:
        raise ValueError(f"MutatingAdmissionPolicy is not served as {api_version}")
    excluded = {
        "key": NAMESPACE_NAME_LABEL,
        "operator": "NotIn",
        "values": sorted({SYSTEM_NAMESPACE, operator_namespace}),
    }
    pods_created = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    not_skipped = f"object.metadata.?annotations[?'{ANNOTATION_SKIP}'].orValue('').lowerAscii() != 'true'"
    map_object: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicy",
        "metadata": _metadata(name, policy),
        "spec": {
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {
                "resourceRules": pods_created,
                "namespaceSelector": _selector(LabelSelector(), excluded),
            },
            "matchConditions": [
                {"name": "not-skipped", "expression": not_skipped},
                *({"name": n, "expression": e} for n, e in conditions.items()),
            ],
            "variables": [{"name": n, "expression": e} for n, e in variables],
            "mutations": [
                {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": mutation_expression()}}
            ],
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
        },
    }
    match_resources: dict[str, Any] = {
        "namespaceSelector": _selector(policy.namespace_selector, excluded),
        "resourceRules": pods_created,
    }
    if not policy.workload_selector.empty:
        match_resources["objectSelector"] = _selector(policy.workload_selector)
    binding: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": _metadata(name, policy),
        "spec": {
            "policyName": name,
            "paramRef": {"name": name, "namespace": operator_namespace, "parameterNotFoundAction": "Allow"},
            "matchResources": match_resources,
        },
    }
    return [map_object, binding]


ANCHOR = "params-anchor"


def anchor_objects(
    operator_namespace: str, name_prefix: str = "geopin", *, api_version: str = V1
) -> list[dict[str, Any]]:
    """[MutatingAdmissionPolicy, binding] that keep the API server's ConfigMap params informer alive: they
    match no request (a ``false`` match condition, Pods of the operator's namespace only) and mutate nothing."""
    if api_version not in API_VERSIONS:
        raise ValueError(f"MutatingAdmissionPolicy is not served as {api_version}")
    name = f"{name_prefix}-{ANCHOR}"
    metadata = {"name": name, "labels": dict(LABELS)}
    own_namespace = {
        "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": [operator_namespace]}]
    }
    pods_created = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    return [
        {
            "apiVersion": api_version,
            "kind": "MutatingAdmissionPolicy",
            "metadata": metadata,
            "spec": {
                "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                "matchConstraints": {"resourceRules": pods_created, "namespaceSelector": own_namespace},
                "matchConditions": [{"name": "never", "expression": "false"}],
                "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": "Object{}"}}],
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "Never",
            },
        },
        {
            "apiVersion": api_version,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": metadata,
            "spec": {
                "policyName": name,
                "paramRef": {"name": name, "namespace": operator_namespace, "parameterNotFoundAction": "Allow"},
                "matchResources": {"namespaceSelector": own_namespace, "resourceRules": pods_created},
            },
        },
    ]


def served(api_resources_json: str | bytes | Mapping[str, Any], api_version: str) -> bool:
    """Does this discovery document (``GET /apis/<api_version>``) serve MAPs and their bindings?

    False for anything that is not such a document (e.g. a 404 body, or ``v1`` of Kubernetes 1.35, which
    serves webhooks and validating policies but no mutating ones), so a caller tries the next version
    and then falls back to the webhook.
    """
    document: Any
    if isinstance(api_resources_json, Mapping):
        document = api_resources_json
    else:
        try:
            document = json.loads(api_resources_json)
        except ValueError:
            return False
    if not isinstance(document, Mapping) or document.get("groupVersion") not in (None, api_version):
        return False
    resources = document.get("resources")
    if not isinstance(resources, list):
        return False
    names = {r.get("name") for r in resources if isinstance(r, Mapping)}
    return POLICY_RESOURCE in names and BINDING_RESOURCE in names
