"""credentials.nodeImageCheck: AKS node image versions, nodes at risk, Enforce's decision, the condition.

Pure parts only (core/nodes.py, decisions, the policy book, the condition, the pull-secret key cache
with a fake API); the real kubelet with old and new matchImages lists is exercised in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from geopin.cli.main import main
from geopin.control.book import EveryListedReplica, PolicyBook, PolicyEntry
from geopin.control.reporting import ENFORCED, node_credentials_condition
from geopin.control.runtime import Runtime
from geopin.core.config import RunConfig
from geopin.core.decisions import PolicySnapshot, decide, plan_workload
from geopin.core.nodes import (
    DEFAULT_CREDENTIAL_FIX,
    NodeInfo,
    NodeRisk,
    assess,
    image_release,
    needs_node_credentials,
    node_info,
    parse_threshold,
)
from geopin.core.policy import GLOBAL_REGION, InvalidPolicy, NodeImageCheck, Policy, from_spec
from geopin.core.workloads import KINDS, WorkloadView, view_of
from geopin.io.cache import ObjectCache
from geopin.io.pull_secret_keys import PullSecretKeys
from tests.unit.fakekube import FakeKube

OLD = "AKSUbuntu-2204gen2containerd-202605.10.0"
NEW = "AKSUbuntu-2204gen2containerd-202607.29.0"
EAST = "contoso.eastus.geo.azurecr.io"
WEST = "contoso.westus.geo.azurecr.io"


# --------------------------------------------------------------------------- node image versions


@pytest.mark.parametrize(
    ("label", "release"),
    [
        ("AKSUbuntu-2204gen2containerd-202607.29.0", (2026, 7, 29, 0)),
        ("AKSUbuntu-2204gen2containerd-202309.06.0", (2023, 9, 6, 0)),
        ("AKSCBLMariner-V2katagen2-202503.13.0", (2025, 3, 13, 0)),
        ("AKSAzureLinux-V3gen2arm64fips-202505.27.12", (2025, 5, 27, 12)),
        ("AKSUbuntu-2204minimalcontainerd-202401.12.0", (2024, 1, 12, 0)),
        ("AKSUbuntu-1804-2020.03.05", (2020, 3, 5, 0)),  # the older dotted shape
        ("AKSUbuntu-1804gen2containerd-2022.01.19", (2022, 1, 19, 0)),
        (" AKSUbuntu-2204gen2containerd-202607.29.0 ", (2026, 7, 29, 0)),
        # Windows: build.revision.YYMMDD, and no date at all; neither is the Linux release train.
        ("AKSWindows-2022-containerd-20348.2340.240401", None),
        ("AKSWindows-2022-containerd-gen2-20348.3692.250518", None),
        ("AKSWindows-23H2-gen2", None),
        ("AKSUbuntu-2204gen2containerd", None),  # the SKU's digits are not a date
        ("AKSUbuntu-2204gen2containerd-202613.01.0", None),  # month 13
        ("AKSUbuntu-2204gen2containerd-202607.32.0", None),
        ("AKSUbuntu-2204gen2containerd-test", None),
        ("", None),
        (None, None),
    ],
)
def test_node_image_release(label: str | None, release: tuple[int, int, int, int] | None) -> None:
    assert image_release(label) == release


def test_threshold_shapes() -> None:
    assert parse_threshold(DEFAULT_CREDENTIAL_FIX) == (2026, 7, 29, 0)
    assert parse_threshold("202607.29.3") == (2026, 7, 29, 3)
    assert parse_threshold("2026.07.29") == (2026, 7, 29, 0)
    assert parse_threshold(NEW) == (2026, 7, 29, 0)
    for bad in ("2026-07-29", "202607", "latest", "", "20348.2340.240401"):
        with pytest.raises(ValueError, match=r"YYYYMM\.DD"):
            parse_threshold(bad)


def test_the_run_flag_refuses_a_bad_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--node-image-credential-fix", "July 2026"])
    assert exited.value.code == 2
    assert "not a node image release" in capsys.readouterr().err


def node(name: str, image: str = "", pool: str | None = None, *, cordoned: bool = False) -> dict[str, Any]:
    labels = {"topology.kubernetes.io/region": "eastus"}
    if image:
        labels["kubernetes.azure.com/node-image-version"] = image
    if pool is not None:
        labels["kubernetes.azure.com/agentpool"] = pool
    return {"metadata": {"name": name, "labels": labels}, "spec": {"unschedulable": True} if cordoned else {}}


def test_node_info_reads_region_image_pool_and_cordon() -> None:
    info = node_info(node("aks-np1-0", OLD, "np1", cordoned=True))
    assert info == NodeInfo("aks-np1-0", "eastus", OLD, "np1", schedulable=False)
    legacy = node_info({"metadata": {"name": "n", "labels": {"agentpool": "old"}}})
    assert legacy.pool == "old"
    assert node_info({"metadata": {"name": "kind-worker"}}).pool == "kind-worker"  # else the node's name


def test_assess_names_pools_at_risk_and_counts_schedulable_nodes() -> None:
    nodes = [
        node_info(node("a-0", "AKSUbuntu-2204gen2containerd-202606.01.0", "apps")),
        node_info(node("a-1", OLD, "apps")),
        node_info(node("s-0", NEW, "system")),
        node_info(node("s-1", "AKSUbuntu-2204gen2containerd-202607.29.1", "system")),
        node_info(node("g-0", OLD, "gpu", cordoned=True)),
        node_info(node("kind-0")),  # not AKS: not judged, not at risk
        node_info(node("w-0", "AKSWindows-2022-containerd-20348.2340.240401", "win")),
    ]
    risk = assess(nodes, DEFAULT_CREDENTIAL_FIX)
    assert [(p.pool, p.nodes, p.oldest) for p in risk.pools] == [("apps", 2, OLD), ("gpu", 1, OLD)]
    assert (risk.nodes, risk.schedulable, risk.judged, risk.total) == (3, 2, 5, 7)
    message = risk.message()
    assert message.startswith(f"node pools at risk: apps (2 nodes, {OLD}), gpu (1 nodes, {OLD})")
    assert "1 of them cordoned" in message
    assert "*.*.geo.azurecr.io" in message

    # A newer fix makes every judged node old; an older one makes none.
    assert assess(nodes, "202701.01").nodes == 5
    fine = assess(nodes, "202601.01")
    assert not fine.at_risk
    assert (
        fine.message() == "5 nodes have node image 202601.01 or newer; 2 without an AKS node image version (not judged)"
    )
    assert not assess([node_info(node("kind-0"))], DEFAULT_CREDENTIAL_FIX).at_risk


def test_only_regional_acr_hosts_need_node_credentials() -> None:
    assert needs_node_credentials(EAST)
    assert needs_node_credentials("contoso.chinanorth3.geo.azurecr.cn")
    assert not needs_node_credentials("contoso.azurecr.io")  # every AKS node image covers *.azurecr.io
    assert not needs_node_credentials("contoso.eastus.data.azurecr.io")
    assert not needs_node_credentials("registry.example.com")
    assert not needs_node_credentials("127.0.0.1:5000")


def test_the_node_cache_counts_only_real_changes() -> None:
    cache: ObjectCache[str, NodeInfo] = ObjectCache()
    cache.upsert("n", "1", NodeInfo("n", "eastus", OLD))
    assert cache.changes == 1
    cache.upsert("n", "2", NodeInfo("n", "eastus", OLD))  # a heartbeat: same labels, newer version
    assert cache.changes == 1
    cache.upsert("n", "3", NodeInfo("n", "eastus", NEW))
    cache.discard("n", "4")
    cache.discard("n", "5")
    assert cache.changes == 3


# --------------------------------------------------------------------------- the policy field


def contoso(**extra: Any) -> Policy:
    return from_spec(
        "contoso", {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus"}, {"region": "westus"}], **extra}
    )


def test_node_image_check_defaults_to_report_and_reads_every_value() -> None:
    assert contoso().credentials.node_image_check is NodeImageCheck.REPORT
    for value in ("Off", "Report", "Enforce"):
        assert contoso(credentials={"nodeImageCheck": value}).credentials.node_image_check is NodeImageCheck(value)
    with pytest.raises(InvalidPolicy, match="nodeImageCheck: must be one of Off, Report, Enforce"):
        contoso(credentials={"nodeImageCheck": "Always"})
    with pytest.raises(InvalidPolicy, match='write "Off" in quotes'):
        contoso(credentials={"nodeImageCheck": False})  # what YAML makes of a bare Off


# --------------------------------------------------------------------------- Enforce's decision


def workload(secrets: tuple[str, ...] = (), annotations: Mapping[str, str] | None = None) -> WorkloadView:
    spec: dict[str, Any] = {"containers": [{"name": "web", "image": "contoso.azurecr.io/shop/web:1"}]}
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    metadata: dict[str, Any] = {"name": "web", "namespace": "shop", "uid": "u-1"}
    if annotations:
        metadata["annotations"] = dict(annotations)
    body = {"kind": "Deployment", "metadata": metadata, "spec": {"template": {"spec": spec}}}
    return view_of(KINDS["Deployment"], body)


def enforced(
    policy: Policy | None = None, keys: Mapping[str, tuple[str, ...]] | None = None, **extra: Any
) -> PolicySnapshot:
    known = dict(keys or {})
    return PolicySnapshot(
        policy=policy or contoso(credentials={"nodeImageCheck": "Enforce"}),
        cluster_region="eastus",
        usable=frozenset({"eastus", "westus"}),
        node_credentials_enforced=True,
        pull_secret_keys=lambda namespace, name: known.get(f"{namespace}/{name}"),
        **extra,
    )


def test_without_pull_secrets_a_workload_goes_to_the_global_endpoint() -> None:
    choice = decide(enforced(), workload(), {})
    assert choice.target is not None
    assert (choice.target.region, choice.target.endpoint) == (GLOBAL_REGION, "contoso.azurecr.io")
    desired = plan_workload(workload(), [enforced()], {})
    assert desired is not None
    assert desired.images["containers/web"] == "contoso.azurecr.io/shop/web:1"
    assert desired.pinned_region == GLOBAL_REGION
    assert enforced().home().region == GLOBAL_REGION


def test_not_enforced_the_same_workload_is_pinned_regionally() -> None:
    plain = PolicySnapshot(policy=contoso(), cluster_region="eastus", usable=frozenset({"eastus", "westus"}))
    target = decide(plain, workload(), {}).target
    assert target is not None
    assert target.endpoint == EAST


@pytest.mark.parametrize("key", ["*.*.geo.azurecr.io", EAST, f"https://{EAST}/v1/", "contoso.*.geo.azurecr.io"])
def test_pull_secrets_that_cover_the_regional_host_keep_the_pin(key: str) -> None:
    snapshot = enforced(keys={"shop/acr": (key,)})
    target = decide(snapshot, workload(("acr",)), {}).target
    assert target is not None
    assert target.endpoint == EAST


def test_a_key_for_the_global_host_covers_regional_hosts_only_with_extend() -> None:
    keys = {"shop/acr": ("contoso.azurecr.io",)}
    reported = enforced(contoso(credentials={"nodeImageCheck": "Enforce"}, pullSecrets="Report"), keys)
    extended = enforced(contoso(credentials={"nodeImageCheck": "Enforce"}, pullSecrets="Extend"), keys)
    assert (decide(reported, workload(("acr",)), {}).target or GLOBAL_REGION) != EAST
    reported_target = decide(reported, workload(("acr",)), {}).target
    assert reported_target is not None
    assert reported_target.region == GLOBAL_REGION
    extended_target = decide(extended, workload(("acr",)), {}).target
    assert extended_target is not None
    assert extended_target.endpoint == EAST


def test_a_secret_covering_only_another_region_moves_the_workload_there() -> None:
    target = decide(enforced(keys={"shop/west": (WEST,)}), workload(("west",)), {}).target
    assert target is not None
    assert target.endpoint == WEST


def test_unread_pull_secrets_are_looked_up_before_deciding() -> None:
    snapshot = enforced(keys={"shop/known": ("docker.io",)})
    view = workload(("known", "unknown", "app-geopin-regional"))
    choice = decide(snapshot, view, {})
    assert choice.target is None
    assert choice.unknown_secrets == ("unknown",)  # geopin's own sibling is never read for this
    desired = plan_workload(view, [snapshot], {})
    assert desired is not None
    assert desired.undecided
    assert desired.unknown_secrets == (("shop", "unknown"),)


def test_enforce_overrides_fallback_stay() -> None:
    stay = contoso(credentials={"nodeImageCheck": "Enforce"}, fallback="Stay")
    pinned = workload(annotations={"geopin.io/pinned-region": "eastus"})
    target = decide(enforced(stay), pinned, {}).target
    assert target is not None
    assert target.region == GLOBAL_REGION


def test_custom_endpoints_are_not_affected() -> None:
    custom = from_spec(
        "contoso",
        {
            "registry": "contoso.azurecr.io",
            "replicas": [{"region": "eastus", "endpoint": "registry-eastus.contoso.internal"}],
            "credentials": {"nodeImageCheck": "Enforce"},
        },
    )
    target = decide(enforced(custom), workload(), {}).target
    assert target is not None
    assert target.endpoint == "registry-eastus.contoso.internal"


# --------------------------------------------------------------------------- the policy book and the condition


class KnownNodes:
    """The book's NodeCredentialSource over a fixed list of nodes, no pull secrets read."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes

    def node_risk(self) -> NodeRisk | None:
        return assess(self.nodes, DEFAULT_CREDENTIAL_FIX)

    def pull_secret_keys(self, namespace: str, name: str) -> tuple[str, ...] | None:
        return None


