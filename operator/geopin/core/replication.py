"""What the leader knows of replication, published in the policy's status for the standbys.

Only the leader looks manifests up (io/images.py). A standby answers admission reviews too, and must not
redirect a Pod to a replica its image has not reached. So the leader publishes the answers "absent"
(``status.replicationGaps``), and a standby reads them back as its availability: an image is present
at a replica unless the leader found it missing there (admission never waits on a registry anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["MAX_GAPS", "published_availability", "replication_gaps"]

# A bound on the status's size; the leader lists its most recent answers first.
MAX_GAPS = 50


def replication_gaps(absent: Iterable[tuple[str, Iterable[str]]], limit: int = MAX_GAPS) -> list[dict[str, Any]]:
    """``status.replicationGaps`` from (image, regions missing it), most recent first, at most ``limit``."""
    gaps = []
    for image, regions in absent:
        listed = sorted(set(regions))
        if listed:
            gaps.append({"image": image, "regions": listed})
        if len(gaps) == limit:
            break
    return gaps


def published_availability(status: Mapping[str, Any]) -> Callable[[str, str], bool] | None:
    """The standby's availability from the leader's ``status.replicationGaps``; None when none is published."""
    gaps = status.get("replicationGaps")
    if not isinstance(gaps, list):
        return None
    absent = frozenset(
        (gap["image"], region)
        for gap in gaps
        if isinstance(gap, dict) and isinstance(gap.get("image"), str) and isinstance(gap.get("regions"), list)
        for region in gap["regions"]
        if isinstance(region, str)
    )
    return lambda image, region: (image, region) not in absent
