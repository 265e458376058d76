"""The RegistryPolicy CRD against the public contract (api.md) and the operator's own parser (geopin.core.policy).

Pure: reads deploy/crds and examples/ with PyYAML, validates with `jsonschema` (the x-kubernetes-* extensions
stripped; CEL rules are checked for shape here and by the API server in the e2e tests), and feeds boundary
values into :func:`geopin.core.policy.from_spec` so the schema and the parser cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
import yaml

from geopin.core import policy, selectors

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "deploy" / "crds" / "registrypolicies.geopin.io.yaml"
EXAMPLE_FULL = ROOT / "examples" / "registrypolicy.yaml"
EXAMPLE_MINIMAL = ROOT / "examples" / "registrypolicy-minimal.yaml"

MINIMAL_SPEC: dict[str, Any] = {
    "registry": "contoso.azurecr.io",
    "replicas": [{"region": "eastus"}, {"region": "westus"}],
}
AZURE_MINIMAL = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "platform-rg"}


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        document = yaml.safe_load(f)
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return _load(CRD_PATH)


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    result: dict[str, Any] = versions[0]
    return result


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


@pytest.fixture(scope="module")
def spec_schema(schema: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = schema["properties"]["spec"]
    return result


def _strip_kubernetes_extensions(node: Any) -> Any:
    """The schema as plain JSON Schema: x-kubernetes-* keys removed (jsonschema does not know them)."""
    if isinstance(node, dict):
        return {
            key: _strip_kubernetes_extensions(value)
            for key, value in node.items()
            if not key.startswith("x-kubernetes-")
        }
    if isinstance(node, list):
        return [_strip_kubernetes_extensions(item) for item in node]
    return node


def _validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    plain = _strip_kubernetes_extensions(schema)
    jsonschema.Draft7Validator.check_schema(plain)
    return jsonschema.Draft7Validator(plain)


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path (``spec.probe.intervalSeconds``, ``spec.replicas[]``)."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Default a value the way the API server does: missing properties with a ``default`` are set, then
    (the default included) recursed into, so ``probe: default: {}`` brings the probe's own defaults."""
    if isinstance(value, dict) and node.get("type") == "object":
        result = dict(value)
        for name, child in (node.get("properties") or {}).items():
            if name not in result and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = _apply_defaults(child, result[name])
        return result
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_apply_defaults(node["items"], item) for item in value]
    return value


