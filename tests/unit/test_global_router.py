"""The emulated global endpoint's routing rule (tests/harness/globalrouter.Router), on a fake clock."""

from __future__ import annotations

from tests.harness.globalrouter import Replica, Router

DELAY = 30.0


def router() -> Router:
    regions = ("eastus", "westus", "centralus")
    return Router([Replica(region, f"127.0.0.{n}", 443, since=0.0) for n, region in enumerate(regions, 2)], DELAY)


def test_starts_on_the_home_replica() -> None:
    assert router().route == "eastus"


def test_keeps_routing_to_a_dead_replica_until_the_delay_has_passed() -> None:
    r = router()
    assert r.observe("eastus", False, now=100.0)
    assert not r.decide(now=100.0)
    assert not r.decide(now=100.0 + DELAY - 0.1)
    assert r.route == "eastus"
    assert r.decide(now=100.0 + DELAY)
    assert (r.route, r.switches) == ("westus", 1)


def test_fails_over_to_the_first_healthy_replica_in_order() -> None:
    r = router()
    r.observe("eastus", False, now=100.0)
    r.observe("westus", False, now=100.0)
    assert r.decide(now=100.0 + DELAY)
    assert r.route == "centralus"


def test_a_recovery_before_the_delay_cancels_the_failover() -> None:
    r = router()
    r.observe("eastus", False, now=100.0)
    assert r.observe("eastus", True, now=110.0)
    assert not r.decide(now=200.0)
    assert (r.route, r.switches) == ("eastus", 0)


def test_stays_when_no_replica_is_healthy() -> None:
    r = router()
    for region in ("eastus", "westus", "centralus"):
        r.observe(region, False, now=100.0)
    assert not r.decide(now=1000.0)
    assert r.route == "eastus"


def test_fails_back_only_once_the_home_replica_has_been_healthy_for_the_delay() -> None:
    r = router()
    r.observe("eastus", False, now=100.0)
    r.decide(now=100.0 + DELAY)
    assert r.route == "westus"
    r.observe("eastus", True, now=200.0)
    assert not r.decide(now=200.0 + DELAY - 0.1)
    assert r.decide(now=200.0 + DELAY)
    assert (r.route, r.switches) == ("eastus", 2)
    assert r.document()["healthy"] == {"eastus": True, "westus": True, "centralus": True}


def test_unchanged_health_is_not_a_change() -> None:
    r = router()
    assert not r.observe("westus", True, now=5.0)
    assert r.replica("westus").since == 0.0
