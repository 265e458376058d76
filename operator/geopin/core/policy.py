"""RegistryPolicy spec → a typed, validated :class:`Policy` with every default filled in.

The CRD's OpenAPI schema rejects most malformed policies at the API server; this module applies the
same rules (and the ones a schema cannot express: unique regions, an endpoint derivable from the
registry name) for `geopin plan`, which has no API server, and as a second line of defence.
Every error names the field it is about.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from geopin.core import endpoints
from geopin.core.references import InvalidReference, parse, same_host
from geopin.core.selectors import LabelSelector, SelectorError

__all__ = [
    "AUTO_REGION",
    "GLOBAL_REGION",
    "AzureDiscovery",
    "Credentials",
    "FailoverSettings",
    "Fallback",
    "FieldError",
    "InvalidPolicy",
    "Mode",
    "NodeImageCheck",
    "Policy",
    "ProbeSettings",
    "PullSecrets",
    "Replica",
    "Strategy",
    "cluster_region_of",
    "from_spec",
    "with_discovered",
]

AUTO_REGION = "auto"
GLOBAL_REGION = "global"

REGION_RE = endpoints.REGION_RE
# host[:port]: DNS name or IPv4, optional port from 1 to 65535. Mirrors the CRD's pattern.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    rf"(?::{_PORT})?$"
)
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class Mode(enum.StrEnum):
    PATCH = "Patch"
    ADMISSION = "Admission"
    AUDIT = "Audit"


class Fallback(enum.StrEnum):
    GLOBAL = "Global"
    STAY = "Stay"


class NodeImageCheck(enum.StrEnum):
    """``spec.credentials.nodeImageCheck``: what to do about AKS nodes whose kubelet has no
    credentials for the regional hosts (node image older than ``geopin run --node-image-credential-fix``)."""

    OFF = "Off"
    REPORT = "Report"  # condition NodeCredentials=False naming the node pools at risk
    ENFORCE = "Enforce"  # also: the global endpoint instead of a regional one while such a node is schedulable


class Strategy(enum.StrEnum):
    REDIRECT = "Redirect"  # templates keep their pin; new Pods are pinned at admission to the target
    REPOINT = "Repoint"  # templates move at once (paced)


class PullSecrets(enum.StrEnum):
    IGNORE = "Ignore"
    REPORT = "Report"
    EXTEND = "Extend"


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidPolicy(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Replica:
    region: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class AzureDiscovery:
    subscription_id: str
    resource_group: str
    registry_name: str
    refresh_seconds: int = 300


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval_seconds: int = 5
    timeout_seconds: int = 2
    failure_threshold: int = 3
    success_threshold: int = 2
    failback_delay_seconds: int = 300
    canary_image: str | None = None
    throttling_is_failure: bool = False
    scheme: str = "https"
    ca_bundle: str = ""


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    strategy: Strategy = Strategy.REDIRECT
    # Redirect: templates follow a pinned replica only once it has been unusable this long; 0: never.
    repoint_after_seconds: int = 600
    # Template writes a switch causes (failover, failback, a changed replica list), per second; 0: unpaced.
    max_repoints_per_second: int = 20
    # Fix in place the image of a Pod stuck pulling from an unusable replica.
    rescue_pods: bool = True


@dataclass(frozen=True, slots=True)
class SecretRef:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Credentials:
    secret_ref: SecretRef | None = None
    azure_workload_identity: bool = False
    node_image_check: NodeImageCheck = NodeImageCheck.REPORT


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    registry: str
    region: str = AUTO_REGION
    replicas: tuple[Replica, ...] = ()
    azure: AzureDiscovery | None = None
    mode: Mode = Mode.PATCH
    fallback: Fallback = Fallback.GLOBAL
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    credentials: Credentials = field(default_factory=Credentials)
    replication_check: bool = True
    digest_pinning: bool = False
    pull_secrets: PullSecrets = PullSecrets.IGNORE
    namespace_selector: LabelSelector = field(default_factory=LabelSelector)
    workload_selector: LabelSelector = field(default_factory=LabelSelector)

    def manages_host(self, host: str | None) -> bool:
        """Is an image on this host one of this policy's (global endpoint, same port, any case)?"""
        return host is not None and same_host(host, self.registry)

    def replica(self, region: str) -> Replica | None:
        return next((r for r in self.replicas if r.region == region), None)

    @property
    def endpoints(self) -> dict[str, str]:
        """Region → host for every replica, plus ``global`` → the global login server."""
        hosts = {r.region: r.endpoint for r in self.replicas}
        hosts[GLOBAL_REGION] = self.registry
        return hosts