def _set(spec: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``dotted`` (relative to spec, e.g. ``probe.intervalSeconds``) set."""
    result = copy.deepcopy(spec)
    *parents, leaf = dotted.split(".")
    target = result
    for name in parents:
        target = target.setdefault(name, {})
    target[leaf] = value
    return result


def _errors(spec: dict[str, Any]) -> list[policy.FieldError]:
    try:
        policy.from_spec("test", spec)
    except policy.InvalidPolicy as e:
        return e.errors
    return []


# --- names, scope, printer columns: exactly as api.md -------------------------------------------------------


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "registrypolicies.geopin.io"
    assert crd["spec"]["group"] == "geopin.io"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"] == {
        "kind": "RegistryPolicy",
        "listKind": "RegistryPolicyList",
        "plural": "registrypolicies",
        "singular": "registrypolicy",
        "shortNames": ["rp"],
        "categories": ["geopin"],
    }
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Registry", "string", ".spec.registry"),
        ("Region", "string", ".status.clusterRegion"),
        ("Active", "string", ".status.activeRegion"),
        ("Healthy", "string", ".status.healthySummary"),
        ("Pinned", "integer", ".status.workloads.pinned"),
        ("Mode", "string", ".spec.mode"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]


def test_printer_columns_point_at_schema_fields(version: dict[str, Any], schema: dict[str, Any]) -> None:
    paths = {path: node for path, node in _walk(schema, "")}
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        if path.startswith("metadata."):
            continue
        assert path in paths, f"printer column {column['name']} reads {path}, which the schema does not define"
        assert paths[path]["type"] == column["type"], column["name"]
    assert "2/3" in paths["status.healthySummary"]["description"]


# --- structural schema hygiene ------------------------------------------------------------------------------


def test_structural_schema_with_descriptions(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema, ""):
        assert "type" in node, f"{path or '<root>'}: every node of a structural schema needs a type"
        scalar_member = path.endswith(("[]", "{}")) and node["type"] not in ("object", "array")
        # The API server forbids anything but the type on metadata (it is implicitly specified).
        if path != "metadata":
            assert scalar_member or node.get("description"), f"{path or '<root>'}: missing description"
        assert path != "metadata" or node == {"type": "object"}, "metadata: only `type: object` is allowed"
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path}: unknown fields must be pruned"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), f"{path}: list-map keys must be required"


def test_cel_rules_have_messages_naming_a_field(schema: dict[str, Any]) -> None:
    rules = [(path, rule) for path, node in _walk(schema, "") for rule in node.get("x-kubernetes-validations", [])]
    assert rules
    for path, rule in rules:
        assert rule["rule"].strip(), path
        leaf = path.rsplit(".", 1)[-1].rstrip("[]")
        message = rule["message"]
        assert leaf in message or (rule.get("fieldPath", "").lstrip(".") in message), (path, message)


def test_cel_rules_guard_optional_fields(spec_schema: dict[str, Any]) -> None:
    """A ``default: {}`` object is checked against its CEL rules *before* nested defaults apply (the API
    server rejects the CRD otherwise): rules on such objects must guard every field with has()."""
    for path, node in _walk(spec_schema, "spec"):
        if node.get("default") != {}:
            continue
        for rule in node.get("x-kubernetes-validations", []):
            for field_name in re.findall(r"self\.([A-Za-z]+)", rule["rule"]):
                assert f"has(self.{field_name})" in rule["rule"], f"{path}: {rule['rule']}"


# --- examples -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [EXAMPLE_FULL, EXAMPLE_MINIMAL], ids=lambda p: p.name)
def test_example_is_valid(path: Path, crd: dict[str, Any], schema: dict[str, Any]) -> None:
    document = _load(path)
    assert document["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert document["kind"] == crd["spec"]["names"]["kind"]
    _validator(schema).validate(document)
    parsed = policy.from_spec(document["metadata"]["name"], document["spec"])
    assert parsed.registry == "contoso.azurecr.io"
    assert [r.region for r in parsed.replicas] == ["eastus", "westus"]


def test_minimal_example_is_registry_and_two_replicas() -> None:
    assert _load(EXAMPLE_MINIMAL)["spec"] == MINIMAL_SPEC


def test_full_example_spells_out_every_spec_field(spec_schema: dict[str, Any]) -> None:
    spec = _load(EXAMPLE_FULL)["spec"]
    assert set(spec) == set(spec_schema["properties"])
    assert set(spec["probe"]) == set(spec_schema["properties"]["probe"]["properties"])


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("registry", "https://contoso.azurecr.io"),
        ("registry", "contoso.azurecr.io/library"),
        ("registry", ""),
        ("region", "East US"),
        ("replicas", [{"region": "EastUS"}]),
        ("replicas", [{"region": "eastus", "endpoint": "https://eastus.example"}]),
        ("replicas", [{"endpoint": "eastus.example"}]),
        ("replicas", [{"region": "eastus", "endpoint": "eastus.example:0"}]),
        ("replicas", [{"region": "eastus", "endpoint": "eastus.example:65536"}]),
        ("registry", "contoso.example:99999"),
        ("azure", {"subscriptionId": "not-a-uuid", "resourceGroup": "rg"}),
        ("azure", {"subscriptionId": AZURE_MINIMAL["subscriptionId"]}),
        ("mode", "patch"),
        ("fallback", "global"),
        ("pullSecrets", "None"),
        ("probe.scheme", "ftp"),
        ("probe.intervalSeconds", "5"),
        ("credentials.secretRef", {"name": "acr-pull"}),
        ("namespaceSelector", {"matchExpressions": [{"key": "a", "operator": "Equals"}]}),
        ("workloadSelector", {"matchLabels": {"tier": 1}}),
        ("unknownField", True),
    ],
)
def test_schema_rejects(dotted: str, value: Any, schema: dict[str, Any]) -> None:
    document = {"apiVersion": "geopin.io/v1alpha1", "kind": "RegistryPolicy", "metadata": {"name": "t"}}
    document["spec"] = _set(MINIMAL_SPEC, dotted, value)
    # The API server prunes or rejects unknown fields; jsonschema only does so with additionalProperties.
    plain = _strip_kubernetes_extensions(schema)
    for _, node in _walk(plain, ""):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(plain).validate(document)


# --- agreement with geopin.core.policy ---------------------------------------------------------------------------


def test_patterns_are_the_parsers(spec_schema: dict[str, Any]) -> None:
    props = spec_schema["properties"]
    assert props["registry"]["pattern"] == policy.HOST_RE.pattern
    assert props["replicas"]["items"]["properties"]["endpoint"]["pattern"] == policy.HOST_RE.pattern
    assert props["replicas"]["items"]["properties"]["region"]["pattern"] == policy.REGION_RE.pattern
    assert props["azure"]["properties"]["subscriptionId"]["pattern"] == policy.UUID_RE.pattern
    assert props["region"]["pattern"] == f"^({policy.AUTO_REGION}|[a-z0-9]+)$"
    assert props["region"]["default"] == policy.AUTO_REGION


# Every defaulted spec field → how the parsed Policy exposes it. A new default in the CRD fails the test
# below until it is listed here (and so compared with the parser's own default).
DEFAULTED_FIELDS: dict[str, Any] = {
    "region": lambda p: p.region,
    "mode": lambda p: p.mode,
    "fallback": lambda p: p.fallback,
    "replicationCheck": lambda p: p.replication_check,
    "digestPinning": lambda p: p.digest_pinning,
    "pullSecrets": lambda p: p.pull_secrets,
    "azure.refreshSeconds": lambda p: p.azure.refresh_seconds,
    "probe.intervalSeconds": lambda p: p.probe.interval_seconds,
    "probe.timeoutSeconds": lambda p: p.probe.timeout_seconds,
    "probe.failureThreshold": lambda p: p.probe.failure_threshold,
    "probe.successThreshold": lambda p: p.probe.success_threshold,
    "probe.failbackDelaySeconds": lambda p: p.probe.failback_delay_seconds,
    "probe.throttlingIsFailure": lambda p: p.probe.throttling_is_failure,
    "probe.scheme": lambda p: p.probe.scheme,
    "probe.caBundle": lambda p: p.probe.ca_bundle,
    "failover.maxRepointsPerSecond": lambda p: p.failover.max_repoints_per_second,
    "failover.strategy": lambda p: p.failover.strategy,
    "failover.repointAfterSeconds": lambda p: p.failover.repoint_after_seconds,
    "failover.rescuePods": lambda p: p.failover.rescue_pods,
    "credentials.azureWorkloadIdentity": lambda p: p.credentials.azure_workload_identity,
    "credentials.nodeImageCheck": lambda p: p.credentials.node_image_check,
}


def _leaf_defaults(spec_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        path.removeprefix("spec."): node["default"]
        for path, node in _walk(spec_schema, "spec")
        if "default" in node and node["default"] != {}
    }


def test_every_default_is_the_parsers(spec_schema: dict[str, Any]) -> None:
    bare = {**MINIMAL_SPEC, "azure": dict(AZURE_MINIMAL)}
    defaulted = _apply_defaults(spec_schema, bare)
    parsed = policy.from_spec("test", bare)

    leaf_defaults = _leaf_defaults(spec_schema)
    assert set(leaf_defaults) == set(DEFAULTED_FIELDS)
    for dotted, default in leaf_defaults.items():
        value: Any = defaulted
        for name in dotted.split("."):
            value = value[name]
        assert value == default, f"spec.{dotted} was not defaulted"
        assert DEFAULTED_FIELDS[dotted](parsed) == default, f"spec.{dotted}: CRD default {default!r}"

    # The API server's defaulted object means exactly what the bare one means to the operator.
    assert policy.from_spec("test", defaulted) == parsed


def test_defaults_match_the_dataclasses(spec_schema: dict[str, Any]) -> None:
    """Same check against the dataclass defaults themselves (they are what `geopin plan` relies on)."""
    defaults = _leaf_defaults(spec_schema)
    probe = policy.ProbeSettings()
    assert {k.removeprefix("probe."): v for k, v in defaults.items() if k.startswith("probe.")} == {
        "intervalSeconds": probe.interval_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "failureThreshold": probe.failure_threshold,
        "successThreshold": probe.success_threshold,
        "failbackDelaySeconds": probe.failback_delay_seconds,
        "throttlingIsFailure": probe.throttling_is_failure,
        "scheme": probe.scheme,
        "caBundle": probe.ca_bundle,
    }
    policy_defaults = {f.name: f.default for f in dataclasses.fields(policy.Policy)}
    assert defaults["region"] == policy_defaults["region"]
    assert defaults["mode"] == policy_defaults["mode"]
    assert defaults["fallback"] == policy_defaults["fallback"]
    assert defaults["replicationCheck"] == policy_defaults["replication_check"]
    assert defaults["digestPinning"] == policy_defaults["digest_pinning"]
    assert defaults["pullSecrets"] == policy_defaults["pull_secrets"]
    assert defaults["credentials.azureWorkloadIdentity"] == policy.Credentials().azure_workload_identity
    azure_defaults = {f.name: f.default for f in dataclasses.fields(policy.AzureDiscovery)}
    assert defaults["azure.refreshSeconds"] == azure_defaults["refresh_seconds"]


def test_nested_objects_default_so_their_fields_do(spec_schema: dict[str, Any]) -> None:
    props = spec_schema["properties"]
    assert props["probe"]["default"] == {}
    assert props["credentials"]["default"] == {}
    assert "default" not in props["azure"], "a defaulted azure block would switch discovery on"


@pytest.mark.parametrize(
    ("dotted", "enum_type"),
    [
        ("mode", policy.Mode),
        ("fallback", policy.Fallback),
        ("pullSecrets", policy.PullSecrets),
        ("failover.strategy", policy.Strategy),
    ],
)
def test_enums_are_the_parsers(dotted: str, enum_type: Any, spec_schema: dict[str, Any]) -> None:
    node = spec_schema
    for name in dotted.split("."):
        node = node["properties"][name]
    assert node["enum"] == [member.value for member in enum_type]
    for value in node["enum"]:
        assert not _errors(_set(MINIMAL_SPEC, dotted, value))
    assert [e.field for e in _errors(_set(MINIMAL_SPEC, dotted, "Bogus"))] == [f"spec.{dotted}"]


def test_probe_scheme_enum_is_the_parsers(spec_schema: dict[str, Any]) -> None:
    node = spec_schema["properties"]["probe"]["properties"]["scheme"]
    assert node["enum"] == ["https", "http"]
    for value in node["enum"]:
        assert not _errors(_set(MINIMAL_SPEC, "probe.scheme", value))
    assert [e.field for e in _errors(_set(MINIMAL_SPEC, "probe.scheme", "ftp"))] == ["spec.probe.scheme"]


def test_selector_operators_are_the_parsers(spec_schema: dict[str, Any]) -> None:
    for key in ("namespaceSelector", "workloadSelector"):
        node = spec_schema["properties"][key]
        assert node["x-kubernetes-map-type"] == "atomic"
        expression = node["properties"]["matchExpressions"]["items"]
        assert tuple(expression["properties"]["operator"]["enum"]) == selectors._OPERATORS
        assert node["properties"]["matchLabels"]["additionalProperties"] == {"type": "string"}


def _integer_fields(spec_schema: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [
        (path.removeprefix("spec."), node["minimum"], node["maximum"])
        for path, node in _walk(spec_schema, "spec")
        if node.get("type") == "integer"
    ]


def test_every_spec_integer_is_bounded(spec_schema: dict[str, Any]) -> None:
    fields = {name for name, _, _ in _integer_fields(spec_schema)}
    assert fields == {
        "azure.refreshSeconds",
        "probe.intervalSeconds",
        "probe.timeoutSeconds",
        "probe.failureThreshold",
        "probe.successThreshold",
        "probe.failbackDelaySeconds",
        "failover.maxRepointsPerSecond",
        "failover.repointAfterSeconds",
    }


def test_number_ranges_are_the_parsers(spec_schema: dict[str, Any]) -> None:
    validator = _validator(spec_schema)
    base = {**MINIMAL_SPEC, "azure": dict(AZURE_MINIMAL)}
    for dotted, low, high in _integer_fields(spec_schema):
        for value in (low, high):
            spec = _set(base, dotted, value)
            if dotted == "probe.timeoutSeconds":  # CEL: timeoutSeconds <= intervalSeconds
                spec["probe"]["intervalSeconds"] = max(value, 5)
            if dotted == "probe.intervalSeconds":
                spec["probe"]["timeoutSeconds"] = 1
            assert not _errors(spec), f"spec.{dotted}={value} is in the CRD's range"
            validator.validate(spec)
        for value in (low - 1, high + 1):
            spec = _set(base, dotted, value)
            errors = _errors(spec)
            assert [e.field for e in errors] == [f"spec.{dotted}"], f"spec.{dotted}={value}: {errors}"
            assert str(low) in errors[0].message
            assert str(high) in errors[0].message
            assert not validator.is_valid(spec)


# The CRD's CEL rules, each restated as a spec the parser must reject on the same field.
@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"registry": "contoso.azurecr.io"}, "spec.replicas", id="replicas-or-azure"),
        pytest.param({"registry": "contoso.azurecr.io", "replicas": []}, "spec.replicas", id="empty-replicas"),
        pytest.param(
            {"registry": "contoso.azurecr.io", "replicas": [{"region": "global"}]},
            "spec.replicas[0].region",
            id="global-region",
        ),
        pytest.param(
            {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus"}, {"region": "eastus"}]},
            "spec.replicas[1].region",
            id="duplicate-region",
        ),
        pytest.param(
            {"registry": "registry.local:5000", "replicas": [{"region": "eastus"}]},
            "spec.replicas[0].endpoint",
            id="endpoint-not-derivable",
        ),
        pytest.param(
            {**MINIMAL_SPEC, "probe": {"caBundle": "not a certificate"}},
            "spec.probe.caBundle",
            id="ca-bundle-pem",
        ),
        pytest.param(
            {**MINIMAL_SPEC, "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.namespaceSelector.matchExpressions[0].values",
            id="selector-values",
        ),
        pytest.param(
            {**MINIMAL_SPEC, "probe": {"intervalSeconds": 3, "timeoutSeconds": 4}},
            "spec.probe.timeoutSeconds",
            id="timeout-within-interval",
        ),
        pytest.param(
            {"registry": "contoso.azurecr.io", "replicas": [{"region": "auto"}]},
            "spec.replicas[0].region",
            id="auto-region",
        ),
        pytest.param(
            {
                "registry": "contoso.azurecr.io",
                "replicas": [{"region": "eastus", "endpoint": "contoso.westus.geo.azurecr.io"}],
            },
            "spec.replicas[0].endpoint",
            id="endpoint-of-another-region",
        ),
        pytest.param(
            {
                "registry": "r.example.com",
                "replicas": [
                    {"region": "a", "endpoint": "m.example.com"},
                    {"region": "b", "endpoint": "m.example.com"},
                ],
            },
            "spec.replicas[1].endpoint",
            id="duplicate-endpoint",
        ),
    ],
)
def test_cel_rules_are_the_parsers(spec: dict[str, Any], field: str) -> None:
    assert field in [e.field for e in _errors(spec)]
