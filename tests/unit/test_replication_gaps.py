"""A standby's admission knows what the leader knows of replication (core/replication.py, the book).

The soak found it: with two geopin replicas, a Pod admitted by the standby (which looks nothing up) was
redirected to a replica its new tag had not reached, because an unknown manifest counts as present at
admission. The leader now publishes its "absent" answers in the status, and the standby reads them.
"""

from __future__ import annotations

import json
from typing import Any

from geopin.control.book import PolicyBook, PolicyEntry
from geopin.core.policy import from_spec
from geopin.core.redirect import move_pod
from geopin.core.replication import MAX_GAPS, published_availability, replication_gaps
from geopin.core.workloads import KINDS, view_of
from geopin.io.images import ImageCache

REGISTRY = "contoso.azurecr.io"
NEW = f"{REGISTRY}/shop/web:3"
REGIONS = ("eastus", "westus", "centralus")


def test_gaps_are_bounded_most_recent_first_and_read_back() -> None:
    absent = [(f"{REGISTRY}/app:{i}", ["westus", "eastus", "westus"]) for i in range(MAX_GAPS + 5)]
    gaps = replication_gaps(absent)
    assert len(gaps) == MAX_GAPS
    assert gaps[0] == {"image": f"{REGISTRY}/app:0", "regions": ["eastus", "westus"]}
    available = published_availability({"replicationGaps": gaps})
    assert available is not None
    assert available(f"{REGISTRY}/app:0", "westus") is False
    assert available(f"{REGISTRY}/app:0", "centralus") is True
    assert available(f"{REGISTRY}/app:{MAX_GAPS + 1}", "westus") is True  # beyond the bound: unknown is present


def test_nothing_published_or_malformed_gaps_say_nothing_of_what_they_cannot_read() -> None:
    assert published_availability({}) is None
    available = published_availability({"replicationGaps": [{"image": 7}, "x", {"image": NEW, "regions": "eastus"}]})
    assert available is not None
    assert available(NEW, "eastus") is True


class StandbyHealth:
    """As a standby's Monitors answers the book: the leader's published verdict, no lookups of its own."""

    def usable(self, entry: PolicyEntry) -> frozenset[str] | None:
        return frozenset(entry.observed_status["usableRegions"])

    def held(self, entry: PolicyEntry) -> frozenset[str]:
        return frozenset()

    def images(self, name: str) -> ImageCache | None:
        return None

    def effective(self, name: str, policy: Any) -> Any:
        return policy


def test_a_standby_never_redirects_a_pod_to_a_replica_the_leader_found_its_image_missing_at() -> None:
    spec = {
        "registry": REGISTRY,
        "region": "eastus",
        "replicas": [{"region": r} for r in REGIONS],
        "failover": {"strategy": "Redirect"},
    }
    status = {"usableRegions": ["westus", "centralus"], "replicationGaps": [{"image": NEW, "regions": ["westus"]}]}
    entry = PolicyEntry(
        "contoso", "uid-1", "2026-12-01T00:00:00Z", 1, from_spec("contoso", spec), observed_status=status
    )
    book = PolicyBook(StandbyHealth(), lambda: "eastus")
    book.no_redirect_path = None
    book.upsert(entry)
    snapshot = book.snapshot(entry)
    assert snapshot is not None
    record = json.dumps({"containers/app": NEW})
    owner = view_of(
        KINDS["Deployment"],
        {
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "annotations": {"geopin.io/original-images": record, "geopin.io/pinned-region": "eastus"},
            },
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "app", "image": "contoso.eastus.geo.azurecr.io/shop/web:3"}]}
                }
            },
        },
    )
    pod = {
        "metadata": {
            "name": "web-7d4b9-x2k",
            "namespace": "shop",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9", "controller": True}],
        },
        "spec": {"containers": [{"name": "app", "image": "contoso.eastus.geo.azurecr.io/shop/web:3"}]},
    }
    move = move_pod(pod, "shop", owner, [snapshot], None, admission=True)
    assert move is not None
    # westus is first in preference, but the leader found shop/web:3 missing there; before, it went there.
    assert move.to_region == "centralus"
