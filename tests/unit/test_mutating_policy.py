"""The MutatingAdmissionPolicy objects for Admission mode: their shape, scope and params (pure).

The CEL itself is proven on a real API server in tests/e2e/test_mutating_policy.py; here the
reference grammar it embeds is checked against geopin.core.references, the operator's own parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from geopin.core.health import Target
from geopin.core.mutating_policy import (
    API_VERSIONS,
    REMAINDER_PATTERN,
    mutation_expression,
    object_names,
    params_configmap,
    policy_objects,
    served,
)
from geopin.core.policy import GLOBAL_REGION, Policy, from_spec
from geopin.core.references import InvalidReference, parse, same_host

OPERATOR_NAMESPACE = "geopin-system"
EAST = Target("eastus", "contoso.eastus.geo.azurecr.io")


def policy(**spec: Any) -> Policy:
    return from_spec(
        "contoso",
        {
            "registry": "contoso.azurecr.io",
            "region": "eastus",
            "mode": "Admission",
            "replicas": [{"region": "eastus"}, {"region": "westus"}],
            **spec,
        },
    )


def objects(p: Policy | None = None, target: Target = EAST, **kwargs: Any) -> dict[str, dict[str, Any]]:
    found = policy_objects(p or policy(), target, OPERATOR_NAMESPACE, **kwargs)
    assert [o["kind"] for o in found] == ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "ConfigMap"]
    return {o["kind"]: o for o in found}


def test_names_and_references_between_the_three_objects() -> None:
    found = objects()
    map_object, binding, params = (
        found["MutatingAdmissionPolicy"],
        found["MutatingAdmissionPolicyBinding"],
        found["ConfigMap"],
    )
    assert map_object["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert map_object["metadata"]["name"] == binding["metadata"]["name"] == params["metadata"]["name"]
    assert map_object["metadata"]["name"] == "geopin-contoso" == object_names(policy())
    assert "namespace" not in map_object["metadata"]  # cluster-scoped
    assert "namespace" not in binding["metadata"]
    assert params["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert binding["spec"]["policyName"] == map_object["metadata"]["name"]
    assert map_object["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert binding["spec"]["paramRef"] == {
        "name": params["metadata"]["name"],
        "namespace": OPERATOR_NAMESPACE,
        "parameterNotFoundAction": "Allow",
    }
    for obj in found.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "geopin"
        assert obj["metadata"]["labels"]["geopin.io/policy"] == "contoso"


def test_name_prefix() -> None:
    found = objects(name_prefix="acme")
    assert {o["metadata"]["name"] for o in found.values()} == {"acme-contoso"}
    assert found["MutatingAdmissionPolicyBinding"]["spec"]["policyName"] == "acme-contoso"


def test_fails_open_once_for_pod_create_only() -> None:
    spec = objects()["MutatingAdmissionPolicy"]["spec"]
    assert spec["failurePolicy"] == "Ignore"
    assert spec["reinvocationPolicy"] == "Never"
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    assert spec["matchConstraints"]["resourceRules"] == rules
    assert objects()["MutatingAdmissionPolicyBinding"]["spec"]["matchResources"]["resourceRules"] == rules
    assert [m["patchType"] for m in spec["mutations"]] == ["ApplyConfiguration"]
    assert spec["mutations"][0]["applyConfiguration"]["expression"] == mutation_expression()


def test_match_conditions_skip_annotated_global_and_foreign_pods() -> None:
    conditions = {c["name"]: c["expression"] for c in objects()["MutatingAdmissionPolicy"]["spec"]["matchConditions"]}
    assert set(conditions) == {"not-skipped", "not-global", "on-registry"}
    assert "geopin.io/skip" in conditions["not-skipped"]
    assert "lowerAscii()" in conditions["not-skipped"]
    assert conditions["not-global"] == "params.data.region != 'global'"
    assert "object.spec.containers" in conditions["on-registry"]
    assert "initContainers" in conditions["on-registry"]


def test_mutation_sets_both_annotations_and_both_container_lists() -> None:
    expression = mutation_expression()
    for needle in ("geopin.io/pinned-region", "geopin.io/original-images", "?containers:", "?initContainers:"):
        assert needle in expression
    variables = {v["name"]: v["expression"] for v in objects()["MutatingAdmissionPolicy"]["spec"]["variables"]}
    assert "'\"containers/'" in variables["entries"]
    assert "'\"initContainers/'" in variables["entries"]


def exclusions(selector: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = selector["matchExpressions"][0]
    return first


def test_system_and_operator_namespaces_are_excluded() -> None:
    found = objects()
    expected = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["geopin-system", "kube-system"]}
    binding_selector = found["MutatingAdmissionPolicyBinding"]["spec"]["matchResources"]["namespaceSelector"]
    assert binding_selector == {"matchExpressions": [expected]}
    assert found["MutatingAdmissionPolicy"]["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [expected]
    }
    assert "objectSelector" not in found["MutatingAdmissionPolicyBinding"]["spec"]["matchResources"]


def test_operator_namespace_kube_system_is_listed_once() -> None:
    binding = policy_objects(policy(), EAST, "kube-system")[1]
    assert exclusions(binding["spec"]["matchResources"]["namespaceSelector"])["values"] == ["kube-system"]


def test_policy_selectors_are_added_to_the_exclusions() -> None:
    p = policy(
        namespaceSelector={
            "matchLabels": {"team": "shop"},
            "matchExpressions": [
                {"key": "env", "operator": "NotIn", "values": ["prod", "dev"]},
                {"key": "geopin.io/opt-out", "operator": "DoesNotExist"},
            ],
        },
        workloadSelector={"matchExpressions": [{"key": "app", "operator": "Exists"}]},
    )
    match = objects(p)["MutatingAdmissionPolicyBinding"]["spec"]["matchResources"]
    assert match["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["geopin-system", "kube-system"]},
        {"key": "team", "operator": "In", "values": ["shop"]},
        {"key": "env", "operator": "NotIn", "values": ["dev", "prod"]},
        {"key": "geopin.io/opt-out", "operator": "DoesNotExist"},
    ]
    assert match["objectSelector"] == {"matchExpressions": [{"key": "app", "operator": "Exists"}]}


def test_params_carry_the_pin() -> None:
    p = policy(registry="Contoso.AzureCR.io")
    params = objects(p)["ConfigMap"]
    assert params["data"] == {
        "registry": "contoso.azurecr.io",
        "endpoint": "contoso.eastus.geo.azurecr.io",
        "region": "eastus",
        "policy": "contoso",
    }
    assert params == params_configmap(p, EAST, OPERATOR_NAMESPACE)


def test_failover_changes_only_the_configmap() -> None:
    west = Target("westus", "contoso.westus.geo.azurecr.io")
    before, after = objects(), objects(target=west)
    assert before["MutatingAdmissionPolicy"] == after["MutatingAdmissionPolicy"]
    assert before["MutatingAdmissionPolicyBinding"] == after["MutatingAdmissionPolicyBinding"]
    assert after["ConfigMap"]["data"]["endpoint"] == "contoso.westus.geo.azurecr.io"
    assert after["ConfigMap"]["data"]["region"] == "westus"


def test_global_target_is_a_configmap_the_policy_skips() -> None:
    target = Target(GLOBAL_REGION, "contoso.azurecr.io")
    assert target.is_global
    found = objects(target=target)
    assert found["ConfigMap"]["data"]["region"] == "global"
    assert found["ConfigMap"]["data"]["endpoint"] == "contoso.azurecr.io"
    assert found["MutatingAdmissionPolicy"] == objects()["MutatingAdmissionPolicy"]


def test_objects_are_json() -> None:
    for obj in policy_objects(policy(), EAST, OPERATOR_NAMESPACE):
        assert json.loads(json.dumps(obj)) == obj


def test_api_versions_in_order_of_preference_and_the_objects_of_each() -> None:
    assert API_VERSIONS == ("admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1")
    v1 = objects(api_version="admissionregistration.k8s.io/v1")
    beta = objects(api_version="admissionregistration.k8s.io/v1beta1")
    for kind in ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"):
        assert v1[kind]["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert beta[kind]["apiVersion"] == "admissionregistration.k8s.io/v1beta1"
        assert {**v1[kind], "apiVersion": ""} == {**beta[kind], "apiVersion": ""}  # the same object otherwise
    assert v1["ConfigMap"] == beta["ConfigMap"]
    with pytest.raises(ValueError, match=r"not served as admissionregistration\.k8s\.io/v1alpha1"):
        objects(api_version="admissionregistration.k8s.io/v1alpha1")


# -- served() -------------------------------------------------------------------------------------

V1, V1BETA1 = API_VERSIONS


def discovery(*names: str, group_version: str = V1BETA1) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [{"name": n, "namespaced": False, "kind": "X", "verbs": ["create", "get"]} for n in names],
    }


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_served_when_both_resources_are_listed(api_version: str) -> None:
    document = discovery(
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicies/status",
        "mutatingadmissionpolicybindings",
        "validatingadmissionpolicies",
        group_version=api_version,
    )
    assert served(document, api_version)
    assert served(json.dumps(document), api_version)
    assert served(json.dumps(document).encode(), api_version)
    other = V1BETA1 if api_version == V1 else V1
    assert not served(document, other)


def test_v1_of_kubernetes_1_35_serves_no_mutating_policies() -> None:
    """What GET /apis/admissionregistration.k8s.io/v1 answers on 1.35 (measured): webhooks and validating policies."""
    document = discovery(
        "mutatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicies/status",
        "validatingadmissionpolicybindings",
        "validatingwebhookconfigurations",
        group_version=V1,
    )
    assert not served(document, V1)


@pytest.mark.parametrize(
    "document",
    [
        discovery("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
        discovery("mutatingadmissionpolicies"),
        discovery(),
        {**discovery("mutatingadmissionpolicies", "mutatingadmissionpolicybindings"), "groupVersion": "other/v1"},
        {"kind": "Status", "status": "Failure", "code": 404},
        "404 page not found",
        "[]",
    ],
)
def test_not_served(document: Any) -> None:
    assert not served(document, V1BETA1)


# -- the reference grammar inside the CEL -----------------------------------------------------------


def cel_managed(image: str, registry: str) -> bool:
    """The CEL predicate of mutating_policy._managed, in Python (same regular expressions)."""
    slash = image.find("/")
    if slash <= 0:
        return False
    first = image[:slash]
    if first.lower() != registry.lower():
        return False
    if not ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return False
    return bool(re.search(REMAINDER_PATTERN, image[slash + 1 :]))


def python_managed(image: str, registry: str) -> bool:
    try:
        ref = parse(image)
    except InvalidReference:
        return False
    return ref.host is not None and same_host(ref.host, registry)


@pytest.mark.parametrize(
    "image",
    [
        "contoso.azurecr.io/shop/web:1",
        "Contoso.AzureCR.io/shop/web:1",
        "contoso.azurecr.io/shop/web",
        "contoso.azurecr.io/a/b/c-d__e.f:v1.2.3_rc-1",
        f"contoso.azurecr.io/web@sha256:{'a' * 64}",
        f"contoso.azurecr.io/web:1@sha256:{'a' * 64}",
        f"contoso.azurecr.io/web@sha256:{'a' * 63}",
        f"contoso.azurecr.io/web@sha256:{'A' * 64}",
        f"contoso.azurecr.io/web@sha512:{'b' * 128}",
        f"contoso.azurecr.io/web@custom:{'c' * 32}",
        f"contoso.azurecr.io/web@md5:{'c' * 32}",
        f"contoso.azurecr.io/web@sha384:{'d' * 96}",
        "contoso.azurecr.io/Shop/web:1",
        "contoso.azurecr.io/shop/web:",
        "contoso.azurecr.io/shop//web:1",
        "contoso.azurecr.io/",
        "contoso.azurecr.io",
        "contoso.azurecr.io:5000/x:1",
        "contoso.azurecr.io:443/x:1",
        "contoso.azurecr.io.evil.com/x:1",
        "xcontoso.azurecr.io/x:1",
        "contoso.eastus.geo.azurecr.io/x:1",
        "nginx:1.27",
        "library/nginx:1.27",
        'contoso.azurecr.io/x:1"',
    ],
)
def test_cel_grammar_agrees_with_the_parser(image: str) -> None:
    assert cel_managed(image, "contoso.azurecr.io") == python_managed(image, "contoso.azurecr.io")


@pytest.mark.parametrize("image", ["myregistry/x:1", "MyRegistry/x:1", "localhost/x:1", "localhost:5000/x:1"])
@pytest.mark.parametrize("registry", ["myregistry", "localhost", "localhost:5000"])
def test_cel_host_rule_agrees_with_the_parser(image: str, registry: str) -> None:
    assert cel_managed(image, registry) == python_managed(image, registry)


# -- Redirect (Patch mode, failover.strategy: Redirect) ---------------------------------------------------


def test_redirect_lists_every_unusable_host_but_the_targets() -> None:
    from geopin.core.mutating_policy import redirect_for

    patch = from_spec(
        "contoso",
        {"registry": "contoso.azurecr.io", "replicas": [{"region": r} for r in ("eastus", "westus", "centralus")]},
    )
    west = Target("westus", "contoso.westus.geo.azurecr.io")
    redirect = redirect_for(patch, {"westus"}, west)
    assert redirect.unusable_hosts == ("contoso.centralus.geo.azurecr.io", "contoso.eastus.geo.azurecr.io")
    assert redirect_for(patch, {"eastus", "westus", "centralus"}, west).unusable_hosts == ()
    # fallback: Stay keeps an unusable current replica as the target: never redirect it to itself
    east = Target("eastus", "contoso.eastus.geo.azurecr.io")
    assert redirect_for(patch, set(), east).unusable_hosts == (
        "contoso.centralus.geo.azurecr.io", "contoso.westus.geo.azurecr.io",
    )  # fmt: skip


def test_redirect_objects_are_named_apart_and_carry_the_switch_in_their_params() -> None:
    from geopin.core.mutating_policy import Redirect, redirect_objects

    redirect = Redirect(("contoso.eastus.geo.azurecr.io",), Target("westus", "contoso.westus.geo.azurecr.io"))
    found = {o["kind"]: o for o in redirect_objects(policy(), redirect, OPERATOR_NAMESPACE)}
    names = {o["metadata"]["name"] for o in found.values()}
    assert names == {"geopin-redirect-contoso"}
    assert names.isdisjoint({o["metadata"]["name"] for o in objects().values()})
    assert found["ConfigMap"]["data"] == {
        "registry": "contoso.azurecr.io",
        "unusable": "contoso.eastus.geo.azurecr.io",
        "endpoint": "contoso.westus.geo.azurecr.io",
        "region": "westus",
        "policy": "contoso",
    }
    spec = found["MutatingAdmissionPolicy"]["spec"]
    conditions = {c["name"]: c["expression"] for c in spec["matchConditions"]}
    assert set(conditions) == {"not-skipped", "some-replica-unusable", "on-unusable-host"}
    assert spec["mutations"][0]["applyConfiguration"]["expression"] == mutation_expression()
    assert spec["failurePolicy"] == "Ignore"
    binding = found["MutatingAdmissionPolicyBinding"]["spec"]
    assert binding["paramRef"]["name"] == "geopin-redirect-contoso"


def test_the_anchor_binds_configmap_params_and_matches_nothing() -> None:
    from geopin.core.mutating_policy import anchor_objects

    found = {o["kind"]: o for o in anchor_objects(OPERATOR_NAMESPACE)}
    spec = found["MutatingAdmissionPolicy"]["spec"]
    assert spec["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert spec["matchConditions"] == [{"name": "never", "expression": "false"}]
    own = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["geopin-system"]}]}
    assert spec["matchConstraints"]["namespaceSelector"] == own
    binding = found["MutatingAdmissionPolicyBinding"]["spec"]
    assert binding["policyName"] == "geopin-params-anchor"
    assert binding["paramRef"]["parameterNotFoundAction"] == "Allow"
    assert binding["matchResources"]["namespaceSelector"] == own