def book_with(nodes: list[NodeInfo], check: str) -> tuple[PolicyBook, PolicyEntry]:
    entry = PolicyEntry(
        name="contoso",
        uid="u",
        created="2026-01-01T00:00:00Z",
        generation=1,
        policy=contoso(credentials={"nodeImageCheck": check}),
    )
    book = PolicyBook(EveryListedReplica(), lambda: "eastus", nodes=KnownNodes(nodes))
    book.upsert(entry)
    return book, entry


@pytest.mark.parametrize(
    ("check", "nodes", "enforced_now", "condition"),
    [
        ("Report", [NodeInfo("a", "eastus", OLD, "apps")], False, (False, "NodeImageTooOld")),
        ("Enforce", [NodeInfo("a", "eastus", OLD, "apps")], True, (False, ENFORCED)),
        # Only a cordoned node is old: nothing new lands there, so Enforce does not act.
        (
            "Enforce",
            [NodeInfo("a", "eastus", OLD, "apps", schedulable=False), NodeInfo("b", "eastus", NEW)],
            False,
            (False, "NodeImageTooOld"),
        ),
        ("Enforce", [NodeInfo("b", "eastus", NEW, "apps")], False, (True, "NodeImagesCurrent")),
        ("Report", [NodeInfo("kind", "eastus")], False, (True, "NodeImagesCurrent")),
        ("Off", [NodeInfo("a", "eastus", OLD, "apps")], False, None),
    ],
)
def test_book_and_condition(
    check: str, nodes: list[NodeInfo], enforced_now: bool, condition: tuple[bool, str] | None
) -> None:
    book, entry = book_with(nodes, check)
    snapshot = book.snapshot(entry)
    assert snapshot is not None
    assert snapshot.node_credentials_enforced is enforced_now
    found = node_credentials_condition(book, snapshot)
    assert (found[:2] if found is not None else None) == condition
    if found is not None and not found[0]:
        assert "apps (1 nodes" in found[2]


