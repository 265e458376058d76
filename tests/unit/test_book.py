"""PolicyBook: one policy per registry (the older wins), the cluster's region, snapshots; records_policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from geopin.control.book import EveryListedReplica, PolicyBook, PolicyEntry, records_policy
from geopin.core.decisions import DEFAULT_EXCLUDED_NAMESPACES
from geopin.core.nodes import NodeInfo
from geopin.core.policy import Policy, cluster_region_of, from_spec
from geopin.core.rewrite import encode_record
from geopin.core.workloads import ANNOTATION_ORIGINAL_IMAGES, KINDS, WorkloadView, view_of
from geopin.io.cache import NodeCache

REPLICAS = [{"region": "eastus"}, {"region": "westus"}]
OLD = "2026-01-01T00:00:00Z"
NEW = "2026-02-01T00:00:00Z"


def policy(name: str, registry: str = "contoso.azurecr.io", **extra: Any) -> Policy:
    return from_spec(name, {"registry": registry, "replicas": REPLICAS, **extra})


def entry(name: str, created: str = OLD, registry: str = "contoso.azurecr.io", **extra: Any) -> PolicyEntry:
    return PolicyEntry(
        name=name, uid=f"uid-{name}", created=created, generation=1, policy=policy(name, registry, **extra)
    )


def regions(nodes: Sequence[str | None]) -> NodeCache:
    result = NodeCache()
    for i, region in enumerate(nodes):
        result.upsert(f"node-{i}", str(i + 1), NodeInfo(f"node-{i}", region or ""))
    return result


def book(*entries: PolicyEntry, nodes: Sequence[str | None] = ()) -> PolicyBook:
    majority = regions(nodes).region
    result = PolicyBook(EveryListedReplica(), lambda: majority)
    for e in entries:
        result.upsert(e)
    return result


# --------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize("younger_first", [False, True])
def test_younger_policy_for_the_same_registry_conflicts(younger_first: bool) -> None:
    older, younger = entry("zeta", OLD), entry("alpha", NEW)
    b = book(*([younger, older] if younger_first else [older, younger]))
    assert older.conflict_with is None
    assert younger.conflict_with == "zeta"
    assert b.snapshot(younger) is None
    older_snapshot = b.snapshot(older)
    assert older_snapshot is not None
    assert older_snapshot.policy.name == "zeta"
    assert [s.policy.name for s in b.snapshots()] == ["zeta"]


def test_same_creation_time_goes_to_the_alphabetically_first_name() -> None:
    first, second = entry("alpha", OLD), entry("beta", OLD)
    b = book(second, first)
    assert first.conflict_with is None
    assert second.conflict_with == "alpha"
    assert [s.policy.name for s in b.snapshots()] == ["alpha"]


def test_three_policies_all_point_at_the_oldest() -> None:
    oldest, middle, newest = entry("c", "2026-01-01T00:00:00Z"), entry("b", NEW), entry("a", "2026-03-01T00:00:00Z")
    book(newest, middle, oldest)
    assert (oldest.conflict_with, middle.conflict_with, newest.conflict_with) == (None, "c", "c")


def test_registry_hosts_compare_case_insensitively() -> None:
    older, younger = entry("one", OLD), entry("two", NEW, registry="Contoso.AzureCR.io")
    book(older, younger)
    assert younger.conflict_with == "one"


def test_different_registries_or_ports_do_not_conflict() -> None:
    contoso, fabrikam = entry("contoso", OLD), entry("fabrikam", NEW, registry="fabrikam.azurecr.io")
    ported = PolicyEntry(
        name="ported",
        uid="uid-ported",
        created=NEW,
        generation=1,
        policy=from_spec(
            "ported",
            {"registry": "contoso.azurecr.io:5000", "replicas": [{"region": "eastus", "endpoint": "east.local:5000"}]},
        ),
    )
    b = book(contoso, fabrikam, ported)
    assert [e.conflict_with for e in (contoso, fabrikam, ported)] == [None, None, None]
    assert [s.policy.name for s in b.snapshots()] == ["contoso", "fabrikam", "ported"]


def test_removing_the_winner_hands_the_registry_to_the_younger() -> None:
    older, younger = entry("older", OLD), entry("younger", NEW)
    b = book(older, younger)
    assert b.snapshot(younger) is None
    b.remove("older")
    assert younger.conflict_with is None
    assert b.snapshot(younger) is not None
    b.remove("not-there")  # unknown names are ignored
    assert list(b.entries) == ["younger"]


def test_moving_the_winner_to_another_registry_resolves_the_conflict() -> None:
    older, younger = entry("older", OLD), entry("younger", NEW)
    b = book(older, younger)
    b.upsert(entry("older", OLD, registry="fabrikam.azurecr.io"))
    assert younger.conflict_with is None
    assert [s.policy.registry for s in b.snapshots()] == ["fabrikam.azurecr.io", "contoso.azurecr.io"]


def test_an_invalid_policy_owns_no_registry() -> None:
    invalid = PolicyEntry(
        name="broken", uid="u", created=OLD, generation=2, policy=None, error="spec.registry: required"
    )
    valid = entry("valid", NEW)
    b = book(invalid, valid)
    assert b.snapshot(invalid) is None
    assert invalid.conflict_with is None
    assert valid.conflict_with is None
    assert [s.policy.name for s in b.snapshots()] == ["valid"]


# --------------------------------------------------------------------------- cluster region


@pytest.mark.parametrize(
    ("nodes", "region"),
    [
        (["westus", "eastus", "westus"], "westus"),
        (["westus", "eastus"], "eastus"),  # tie: alphabetically first
        (["westus", "westus", "eastus", "eastus", "centralus"], "eastus"),
        (["westus", None, None, None], "westus"),  # unlabelled nodes do not vote
        (["", "westus"], "westus"),
        ([None, None], None),
        ([], None),
    ],
)
def test_cluster_region_of(nodes: list[str | None], region: str | None) -> None:
    assert cluster_region_of(nodes) == region


def test_auto_region_comes_from_the_nodes() -> None:
    b = book(nodes=["westus", "eastus", "westus"])
    assert b.cluster_region(policy("p")) == "westus"
    assert book(nodes=["westus", "eastus"]).cluster_region(policy("p")) == "eastus"
    assert book().cluster_region(policy("p")) is None


def test_explicit_region_wins_over_the_nodes() -> None:
    b = book(nodes=["westus", "westus"])
    assert b.cluster_region(policy("p", region="eastus")) == "eastus"


def test_the_cluster_region_follows_node_events_and_only_a_change_of_what_is_kept_counts() -> None:
    nodes = regions(["eastus", "westus", "westus"])
    b = PolicyBook(EveryListedReplica(), lambda: nodes.region)
    assert b.cluster_region(policy("p")) == "westus"
    assert not nodes.upsert("node-1", "10", NodeInfo("node-1", "westus"))  # a heartbeat
    assert nodes.upsert("node-1", "11", NodeInfo("node-1", "eastus"))
    assert b.cluster_region(policy("p")) == "eastus"
    assert not nodes.upsert("node-1", "9", NodeInfo("node-1", "westus"))  # an older version
    assert nodes.discard("node-0", "12")  # eastus and westus tie: still the alphabetically first
    assert b.cluster_region(policy("p")) == "eastus"
    assert nodes.discard("node-1", "13")
    assert b.cluster_region(policy("p")) == "westus"
    assert not nodes.discard("node-1", "14")  # already gone
    assert nodes.upsert("node-2", "15", NodeInfo("node-2", "westus", schedulable=False))  # a cordon is kept
    assert b.cluster_region(policy("p")) == "westus"


# --------------------------------------------------------------------------- snapshots


def test_snapshot_assumes_every_listed_replica_healthy() -> None:
    e = entry("p")
    b = PolicyBook(EveryListedReplica(), lambda: "westus", DEFAULT_EXCLUDED_NAMESPACES | {"geopin"})
    b.upsert(e)
    snap = b.snapshot(e)
    assert snap is not None
    assert snap.usable == frozenset({"eastus", "westus"})
    assert snap.cluster_region == "westus"
    assert snap.excluded_namespaces == frozenset({"kube-system", "geopin"})
    assert not snap.deleting
    assert snap.home().region == "westus"


def test_snapshot_carries_deletion() -> None:
    e = entry("p")
    e.deleting = True
    snap = book(e).snapshot(e)
    assert snap is not None
    assert snap.deleting


def test_snapshots_are_sorted_by_name() -> None:
    b = book(entry("zulu", registry="zulu1.azurecr.io"), entry("alpha", registry="alpha.azurecr.io"))
    assert [s.policy.name for s in b.snapshots()] == ["alpha", "zulu"]


# --------------------------------------------------------------------------- records_policy


def view(record: dict[str, str] | None = None, raw: str | None = None) -> WorkloadView:
    annotations = {} if record is None else {ANNOTATION_ORIGINAL_IMAGES: encode_record(record)}
    if raw is not None:
        annotations = {ANNOTATION_ORIGINAL_IMAGES: raw}
    return view_of(
        KINDS["Deployment"],
        {"metadata": {"name": "w", "namespace": "default", "annotations": annotations}, "spec": {}},
    )


def test_records_policy() -> None:
    contoso, fabrikam = policy("c"), policy("f", "fabrikam.azurecr.io")
    pinned = view({"containers/web": "contoso.azurecr.io/web:1"})
    assert records_policy(pinned, contoso)
    assert not records_policy(pinned, fabrikam)
    assert records_policy(view({"containers/web": "CONTOSO.azurecr.io/web:1"}), contoso)
    assert not records_policy(view({"containers/web": "nginx"}), contoso)
    assert not records_policy(view(), contoso)
    assert not records_policy(view(raw="{not json"), contoso)