class _Reader:
    """Reads typed fields from a spec mapping and collects every error, each with its field path."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, spec: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = spec.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(f"{path}.{key}", "must be an object")
            return {}
        return value

    def string(self, spec: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = spec.get(key, default)
        if value is None or isinstance(value, str):
            return value
        self.error(f"{path}.{key}", f"must be a string, not {type(value).__name__}")
        return default

    def boolean(self, spec: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = spec.get(key, default)
        if isinstance(value, bool):
            return value
        self.error(f"{path}.{key}", "must be true or false")
        return default

    def integer(self, spec: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(f"{path}.{key}", "must be an integer")
            return default
        if not low <= value <= high:
            self.error(f"{path}.{key}", f"must be between {low} and {high}, got {value}")
            return default
        return value

    def choice(self, spec: Mapping[str, Any], key: str, path: str, enum_type: type[enum.StrEnum], default: Any) -> Any:
        value = spec.get(key, default.value)
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_type)
            self.error(f"{path}.{key}", f"must be one of {allowed}, got {value!r}")
            return default


def from_spec(name: str, spec: Mapping[str, Any]) -> Policy:
    """Build a :class:`Policy` from a RegistryPolicy ``spec``; raise :class:`InvalidPolicy` listing every error."""
    read = _Reader()
    path = "spec"

    registry = read.string(spec, "registry", path)
    if not registry:
        read.error("spec.registry", "required: the registry's global login server, e.g. contoso.azurecr.io")
        registry = ""
    elif (problem := _host_problem(registry)) is not None:
        read.error("spec.registry", problem)

    region = read.string(spec, "region", path, AUTO_REGION) or AUTO_REGION
    if region != AUTO_REGION and not REGION_RE.fullmatch(region):
        read.error("spec.region", f"{region!r} must be 'auto' or an Azure region name matching ^[a-z0-9]+$")

    replicas = _read_replicas(read, spec, registry)
    azure = _read_azure(read, spec, registry)
    if not replicas and azure is None:
        read.error("spec.replicas", "list at least one replica, or set spec.azure to discover them")

    probe = _read_probe(read, read.mapping(spec, "probe", path))
    failover = _read_failover(read, read.mapping(spec, "failover", path))
    credentials = _read_credentials(read, read.mapping(spec, "credentials", path))

    selectors: dict[str, LabelSelector] = {}
    for key in ("namespaceSelector", "workloadSelector"):
        try:
            selectors[key] = LabelSelector.from_spec(read.mapping(spec, key, path))
        except SelectorError as e:
            read.error(f"spec.{key}.{str(e).split(':', 1)[0]}", str(e).split(": ", 1)[1])
            selectors[key] = LabelSelector()

    policy = Policy(
        name=name,
        registry=registry,
        region=region,
        replicas=tuple(replicas),
        azure=azure,
        mode=read.choice(spec, "mode", path, Mode, Mode.PATCH),
        fallback=read.choice(spec, "fallback", path, Fallback, Fallback.GLOBAL),
        probe=probe,
        failover=failover,
        credentials=credentials,
        replication_check=read.boolean(spec, "replicationCheck", path, True),
        digest_pinning=read.boolean(spec, "digestPinning", path, False),
        pull_secrets=read.choice(spec, "pullSecrets", path, PullSecrets, PullSecrets.IGNORE),
        namespace_selector=selectors["namespaceSelector"],
        workload_selector=selectors["workloadSelector"],
    )
    if read.errors:
        raise InvalidPolicy(read.errors)
    return policy


def _host_problem(host: str) -> str | None:
    """Why ``host`` is not a ``host[:port]``, or None."""
    if HOST_RE.fullmatch(host):
        return None
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and HOST_RE.fullmatch(name):
        return f"{host!r}: the port must be 1 to 65535"
    return f"{host!r} is not a host[:port] (no scheme, no path)"


def _read_replicas(read: _Reader, spec: Mapping[str, Any], registry: str) -> list[Replica]:
    items = spec.get("replicas") or []
    if not isinstance(items, list):
        read.error("spec.replicas", "must be a list")
        return []
    listed: list[tuple[int, Replica]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        path = f"spec.replicas[{index}]"
        if not isinstance(item, Mapping):
            read.error(path, "must be an object with a region")
            continue
        region = read.string(item, "region", path)
        if not region or not REGION_RE.fullmatch(region):
            read.error(f"{path}.region", f"{region!r} must be an Azure region name matching ^[a-z0-9]+$")
            continue
        if region == GLOBAL_REGION:
            read.error(f"{path}.region", "'global' is reserved for the global endpoint")
            continue
        if region == AUTO_REGION:
            read.error(f"{path}.region", "'auto' is reserved (spec.region: auto reads the nodes' region)")
            continue
        if region in seen:
            read.error(f"{path}.region", f"{region!r} is listed twice")
            continue
        seen.add(region)
        endpoint = read.string(item, "endpoint", path)
        if endpoint:
            if (problem := _host_problem(endpoint)) is not None:
                read.error(f"{path}.endpoint", problem)
                continue
            regional = endpoints.parse_regional(endpoint)
            if regional is not None and regional.kind == "geo" and regional.region != region:
                read.error(
                    f"{path}.endpoint", f"{endpoint!r} is the regional endpoint of {regional.region}, not of {region}"
                )
                continue
        else:
            try:
                endpoint = endpoints.regional_endpoint(registry, region)
            except ValueError as e:
                read.error(f"{path}.endpoint", f"required: {e}")
                continue
        twin = next((i for i, other in listed if same_host(other.endpoint, endpoint)), None)
        if twin is not None:
            read.error(f"{path}.endpoint", f"{endpoint!r} is also the endpoint of spec.replicas[{twin}]")
            continue
        listed.append((index, Replica(region=region, endpoint=endpoint)))
    return [replica for _, replica in listed]


def _read_azure(read: _Reader, spec: Mapping[str, Any], registry: str) -> AzureDiscovery | None:
    if spec.get("azure") is None:
        return None
    azure = read.mapping(spec, "azure", "spec")
    path = "spec.azure"
    subscription = read.string(azure, "subscriptionId", path) or ""
    if not UUID_RE.fullmatch(subscription):
        read.error(f"{path}.subscriptionId", "required: a subscription UUID")
    group = read.string(azure, "resourceGroup", path) or ""
    if not group:
        read.error(f"{path}.resourceGroup", "required")
    name = read.string(azure, "registryName", path) or endpoints.registry_name(registry)
    return AzureDiscovery(
        subscription_id=subscription,
        resource_group=group,
        registry_name=name,
        refresh_seconds=read.integer(azure, "refreshSeconds", path, 300, 30, 86400),
    )


def _read_probe(read: _Reader, probe: Mapping[str, Any]) -> ProbeSettings:
    path = "spec.probe"
    defaults = ProbeSettings()
    settings = ProbeSettings(
        interval_seconds=read.integer(probe, "intervalSeconds", path, defaults.interval_seconds, 1, 3600),
        timeout_seconds=read.integer(probe, "timeoutSeconds", path, defaults.timeout_seconds, 1, 60),
        failure_threshold=read.integer(probe, "failureThreshold", path, defaults.failure_threshold, 1, 100),
        success_threshold=read.integer(probe, "successThreshold", path, defaults.success_threshold, 1, 100),
        failback_delay_seconds=read.integer(
            probe, "failbackDelaySeconds", path, defaults.failback_delay_seconds, 0, 86400
        ),
        canary_image=read.string(probe, "canaryImage", path) or None,
        throttling_is_failure=read.boolean(probe, "throttlingIsFailure", path, defaults.throttling_is_failure),
        scheme=read.string(probe, "scheme", path, defaults.scheme) or defaults.scheme,
        ca_bundle=read.string(probe, "caBundle", path, "") or "",
    )
    if settings.timeout_seconds > settings.interval_seconds:
        read.error(f"{path}.timeoutSeconds", "must not exceed spec.probe.intervalSeconds")
    if settings.scheme not in ("https", "http"):
        read.error(f"{path}.scheme", f"must be https or http, got {settings.scheme!r}")
    if settings.canary_image is not None:
        try:
            canary = parse(settings.canary_image)
        except InvalidReference as e:
            read.error(f"{path}.canaryImage", e.reason)
        else:
            if canary.host is not None:
                read.error(f"{path}.canaryImage", "a repository path on the registry, without a host")
    if settings.ca_bundle and "-----BEGIN CERTIFICATE-----" not in settings.ca_bundle:
        read.error(f"{path}.caBundle", "must be PEM (-----BEGIN CERTIFICATE-----)")
    return settings


def _read_failover(read: _Reader, failover: Mapping[str, Any]) -> FailoverSettings:
    defaults = FailoverSettings()
    path = "spec.failover"
    return FailoverSettings(
        strategy=read.choice(failover, "strategy", path, Strategy, defaults.strategy),
        repoint_after_seconds=read.integer(
            failover, "repointAfterSeconds", path, defaults.repoint_after_seconds, 0, 604800
        ),
        max_repoints_per_second=read.integer(
            failover, "maxRepointsPerSecond", path, defaults.max_repoints_per_second, 0, 10000
        ),
        rescue_pods=read.boolean(failover, "rescuePods", path, defaults.rescue_pods),
    )


def _read_credentials(read: _Reader, credentials: Mapping[str, Any]) -> Credentials:
    path = "spec.credentials"
    ref = read.mapping(credentials, "secretRef", path)
    secret_ref = None
    if ref:
        namespace, name = ref.get("namespace"), ref.get("name")
        if not namespace or not name:
            read.error(f"{path}.secretRef", "needs both namespace and name")
        else:
            secret_ref = SecretRef(namespace=str(namespace), name=str(name))
    return Credentials(
        secret_ref=secret_ref,
        azure_workload_identity=read.boolean(credentials, "azureWorkloadIdentity", path, False),
        node_image_check=_read_node_image_check(read, credentials, path),
    )


def _read_node_image_check(read: _Reader, credentials: Mapping[str, Any], path: str) -> NodeImageCheck:
    if credentials.get("nodeImageCheck") is False:
        # YAML 1.1 (kubectl's and PyYAML's) reads a bare Off as the boolean false.
        read.error(f"{path}.nodeImageCheck", 'write "Off" in quotes: a bare Off is read as the boolean false')
        return NodeImageCheck.REPORT
    check: NodeImageCheck = read.choice(credentials, "nodeImageCheck", path, NodeImageCheck, NodeImageCheck.REPORT)
    return check


def with_discovered(policy: Policy, discovered: Iterable[tuple[str, str]]) -> Policy:
    """The policy's replicas plus those ARM discovered: the spec's order and endpoints come first
    (they are the fallback order the platform team chose); other discovered regions follow in ARM's
    order with their regional endpoints."""
    listed = {r.region for r in policy.replicas}
    extra = tuple(Replica(region, endpoint) for region, endpoint in discovered if region not in listed)
    return policy if not extra else replace(policy, replicas=policy.replicas + extra)


def cluster_region_of(node_regions: Sequence[str | None]) -> str | None:
    """The region most nodes are labelled with; ties go to the alphabetically first (deterministic)."""
    counts = Counter(r for r in node_regions if r)
    if not counts:
        return None
    best = max(counts.values())
    return min(region for region, count in counts.items() if count == best)