def test_the_condition_is_absent_for_replicas_that_are_not_regional_acr_hosts() -> None:
    book, entry = book_with([NodeInfo("a", "eastus", OLD, "apps")], "Report")
    assert entry.policy is not None
    local = from_spec(
        "contoso", {"registry": "contoso.azurecr.io", "replicas": [{"region": "eastus", "endpoint": "127.0.0.2:443"}]}
    )
    snapshot = PolicySnapshot(policy=local, cluster_region="eastus", usable=frozenset({"eastus"}))
    assert node_credentials_condition(book, snapshot) is None


# --------------------------------------------------------------------------- pull secret keys


def dockerconfig(*hosts: str) -> dict[str, str]:
    auths = {host: {"auth": base64.b64encode(b"user:s3cret-password").decode()} for host in hosts}
    return {".dockerconfigjson": base64.b64encode(json.dumps({"auths": auths}).encode()).decode()}


class SecretAnswers:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.reads: list[str] = []

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        key = f"{namespace}/{name}"
        self.reads.append(key)
        answer = self.answers.get(key)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_pull_secret_keys_keep_keys_only_and_fail_safe() -> None:
    clock = [0.0]
    kube = SecretAnswers(
        {
            "shop/acr": dockerconfig("*.*.geo.azurecr.io", "contoso.azurecr.io"),
            "shop/forbidden": ApiException(status=403, reason="Forbidden"),
            "shop/flaky": ApiException(status=500, reason="etcd"),
            "shop/broken": {".dockerconfigjson": "not base64!"},
        }
    )
    keys = PullSecretKeys(ttl=300, clock=lambda: clock[0])
    refs = [("shop", n) for n in ("acr", "missing", "forbidden", "flaky", "broken")]
    asyncio.run(keys.resolve(kube, refs))  # type: ignore[arg-type]
    assert keys.get("shop", "acr") == ("*.*.geo.azurecr.io", "contoso.azurecr.io")
    assert "s3cret" not in repr(keys.__dict__)
    assert keys.get("shop", "missing") == ()
    assert keys.get("shop", "forbidden") == ()  # no RBAC: taken as no regional credentials
    assert keys.get("shop", "broken") == ()
    assert keys.get("shop", "flaky") is None  # asked again on the next pass

    assert not asyncio.run(keys.refresh_stale(kube))  # type: ignore[arg-type]
    clock[0] = 301
    kube.answers["shop/acr"] = dockerconfig("contoso.azurecr.io")
    kube.reads.clear()
    assert asyncio.run(keys.refresh_stale(kube))  # type: ignore[arg-type]
    assert sorted(kube.reads) == ["shop/acr", "shop/broken", "shop/forbidden", "shop/missing"]
    assert keys.get("shop", "acr") == ("contoso.azurecr.io",)


