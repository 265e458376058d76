"""RegistryPolicy spec -> typed Policy: defaults, and errors that name the exact field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from geopin.core.policy import (
    AUTO_REGION,
    GLOBAL_REGION,
    AzureDiscovery,
    Credentials,
    Fallback,
    InvalidPolicy,
    Mode,
    Policy,
    ProbeSettings,
    PullSecrets,
    Replica,
    from_spec,
)
from geopin.core.selectors import LabelSelector

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def minimal() -> dict[str, Any]:
    return {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus"}, {"region": "westus"}]}


def errors_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidPolicy) as info:
        from_spec("p", spec)
    return [e.field for e in info.value.errors]


# --------------------------------------------------------------------------- defaults


def test_minimal_spec_defaults() -> None:
    policy = from_spec("contoso", minimal())
    assert policy == Policy(
        name="contoso",
        registry="contoso.azurecr.io",
        region="auto",
        replicas=(
            Replica("eastus", "contoso.eastus.geo.azurecr.io"),
            Replica("westus", "contoso.westus.geo.azurecr.io"),
        ),
        azure=None,
        mode=Mode.PATCH,
        fallback=Fallback.GLOBAL,
        probe=ProbeSettings(),
        credentials=Credentials(),
        replication_check=True,
        digest_pinning=False,
        pull_secrets=PullSecrets.IGNORE,
        namespace_selector=LabelSelector(),
        workload_selector=LabelSelector(),
    )
    assert AUTO_REGION == "auto"
    # The documented defaults, spelled out (api.md), so a changed dataclass default fails here.
    probe = policy.probe
    assert (probe.interval_seconds, probe.timeout_seconds) == (5, 2)
    assert (probe.failure_threshold, probe.success_threshold, probe.failback_delay_seconds) == (3, 2, 300)
    assert probe.canary_image is None
    assert probe.throttling_is_failure is False
    assert probe.scheme == "https"
    assert probe.ca_bundle == ""
    assert policy.credentials.secret_ref is None
    assert policy.credentials.azure_workload_identity is False
    assert policy.mode == "Patch"
    assert policy.fallback == "Global"
    assert policy.pull_secrets == "Ignore"


def test_from_spec_does_not_mutate_the_spec() -> None:
    spec = minimal()
    before = copy.deepcopy(spec)
    from_spec("p", spec)
    assert spec == before


@pytest.mark.parametrize(
    ("registry", "endpoint"),
    [
        ("contoso.azurecr.io", "contoso.westus.geo.azurecr.io"),
        ("contoso.azurecr.cn", "contoso.westus.geo.azurecr.cn"),
        ("contoso.azurecr.us", "contoso.westus.geo.azurecr.us"),
        ("contoso.azurecr.de", "contoso.westus.geo.azurecr.de"),
        ("Contoso.AzureCR.io", "contoso.westus.geo.azurecr.io"),
    ],
)
def test_replica_endpoint_defaults_per_cloud(registry: str, endpoint: str) -> None:
    policy = from_spec("p", {"registry": registry, "replicas": [{"region": "westus"}]})
    assert policy.replicas == (Replica("westus", endpoint),)


def test_full_spec() -> None:
    spec: dict[str, Any] = {
        "registry": "contoso.azurecr.io",
        "region": "eastus",
        "replicas": [
            {"region": "eastus"},
            {"region": "westus", "endpoint": "contoso-westus.internal.example.com:8443"},
        ],
        "azure": {
            "subscriptionId": SUBSCRIPTION,
            "resourceGroup": "platform-rg",
            "registryName": "contosoprod",
            "refreshSeconds": 600,
        },
        "mode": "Admission",
        "fallback": "Stay",
        "probe": {
            "intervalSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 4,
            "successThreshold": 1,
            "failbackDelaySeconds": 0,
            "canaryImage": "platform/canary:1",
            "throttlingIsFailure": True,
            "scheme": "http",
            "caBundle": PEM,
        },
        "credentials": {
            "secretRef": {"namespace": "geopin-system", "name": "acr-pull"},
            "azureWorkloadIdentity": True,
        },
        "replicationCheck": False,
        "digestPinning": True,
        "pullSecrets": "Extend",
        "namespaceSelector": {"matchLabels": {"geo": "on"}},
        "workloadSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
    }
    policy = from_spec("contoso", spec)
    assert policy.region == "eastus"
    assert policy.replicas == (
        Replica("eastus", "contoso.eastus.geo.azurecr.io"),
        Replica("westus", "contoso-westus.internal.example.com:8443"),
    )
    assert policy.azure == AzureDiscovery(SUBSCRIPTION, "platform-rg", "contosoprod", 600)
    assert policy.mode is Mode.ADMISSION
    assert policy.fallback is Fallback.STAY
    assert policy.probe == ProbeSettings(10, 3, 4, 1, 0, "platform/canary:1", True, "http", PEM)
    assert policy.credentials.secret_ref is not None
    assert (policy.credentials.secret_ref.namespace, policy.credentials.secret_ref.name) == (
        "geopin-system",
        "acr-pull",
    )
    assert policy.credentials.azure_workload_identity is True
    assert policy.replication_check is False
    assert policy.digest_pinning is True
    assert policy.pull_secrets is PullSecrets.EXTEND
    assert policy.namespace_selector.matches({"geo": "on"})
    assert not policy.namespace_selector.matches({"geo": "off"})
    assert policy.workload_selector.matches({"tier": "x"})
    assert not policy.workload_selector.matches({})


@pytest.mark.parametrize(("key", "low", "high"), [
    ("intervalSeconds", 1, 3600),
    ("timeoutSeconds", 1, 60),
    ("failureThreshold", 1, 100),
    ("successThreshold", 1, 100),
    ("failbackDelaySeconds", 0, 86400),
])  # fmt: skip
def test_probe_bounds_are_inclusive(key: str, low: int, high: int) -> None:
    # timeoutSeconds may not exceed intervalSeconds: keep the other one out of the way.
    other = {"intervalSeconds": {"timeoutSeconds": 1}, "timeoutSeconds": {"intervalSeconds": 3600}}.get(key, {})
    for value in (low, high):
        spec = minimal() | {"probe": {key: value, **other}}
        from_spec("p", spec)  # no error
    for value in (low - 1, high + 1):
        assert errors_of(minimal() | {"probe": {key: value, **other}}) == [f"spec.probe.{key}"]


def test_probe_timeout_may_not_exceed_interval() -> None:
    assert errors_of(minimal() | {"probe": {"intervalSeconds": 3, "timeoutSeconds": 4}}) == [
        "spec.probe.timeoutSeconds"
    ]
    from_spec("p", minimal() | {"probe": {"intervalSeconds": 3, "timeoutSeconds": 3}})


# --------------------------------------------------------------------------- non-ACR registries


@pytest.mark.parametrize(
    "registry", ["127.0.0.1:5000", "localhost:5000", "registry.example.com", "contoso.azurecr.io:443"]
)
def test_explicit_endpoints_for_non_acr_registries(registry: str) -> None:
    policy = from_spec(
        "local",
        {
            "registry": registry,
            "replicas": [
                {"region": "east", "endpoint": "127.0.0.1:5001"},
                {"region": "west", "endpoint": "localhost:5002"},
            ],
        },
    )
    assert policy.registry == registry
    assert policy.replicas == (Replica("east", "127.0.0.1:5001"), Replica("west", "localhost:5002"))
    assert policy.endpoints == {"east": "127.0.0.1:5001", "west": "localhost:5002", "global": registry}


def test_non_acr_registry_requires_explicit_endpoints() -> None:
    spec = {
        "registry": "127.0.0.1:5000",
        "replicas": [{"region": "east", "endpoint": "127.0.0.1:5001"}, {"region": "west"}],
    }
    with pytest.raises(InvalidPolicy) as info:
        from_spec("p", spec)
    assert [e.field for e in info.value.errors] == ["spec.replicas[1].endpoint"]
    assert "required" in info.value.errors[0].message
    assert "spec.replicas[1].endpoint: required" in str(info.value)


# --------------------------------------------------------------------------- azure block


def test_azure_registry_name_defaults_to_first_label() -> None:
    policy = from_spec(
        "p", {"registry": "Contoso.azurecr.io", "azure": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg"}}
    )
    assert policy.azure == AzureDiscovery(
        subscription_id=SUBSCRIPTION, resource_group="rg", registry_name="contoso", refresh_seconds=300
    )
    assert policy.replicas == ()  # discovered later, so none are required


def test_azure_registry_name_for_sovereign_cloud() -> None:
    policy = from_spec(
        "p", {"registry": "fabrikam01.azurecr.cn", "azure": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg"}}
    )
    assert policy.azure is not None
    assert policy.azure.registry_name == "fabrikam01"


def test_azure_and_replicas_together() -> None:
    policy = from_spec(
        "p", minimal() | {"azure": {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "registryName": "other"}}
    )
    assert policy.azure is not None
    assert policy.azure.registry_name == "other"
    assert [r.region for r in policy.replicas] == ["eastus", "westus"]


def test_azure_not_an_object() -> None:
    fields = errors_of({"registry": "contoso.azurecr.io", "azure": "yes"})
    assert fields[0] == "spec.azure"
    assert set(fields) <= {"spec.azure", "spec.azure.subscriptionId", "spec.azure.resourceGroup"}


# --------------------------------------------------------------------------- every invalid field


def _with(path: str, value: Any) -> dict[str, Any]:
    """minimal() with ``value`` set at a dotted path (``a.b``, ``replicas[1].endpoint``)."""
    spec = minimal()
    node: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        if part.endswith("]"):
            name, index = part[:-1].split("[")
            node = node[name][int(index)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        node[name][int(index)] = value
    else:
        node[last] = value
    return spec


INVALID_FIELDS: list[tuple[str, Any, str]] = [
    ("region", "EastUS", "spec.region"),
    ("region", "east-us", "spec.region"),
    ("region", "eastus\n", "spec.region"),
    ("region", 7, "spec.region"),
    ("replicas", "eastus", "spec.replicas"),
    ("replicas", [], "spec.replicas"),
    ("replicas", None, "spec.replicas"),
    ("replicas[1]", "westus", "spec.replicas[1]"),
    ("replicas[1]", {}, "spec.replicas[1].region"),
    ("replicas[1].region", "West US", "spec.replicas[1].region"),
    ("replicas[1].region", "westus\n", "spec.replicas[1].region"),
    ("replicas[1].region", 3, "spec.replicas[1].region"),
    ("replicas[1].region", "global", "spec.replicas[1].region"),
    ("replicas[1].region", "eastus", "spec.replicas[1].region"),  # duplicate
    ("replicas[1].endpoint", "https://contoso.westus.geo.azurecr.io", "spec.replicas[1].endpoint"),
    ("replicas[1].endpoint", "contoso.westus.geo.azurecr.io/path", "spec.replicas[1].endpoint"),
    ("replicas[1].endpoint", "host:123456", "spec.replicas[1].endpoint"),
    ("replicas[1].endpoint", "host.example.com\n", "spec.replicas[1].endpoint"),
    ("replicas[1].endpoint", 5, "spec.replicas[1].endpoint"),
    ("mode", "patch", "spec.mode"),
    ("mode", "Mutate", "spec.mode"),
    ("mode", 1, "spec.mode"),
    ("fallback", "global", "spec.fallback"),
    ("fallback", ["Global"], "spec.fallback"),
    ("pullSecrets", "Yes", "spec.pullSecrets"),
    ("replicationCheck", "true", "spec.replicationCheck"),
    ("digestPinning", 1, "spec.digestPinning"),
    ("probe", "fast", "spec.probe"),
    ("probe.intervalSeconds", 0, "spec.probe.intervalSeconds"),
    ("probe.intervalSeconds", "5", "spec.probe.intervalSeconds"),
    ("probe.intervalSeconds", 2.5, "spec.probe.intervalSeconds"),
    ("probe.intervalSeconds", True, "spec.probe.intervalSeconds"),
    ("probe.timeoutSeconds", 61, "spec.probe.timeoutSeconds"),
    ("probe.failureThreshold", 0, "spec.probe.failureThreshold"),
    ("probe.failureThreshold", -3, "spec.probe.failureThreshold"),
    ("probe.failureThreshold", "3", "spec.probe.failureThreshold"),
    ("probe.successThreshold", 101, "spec.probe.successThreshold"),
    ("probe.failbackDelaySeconds", -1, "spec.probe.failbackDelaySeconds"),
    ("probe.canaryImage", "Platform/Canary", "spec.probe.canaryImage"),
    ("probe.canaryImage", "contoso.azurecr.io/platform/canary:1", "spec.probe.canaryImage"),
    ("probe.canaryImage", 5, "spec.probe.canaryImage"),
    ("probe.throttlingIsFailure", "false", "spec.probe.throttlingIsFailure"),
    ("probe.scheme", "ftp", "spec.probe.scheme"),
    ("probe.scheme", "HTTPS", "spec.probe.scheme"),
    ("probe.caBundle", "not a pem", "spec.probe.caBundle"),
    ("credentials", "x", "spec.credentials"),
    ("credentials.secretRef", {"name": "acr-pull"}, "spec.credentials.secretRef"),
    ("credentials.secretRef", {"namespace": "ns"}, "spec.credentials.secretRef"),
    ("credentials.secretRef", "acr-pull", "spec.credentials.secretRef"),
    ("credentials.azureWorkloadIdentity", "yes", "spec.credentials.azureWorkloadIdentity"),
    ("namespaceSelector", "all", "spec.namespaceSelector"),
    (
        "namespaceSelector",
        {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
        "spec.namespaceSelector.matchExpressions[0].operator",
    ),
    (
        "workloadSelector",
        {"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "In"}]},
        "spec.workloadSelector.matchExpressions[1].values",
    ),
    ("workloadSelector", {"matchLabels": ["a"]}, "spec.workloadSelector.matchLabels"),
    ("workloadSelector", {"matchExpressions": ["a"]}, "spec.workloadSelector.matchExpressions[0]"),
    ("azure", {"resourceGroup": "rg"}, "spec.azure.subscriptionId"),
    ("azure", {"subscriptionId": "not-a-uuid", "resourceGroup": "rg"}, "spec.azure.subscriptionId"),
    ("azure", {"subscriptionId": SUBSCRIPTION + "\n", "resourceGroup": "rg"}, "spec.azure.subscriptionId"),
    ("azure", {"subscriptionId": SUBSCRIPTION}, "spec.azure.resourceGroup"),
    (
        "azure",
        {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "refreshSeconds": 29},
        "spec.azure.refreshSeconds",
    ),
    (
        "azure",
        {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "refreshSeconds": 86401},
        "spec.azure.refreshSeconds",
    ),
    ("azure", {"subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "registryName": 5}, "spec.azure.registryName"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), INVALID_FIELDS, ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID_FIELDS]
)
def test_invalid_field_is_named(path: str, value: Any, field: str) -> None:
    fields = errors_of(_with(path, value))
    assert set(fields) == {field}


@pytest.mark.parametrize(
    "registry",
    [
        None,
        "",
        5,
        ["contoso.azurecr.io"],
        "https://contoso.azurecr.io",
        "contoso.azurecr.io/team",
        "contoso.azurecr.io:",
        "contoso.azurecr.io\n",
        " contoso.azurecr.io",
        "-contoso.azurecr.io",
        "contoso..azurecr.io",
    ],
)
def test_invalid_registry(registry: Any) -> None:
    spec = {"registry": registry, "replicas": [{"region": "eastus", "endpoint": "contoso.eastus.geo.azurecr.io"}]}
    assert set(errors_of(spec)) == {"spec.registry"}


def test_missing_registry_is_reported_first() -> None:
    spec = minimal()
    del spec["registry"]
    fields = errors_of(spec)
    assert fields[0] == "spec.registry"


def test_every_error_is_reported_at_once() -> None:
    spec = minimal() | {
        "mode": "Nope",
        "probe": {"failureThreshold": 0, "scheme": "gopher"},
        "replicas": [{"region": "eastus"}, {"region": "eastus"}, {"region": "Bad"}],
    }
    with pytest.raises(InvalidPolicy) as info:
        from_spec("p", spec)
    fields = [e.field for e in info.value.errors]
    assert sorted(fields) == sorted(
        [
            "spec.replicas[1].region",
            "spec.replicas[2].region",
            "spec.probe.failureThreshold",
            "spec.probe.scheme",
            "spec.mode",
        ]
    )
    message = str(info.value)
    for error in info.value.errors:
        assert str(error) == f"{error.field}: {error.message}"
        assert str(error) in message
    assert isinstance(info.value, ValueError)


def test_duplicate_region_message() -> None:
    with pytest.raises(InvalidPolicy) as info:
        from_spec("p", {"registry": "contoso.azurecr.io", "replicas": [{"region": "westus"}, {"region": "westus"}]})
    (error,) = info.value.errors
    assert error.field == "spec.replicas[1].region"
    assert "twice" in error.message


# --------------------------------------------------------------------------- Policy helpers


def test_policy_helpers() -> None:
    policy = from_spec("p", minimal())
    assert policy.replica("westus") == Replica("westus", "contoso.westus.geo.azurecr.io")
    assert policy.replica("northeurope") is None
    assert policy.endpoints == {
        "eastus": "contoso.eastus.geo.azurecr.io",
        "westus": "contoso.westus.geo.azurecr.io",
        GLOBAL_REGION: "contoso.azurecr.io",
    }
    assert GLOBAL_REGION == "global"


@pytest.mark.parametrize(
    ("host", "managed"),
    [
        ("contoso.azurecr.io", True),
        ("CONTOSO.AzureCR.IO", True),
        ("contoso.azurecr.io:443", False),
        ("contoso.azurecr.io.evil.com", False),
        ("xcontoso.azurecr.io", False),
        ("contoso.westus.geo.azurecr.io", False),
        (None, False),
    ],
)
def test_manages_host(host: str | None, managed: bool) -> None:
    assert from_spec("p", minimal()).manages_host(host) is managed


def test_manages_host_with_port() -> None:
    policy = from_spec("p", {"registry": "localhost:5000", "replicas": [{"region": "a", "endpoint": "localhost:5001"}]})
    assert policy.manages_host("LOCALHOST:5000")
    assert not policy.manages_host("localhost")
    assert not policy.manages_host("localhost:5001")


# --------------------------------------------------------------------------- endpoints that cannot be right

ENDPOINT_MISTAKES = [
    pytest.param(
        {
            "registry": "contoso.azurecr.io",
            "replicas": [{"region": "eastus", "endpoint": "contoso.westus.geo.azurecr.io"}],
        },
        "spec.replicas[0].endpoint",
        "westus",
        id="acr-endpoint-of-another-region",
    ),
    pytest.param(
        {
            "registry": "registry.contoso.com",
            "replicas": [
                {"region": "eastus", "endpoint": "mirror.contoso.com"},
                {"region": "westus", "endpoint": "Mirror.Contoso.com"},
            ],
        },
        "spec.replicas[1].endpoint",
        "spec.replicas[0]",
        id="duplicate-endpoint",
    ),
    pytest.param(
        {
            "registry": "contoso.azurecr.io",
            "replicas": [{"region": "eastus"}, {"region": "westus", "endpoint": "contoso.eastus.geo.azurecr.io"}],
        },
        "spec.replicas[1].endpoint",
        "eastus",
        id="explicit-endpoint-is-another-replicas-default",
    ),
    pytest.param(
        {"registry": "registry.contoso.com:0", "replicas": [{"region": "eastus", "endpoint": "a.contoso.com"}]},
        "spec.registry",
        "1 to 65535",
        id="registry-port-0",
    ),
    pytest.param(
        {"registry": "registry.contoso.com", "replicas": [{"region": "eastus", "endpoint": "a.contoso.com:65536"}]},
        "spec.replicas[0].endpoint",
        "1 to 65535",
        id="endpoint-port-65536",
    ),
    pytest.param(
        {"registry": "registry.contoso.com", "replicas": [{"region": "eastus", "endpoint": "a.contoso.com:99999"}]},
        "spec.replicas[0].endpoint",
        "1 to 65535",
        id="endpoint-port-99999",
    ),
    pytest.param(
        {"registry": "contoso.azurecr.io", "replicas": [{"region": "auto"}]},
        "spec.replicas[0].region",
        "reserved",
        id="replica-named-auto",
    ),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), ENDPOINT_MISTAKES)
def test_endpoint_mistakes_are_rejected(spec: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidPolicy) as info:
        from_spec("p", spec)
    # (A spec whose only replica is refused also has no replica left: "spec.replicas" is a consequence.)
    (error,) = [e for e in info.value.errors if e.field != "spec.replicas"]
    assert error.field == field
    assert fragment in error.message


@pytest.mark.parametrize("port", ["1", "443", "5000", "65535"])
def test_ports_from_1_to_65535_are_accepted(port: str) -> None:
    parsed = from_spec(
        "p", {"registry": f"registry.contoso.com:{port}", "replicas": [{"region": "eastus", "endpoint": f"a.b:{port}"}]}
    )
    assert parsed.replicas[0].endpoint == f"a.b:{port}"


def test_an_acr_endpoint_of_its_own_region_or_another_registry_is_fine() -> None:
    parsed = from_spec(
        "p",
        {
            "registry": "contoso.azurecr.io",
            "replicas": [
                {"region": "eastus", "endpoint": "contoso.eastus.geo.azurecr.io"},
                {"region": "westus", "endpoint": "mirror.westus.example.com"},
            ],
        },
    )
    assert [r.endpoint for r in parsed.replicas] == ["contoso.eastus.geo.azurecr.io", "mirror.westus.example.com"]
