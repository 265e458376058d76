"""Choosing the target region: preference order, fallback, never an unhealthy replica."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.core.health import Target, choose, preference_order
from geopin.core.policy import Fallback, Policy, from_spec

REGIONS = ["eastus", "westus", "centralus"]


def policy(fallback: str = "Global") -> Policy:
    return from_spec(
        "contoso",
        {"registry": "contoso.azurecr.io", "replicas": [{"region": r} for r in REGIONS], "fallback": fallback},
    )


GLOBAL = Target("global", "contoso.azurecr.io")


def target(region: str) -> Target:
    return Target(region, f"contoso.{region}.geo.azurecr.io")


@pytest.mark.parametrize(
    ("cluster", "preferred", "order"),
    [
        (None, None, ["eastus", "westus", "centralus"]),
        ("eastus", None, ["eastus", "westus", "centralus"]),
        ("westus", None, ["westus", "eastus", "centralus"]),
        ("centralus", None, ["centralus", "eastus", "westus"]),
        ("northeurope", None, ["eastus", "westus", "centralus"]),  # unlisted home region: list order
        ("westus", "centralus", ["centralus", "westus", "eastus"]),
        ("westus", "westus", ["westus", "eastus", "centralus"]),
        ("westus", "northeurope", ["westus", "eastus", "centralus"]),  # unlisted preference is ignored
        (None, "centralus", ["centralus", "eastus", "westus"]),
        ("northeurope", "westus", ["westus", "eastus", "centralus"]),
        ("westus", "global", ["westus", "eastus", "centralus"]),
        ("auto", None, ["eastus", "westus", "centralus"]),
    ],
)
def test_preference_order(cluster: str | None, preferred: str | None, order: list[str]) -> None:
    assert preference_order(policy(), cluster, preferred) == order


def test_all_healthy_picks_home() -> None:
    assert choose(policy(), "westus", REGIONS) == target("westus")


def test_workload_preference_beats_home() -> None:
    assert choose(policy(), "westus", REGIONS, preferred="centralus") == target("centralus")


def test_unhealthy_preference_falls_to_home() -> None:
    assert choose(policy(), "westus", {"westus", "eastus"}, preferred="centralus") == target("westus")


def test_unhealthy_home_falls_to_list_order() -> None:
    assert choose(policy(), "eastus", {"westus", "centralus"}) == target("westus")
    assert choose(policy(), "westus", {"centralus", "eastus"}) == target("eastus")


def test_unlisted_home_uses_list_order() -> None:
    assert choose(policy(), "northeurope", REGIONS) == target("eastus")
    assert choose(policy(), "northeurope", {"centralus"}) == target("centralus")


def test_healthy_regions_outside_the_policy_are_ignored() -> None:
    assert choose(policy(), "northeurope", {"northeurope", "global"}) == GLOBAL


def test_target_endpoint_is_the_replica_endpoint() -> None:
    p = from_spec(
        "p",
        {
            "registry": "localhost:5000",
            "replicas": [{"region": "a", "endpoint": "localhost:5001"}, {"region": "b", "endpoint": "localhost:5002"}],
        },
    )
    assert choose(p, "b", {"a", "b"}) == Target("b", "localhost:5002")
    assert choose(p, "b", set()) == Target("global", "localhost:5000")


def test_none_healthy_global_fallback() -> None:
    chosen = choose(policy(), "eastus", set(), current="westus")
    assert chosen == GLOBAL
    assert chosen.is_global
    assert not target("eastus").is_global


def test_none_healthy_stay_keeps_current_pin() -> None:
    p = policy("Stay")
    assert p.fallback is Fallback.STAY
    assert choose(p, "eastus", set(), current="westus") == target("westus")
    assert choose(p, "eastus", [], current="global") == GLOBAL


@pytest.mark.parametrize("current", [None, "northeurope", ""])
def test_stay_without_a_known_pin_goes_global(current: str | None) -> None:
    assert choose(policy("Stay"), "eastus", set(), current=current) == GLOBAL


def test_stay_only_applies_when_nothing_is_healthy() -> None:
    assert choose(policy("Stay"), "eastus", {"centralus"}, current="westus") == target("centralus")


def test_no_replicas_means_global() -> None:
    p = from_spec(
        "p",
        {
            "registry": "contoso.azurecr.io",
            "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg"},
        },
    )
    assert preference_order(p, "eastus") == []
    assert choose(p, "eastus", {"eastus"}) == GLOBAL


_MAYBE_REGION = st.none() | st.sampled_from([*REGIONS, "northeurope", "global"])


@given(
    healthy=st.sets(st.sampled_from([*REGIONS, "northeurope", "global"])),
    cluster=_MAYBE_REGION,
    preferred=_MAYBE_REGION,
    current=_MAYBE_REGION,
    fallback=st.sampled_from(["Global", "Stay"]),
)
def test_never_picks_an_unhealthy_replica(
    healthy: set[str], cluster: str | None, preferred: str | None, current: str | None, fallback: str
) -> None:
    p = policy(fallback)
    chosen = choose(p, cluster, healthy, preferred=preferred, current=current)
    order = preference_order(p, cluster, preferred)
    assert sorted(order) == sorted(REGIONS)  # every replica exactly once
    assert chosen.endpoint == p.endpoints[chosen.region]
    listed_healthy = [r for r in order if r in healthy]
    if listed_healthy:
        # The most preferred healthy replica, whatever the fallback.
        assert chosen.region == listed_healthy[0]
        assert chosen.region in healthy
    elif fallback == "Stay" and current is not None and current in p.endpoints:
        assert chosen.region == current
    else:
        assert chosen == GLOBAL
    if fallback == "Global":
        assert chosen.region in healthy or chosen.is_global