# --------------------------------------------------------------------------- the runtime's node events


def test_only_a_node_event_that_changes_what_is_kept_wakes_the_status_loop() -> None:
    async def scenario() -> None:
        runtime = Runtime(RunConfig(operator_namespace="geopin-system"), FakeKube())
        node = NodeInfo("a", "eastus", NEW, "apps")
        runtime.node_changed("a", "1", node)
        assert runtime.changes.status.is_set()
        assert runtime.book.node_risk() == assess([node], DEFAULT_CREDENTIAL_FIX)
        runtime.changes.status.clear()
        runtime.node_changed("a", "2", node)  # a heartbeat: status only
        assert not runtime.changes.status.is_set()
        runtime.node_changed("a", "3", NodeInfo("a", "eastus", OLD, "apps"))  # the pool was downgraded
        assert runtime.changes.status.is_set()
        risk = runtime.book.node_risk()
        assert risk is not None
        assert risk.schedulable == 1
        runtime.changes.status.clear()
        runtime.node_changed("a", "4", NodeInfo("a", "eastus", OLD, "apps", schedulable=False))  # cordoned
        assert runtime.changes.status.is_set()
        risk = runtime.book.node_risk()
        assert risk is not None
        assert (risk.nodes, risk.schedulable) == (1, 0)

    asyncio.run(scenario())
