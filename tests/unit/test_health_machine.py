"""The replica health state machine (HealthTracker) and decide()'s replication/digest handling.

Pure: the clock is a number the tests advance; no probes, no sleeps. choose()/preference_order() on
their own are covered in test_health.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.core.decisions import Choice, PolicySnapshot, decide
from geopin.core.health import (
    QUICK_REPROBE_SECONDS,
    HealthTracker,
    ReplicaState,
    Target,
    Transition,
    choose,
    preference_order,
)
from geopin.core.policy import Fallback, Policy, ProbeSettings, Replica, from_spec
from geopin.core.workloads import (
    ANNOTATION_ORIGINAL_IMAGES,
    ANNOTATION_PINNED_REGION,
    ANNOTATION_REGION,
    KINDS,
    WorkloadView,
    view_of,
)
from geopin.io.probes import Outcome

REGIONS = ("eastus", "westus", "centralus")
HOME = "eastus"
OK = str(Outcome.OK)
THROTTLED = str(Outcome.THROTTLED)
FAILURES = tuple(str(o) for o in Outcome if o not in (Outcome.OK, Outcome.THROTTLED))
FAIL = str(Outcome.TIMEOUT)

HEALTHY = ReplicaState.HEALTHY
UNHEALTHY = ReplicaState.UNHEALTHY
UNKNOWN = ReplicaState.UNKNOWN
EXCLUDED = ReplicaState.EXCLUDED


def endpoint(region: str, registry: str = "contoso") -> str:
    return f"{registry}.{region}.geo.azurecr.io"


def replicas(regions: Sequence[str] = REGIONS) -> list[Replica]:
    return [Replica(r, endpoint(r)) for r in regions]


def tracker(regions: Sequence[str] = REGIONS, **probe: Any) -> HealthTracker:
    return HealthTracker(ProbeSettings(**probe), replicas(regions))


def feed(t: HealthTracker, region: str, outcome: str, times: int, now: float) -> list[Transition]:
    """``times`` probes of one outcome at ``now``; the transitions they caused."""
    transitions = [t.observe(region, outcome, now) for _ in range(times)]
    return [x for x in transitions if x is not None]


def make_unhealthy(t: HealthTracker, region: str, now: float) -> None:
    feed(t, region, FAIL, t.settings.failure_threshold, now)
    assert t.replicas[region].state is UNHEALTHY


def make_healthy_at_startup(t: HealthTracker, now: float = 0.0) -> None:
    for region in t.replicas:
        t.observe(region, OK, now)
    assert all(h.state is HEALTHY for h in t.replicas.values())


def make_recovered(t: HealthTracker, region: str, now: float) -> None:
    """Healthy → Unhealthy → Healthy again (a recovery), all at ``now``."""
    make_unhealthy(t, region, now)
    feed(t, region, OK, t.settings.success_threshold, now)
    assert t.replicas[region].state is HEALTHY


def geo_policy(fallback: str = "Global", **extra: Any) -> Policy:
    spec: dict[str, Any] = {
        "registry": "contoso.azurecr.io",
        "replicas": [{"region": r} for r in REGIONS],
        "fallback": fallback,
        **extra,
    }
    return from_spec("contoso", spec)


thresholds = st.integers(min_value=1, max_value=6)


# -- 1. thresholds -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(failure_threshold=thresholds, outcome=st.sampled_from(FAILURES))
def test_failure_threshold_consecutive_failures_make_unhealthy(failure_threshold: int, outcome: str) -> None:
    t = tracker(failure_threshold=failure_threshold)
    t.observe(HOME, OK, 0.0)
    for n in range(1, failure_threshold):
        assert t.observe(HOME, outcome, float(n)) is None
        assert t.replicas[HOME].state is HEALTHY, f"unhealthy after {n} < {failure_threshold} failures"
        assert t.replicas[HOME].consecutive_failures == n
    transition = t.observe(HOME, outcome, 100.0)
    assert transition == Transition(HOME, HEALTHY, UNHEALTHY, outcome)
    health = t.replicas[HOME]
    assert health.state is UNHEALTHY
    assert health.last_transition_time == 100.0
    # More failures: no further transition.
    assert t.observe(HOME, outcome, 101.0) is None
    assert health.state is UNHEALTHY
    assert health.consecutive_failures == failure_threshold + 1


@settings(max_examples=40, deadline=None)
@given(success_threshold=thresholds, failure_threshold=thresholds)
def test_success_threshold_consecutive_successes_make_healthy(success_threshold: int, failure_threshold: int) -> None:
    t = tracker(success_threshold=success_threshold, failure_threshold=failure_threshold)
    t.observe(HOME, OK, 0.0)
    make_unhealthy(t, HOME, 1.0)
    for n in range(1, success_threshold):
        assert t.observe(HOME, OK, 1.0 + n) is None
        assert t.replicas[HOME].state is UNHEALTHY, f"healthy after {n} < {success_threshold} successes"
        assert t.replicas[HOME].consecutive_successes == n
    transition = t.observe(HOME, OK, 50.0, message="200 OK")
    assert transition == Transition(HOME, UNHEALTHY, HEALTHY, "200 OK")
    assert t.replicas[HOME].state is HEALTHY
    assert t.replicas[HOME].last_transition_time == 50.0


@pytest.mark.parametrize("success_threshold", [1, 2, 5])
def test_unknown_is_healthy_after_one_success(success_threshold: int) -> None:
    t = tracker(success_threshold=success_threshold)
    assert t.replicas[HOME].state is UNKNOWN
    assert t.replicas[HOME].message == "not probed yet"
    assert t.observe(HOME, OK, 3.0) == Transition(HOME, UNKNOWN, HEALTHY, OK)
    assert t.replicas[HOME].state is HEALTHY
    assert t.replicas[HOME].last_probe_time == 3.0


@settings(max_examples=30, deadline=None)
@given(failure_threshold=thresholds)
def test_unknown_is_unhealthy_after_failure_threshold_failures(failure_threshold: int) -> None:
    t = tracker(failure_threshold=failure_threshold)
    for n in range(1, failure_threshold):
        assert t.observe(HOME, FAIL, float(n)) is None
        assert t.replicas[HOME].state is UNKNOWN
    assert t.observe(HOME, FAIL, 10.0) == Transition(HOME, UNKNOWN, UNHEALTHY, FAIL)


def test_a_success_resets_the_failure_count() -> None:
    t = tracker(failure_threshold=3)
    t.observe(HOME, OK, 0.0)
    for round_ in range(5):
        feed(t, HOME, FAIL, 2, float(round_))
        assert t.replicas[HOME].consecutive_failures == 2
        t.observe(HOME, OK, float(round_))
        assert t.replicas[HOME].consecutive_failures == 0
    assert t.replicas[HOME].state is HEALTHY  # 10 failures, never 3 in a row


def test_a_failure_resets_the_success_count_while_recovering() -> None:
    t = tracker(failure_threshold=1, success_threshold=3)
    make_unhealthy(t, HOME, 0.0)
    for _ in range(5):
        feed(t, HOME, OK, 2, 1.0)
        assert t.replicas[HOME].consecutive_successes == 2
        t.observe(HOME, FAIL, 1.0)
        assert t.replicas[HOME].consecutive_successes == 0
    assert t.replicas[HOME].state is UNHEALTHY  # 10 successes, never 3 in a row


def test_unknown_failures_below_threshold_then_success_is_healthy() -> None:
    t = tracker(failure_threshold=3)
    feed(t, HOME, FAIL, 2, 0.0)
    assert t.replicas[HOME].state is UNKNOWN
    assert t.observe(HOME, OK, 1.0) == Transition(HOME, UNKNOWN, HEALTHY, OK)
    assert t.replicas[HOME].consecutive_failures == 0


def _expected_states(
    events: Sequence[tuple[int, bool | None]], failure_threshold: int, success_threshold: int
) -> tuple[dict[str, ReplicaState], dict[str, int], dict[str, int]]:
    """A reference model from the documented rules: (state, trailing failure run, trailing success run).

    ``up`` None is a 429 that is not a failure: it gives an Unknown replica its first verdict and
    otherwise counts neither way (reported, not counted).
    """
    state = dict.fromkeys(REGIONS, UNKNOWN)
    fails = dict.fromkeys(REGIONS, 0)
    oks = dict.fromkeys(REGIONS, 0)
    for index, up in events:
        region = REGIONS[index]
        if up is None:
            if state[region] is UNKNOWN:
                state[region] = HEALTHY
        elif up:
            oks[region], fails[region] = oks[region] + 1, 0
            if state[region] is UNKNOWN or (state[region] is UNHEALTHY and oks[region] >= success_threshold):
                state[region] = HEALTHY
        else:
            fails[region], oks[region] = fails[region] + 1, 0
            if fails[region] >= failure_threshold:
                state[region] = UNHEALTHY
    return state, fails, oks


@settings(max_examples=150, deadline=None)
@given(
    failure_threshold=thresholds,
    success_threshold=thresholds,
    throttling_is_failure=st.booleans(),
    events=st.lists(
        st.tuples(st.integers(0, len(REGIONS) - 1), st.sampled_from([OK, THROTTLED, *FAILURES])), max_size=60
    ),
)
def test_interleaved_results_follow_the_documented_thresholds(
    failure_threshold: int, success_threshold: int, throttling_is_failure: bool, events: list[tuple[int, str]]
) -> None:
    t = tracker(
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        throttling_is_failure=throttling_is_failure,
    )
    for now, (index, outcome) in enumerate(events):
        t.observe(REGIONS[index], outcome, float(now))
    ups: list[tuple[int, bool | None]] = [
        (i, None if o == THROTTLED and not throttling_is_failure else o == OK) for i, o in events
    ]
    state, fails, oks = _expected_states(ups, failure_threshold, success_threshold)
    for region in REGIONS:
        health = t.replicas[region]
        assert health.state is state[region], region
        assert health.consecutive_failures == fails[region], region
        assert health.consecutive_successes == oks[region], region
    # 4. decided: a verdict for every replica.
    assert t.decided == all(s is not UNKNOWN for s in state.values())


def test_observing_an_unknown_region_is_ignored() -> None:
    t = tracker()
    assert t.observe("northeurope", FAIL, 0.0) is None
    assert "northeurope" not in t.replicas
    assert all(h.last_probe_time is None for h in t.replicas.values())


def test_observe_records_the_probe() -> None:
    t = tracker()
    t.observe(HOME, FAIL, 12.5, latency_seconds=2.0, message="connect timeout after 2s")
    health = t.replicas[HOME]
    assert (health.last_probe_time, health.latency_seconds) == (12.5, 2.0)
    assert (health.last_outcome, health.message) == (FAIL, "connect timeout after 2s")
    t.observe(HOME, OK, 13.0)
    assert health.message == OK  # no message: the outcome


# -- 2. throttling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure_threshold", [1, 3])
def test_throttling_is_not_a_failure_by_default(failure_threshold: int) -> None:
    t = tracker(failure_threshold=failure_threshold)
    assert not t.is_failure(THROTTLED)
    t.observe(HOME, OK, 0.0)
    assert feed(t, HOME, THROTTLED, 10 * failure_threshold, 1.0) == []
    health = t.replicas[HOME]
    assert health.state is HEALTHY
    assert health.consecutive_failures == 0
    assert health.last_outcome == THROTTLED  # reported, though
    assert HOME in t.usable(1.0)


def test_throttling_is_reported_not_counted_by_default() -> None:
    t = tracker(failure_threshold=3, success_threshold=2)
    # A first 429 is a verdict: the replica answers.
    assert t.observe(HOME, THROTTLED, 0.0) == Transition(HOME, UNKNOWN, HEALTHY, THROTTLED)
    feed(t, HOME, FAIL, 2, 1.0)
    t.observe(HOME, THROTTLED, 1.0)  # does not interrupt the run of failures ...
    assert t.replicas[HOME].consecutive_failures == 2
    assert t.observe(HOME, FAIL, 1.0) == Transition(HOME, HEALTHY, UNHEALTHY, FAIL)
    assert feed(t, HOME, THROTTLED, 5, 3.0) == []  # ... nor counts towards a recovery
    assert t.replicas[HOME].state is UNHEALTHY
    assert feed(t, HOME, OK, 2, 4.0) == [Transition(HOME, UNHEALTHY, HEALTHY, OK)]


@pytest.mark.parametrize("start", ["unknown", "healthy"])
def test_connection_failures_alternating_with_429s_make_a_replica_unhealthy(start: str) -> None:
    t = tracker(failure_threshold=3)
    if start == "healthy":
        t.observe(HOME, OK, 0.0)
    transitions: list[Transition] = []
    for now in range(3):
        transitions += feed(t, HOME, str(Outcome.CONNECT), 1, float(now))
        transitions += feed(t, HOME, THROTTLED, 1, float(now))
    assert t.replicas[HOME].state is UNHEALTHY
    assert transitions[-1].current is UNHEALTHY
    assert HOME not in t.usable(10.0)


@pytest.mark.parametrize("failure_threshold", [1, 3])
def test_throttling_is_a_failure_when_configured(failure_threshold: int) -> None:
    t = tracker(failure_threshold=failure_threshold, throttling_is_failure=True)
    assert t.is_failure(THROTTLED)
    t.observe(HOME, OK, 0.0)
    feed(t, HOME, THROTTLED, failure_threshold - 1, 1.0)
    assert t.replicas[HOME].state is HEALTHY
    assert t.replicas[HOME].consecutive_failures == failure_threshold - 1
    assert t.observe(HOME, THROTTLED, 2.0) == Transition(HOME, HEALTHY, UNHEALTHY, THROTTLED)
    assert HOME not in t.usable(2.0)


def test_throttling_as_failure_keeps_an_unknown_replica_from_being_trusted() -> None:
    t = tracker(failure_threshold=2, throttling_is_failure=True)
    t.observe(HOME, THROTTLED, 0.0)
    assert t.replicas[HOME].state is UNKNOWN
    assert not t.decided
    t.observe(HOME, THROTTLED, 1.0)
    assert t.replicas[HOME].state is UNHEALTHY


@pytest.mark.parametrize("throttling_is_failure", [False, True])
def test_other_outcomes_are_failures_whatever_the_throttling_setting(throttling_is_failure: bool) -> None:
    t = tracker(throttling_is_failure=throttling_is_failure)
    assert not t.is_failure(OK)
    assert all(t.is_failure(o) for o in FAILURES)
    assert t.is_failure("something-new")  # an unrecognised outcome is not "up"


# -- 3. failback -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    delay=st.integers(min_value=1, max_value=86400),
    success_threshold=thresholds,
    recovered_at=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_a_recovered_replica_is_usable_only_after_the_failback_delay(
    delay: int, success_threshold: int, recovered_at: float
) -> None:
    t = tracker(failback_delay_seconds=delay, success_threshold=success_threshold)
    make_healthy_at_startup(t, recovered_at)
    make_unhealthy(t, HOME, recovered_at)
    assert HOME not in t.usable(recovered_at)
    feed(t, HOME, OK, success_threshold, recovered_at)
    assert t.replicas[HOME].state is HEALTHY
    assert t.replicas[HOME].reported_state is HEALTHY
    assert HOME not in t.usable(recovered_at)
    assert HOME not in t.usable(recovered_at + delay * 0.999)
    assert HOME in t.usable(recovered_at + delay)
    assert HOME in t.usable(recovered_at + delay + 1)
    # The others were never affected.
    assert {"westus", "centralus"} <= t.usable(recovered_at)


def test_zero_failback_delay_is_immediate() -> None:
    t = tracker(failback_delay_seconds=0)
    make_healthy_at_startup(t)
    make_recovered(t, HOME, 10.0)
    assert HOME in t.usable(10.0)


@pytest.mark.parametrize("now", [0.0, 5.0, 12345.5])
def test_at_startup_a_healthy_replica_is_usable_at_once(now: float) -> None:
    t = tracker(failback_delay_seconds=300)
    assert t.usable(now) == frozenset()
    t.observe(HOME, OK, now)
    assert t.usable(now) == {HOME}


def test_a_new_failure_during_the_delay_restarts_it_only_once_unhealthy() -> None:
    t = tracker(failback_delay_seconds=100, failure_threshold=2, success_threshold=2)
    make_healthy_at_startup(t)
    make_recovered(t, HOME, 10.0)
    # One failure (suspect, still Healthy) does not move the eligibility time ...
    t.observe(HOME, FAIL, 50.0)
    t.observe(HOME, OK, 51.0)
    assert HOME not in t.usable(109.0)
    assert HOME in t.usable(110.0)
    # ... going Unhealthy again and recovering restarts the delay from the new recovery.
    make_recovered(t, HOME, 120.0)
    assert HOME not in t.usable(219.0)
    assert HOME in t.usable(220.0)


def test_exclusion_removes_a_replica_at_once_and_unexclusion_waits_the_delay() -> None:
    t = tracker(failback_delay_seconds=300)
    make_healthy_at_startup(t)
    assert HOME in t.usable(10.0)
    transition = t.set_excluded(HOME, True, 10.0)
    assert transition == Transition(HOME, HEALTHY, EXCLUDED, "excluded from global routing in ARM")
    health = t.replicas[HOME]
    assert health.state is HEALTHY  # probes still judge it
    assert health.reported_state is EXCLUDED
    assert HOME not in t.usable(10.0)
    assert [r for r, h in t.replicas.items() if h.reported_state is HEALTHY] == ["westus", "centralus"]
    # Exclusion is not lifted by healthy probes.
    feed(t, HOME, OK, 5, 20.0)
    assert HOME not in t.usable(1000.0)
    assert t.set_excluded(HOME, False, 1000.0) == Transition(HOME, EXCLUDED, HEALTHY, "")
    assert health.reported_state is HEALTHY
    assert HOME not in t.usable(1000.0)
    assert HOME not in t.usable(1299.0)
    assert HOME in t.usable(1300.0)
    assert all(h.reported_state is HEALTHY for h in t.replicas.values())


def test_unexclusion_never_shortens_a_pending_failback_delay() -> None:
    t = tracker(failback_delay_seconds=300)
    make_healthy_at_startup(t)
    make_recovered(t, HOME, 100.0)  # usable from 400
    t.set_excluded(HOME, True, 150.0)
    t.set_excluded(HOME, False, 160.0)
    assert HOME not in t.usable(400.0)
    assert HOME not in t.usable(459.0)
    assert HOME in t.usable(460.0)


def test_set_excluded_is_idempotent() -> None:
    t = tracker(failback_delay_seconds=300)
    make_healthy_at_startup(t)
    assert t.set_excluded(HOME, False, 50.0) is None  # not excluded: nothing changes, no delay
    assert HOME in t.usable(50.0)
    assert t.set_excluded(HOME, True, 60.0) is not None
    assert t.set_excluded(HOME, True, 70.0) is None
    assert t.replicas[HOME].last_transition_time == 60.0
    assert t.set_excluded("northeurope", True, 70.0) is None


@pytest.mark.parametrize("outcome", [FAIL, OK])
def test_probing_an_excluded_replica_reports_no_transition(outcome: str) -> None:
    """Its reported state stays Excluded: failing or recovering underneath posts no Event."""
    t = tracker(failure_threshold=1, success_threshold=1)
    make_healthy_at_startup(t)
    if outcome == OK:
        t.observe(HOME, FAIL, 0.5)
    t.set_excluded(HOME, True, 1.0)
    assert feed(t, HOME, outcome, 3, 2.0) == []
    assert t.replicas[HOME].reported_state is EXCLUDED
    assert t.replicas[HOME].state is (UNHEALTHY if outcome == FAIL else HEALTHY)
    assert t.replicas[HOME].last_transition_time == 1.0  # the exclusion, still what the status shows


def test_an_excluded_replica_that_fails_is_unhealthy_underneath() -> None:
    t = tracker(failback_delay_seconds=300, failure_threshold=1)
    make_healthy_at_startup(t)
    t.set_excluded(HOME, True, 0.0)
    t.observe(HOME, FAIL, 1.0)
    assert t.replicas[HOME].state is UNHEALTHY
    assert t.set_excluded(HOME, False, 2.0) == Transition(HOME, EXCLUDED, UNHEALTHY, "")
    assert HOME not in t.usable(1000.0)
    t.observe(HOME, OK, 1000.0)
    t.observe(HOME, OK, 1000.0)
    assert HOME not in t.usable(1299.0)
    assert HOME in t.usable(1300.0)


def test_unexclusion_delay_survives_the_first_success_of_an_unknown_replica() -> None:
    t = tracker(failback_delay_seconds=300)
    t.set_excluded(HOME, True, 0.0)
    t.observe(HOME, FAIL, 1.0)  # not yet a verdict (failureThreshold 3)
    t.set_excluded(HOME, False, 2.0)  # back in global routing: usable from 302 at the earliest
    t.observe(HOME, OK, 3.0)
    assert HOME not in t.usable(3.0)


# -- 4. decided -------------------------------------------------------------------------------------------


def test_not_decided_while_any_replica_is_unknown() -> None:
    t = tracker(failure_threshold=2)
    assert not t.decided
    t.observe("eastus", OK, 0.0)
    t.observe("westus", FAIL, 0.0)
    assert not t.decided  # westus: 1 failure, still Unknown
    t.observe("westus", FAIL, 1.0)
    assert not t.decided  # centralus never probed
    t.observe("centralus", OK, 1.0)
    assert t.decided  # Healthy, Unhealthy, Healthy


def test_an_excluded_unknown_replica_does_not_block_the_decision() -> None:
    t = tracker()
    t.observe("eastus", OK, 0.0)
    t.observe("westus", OK, 0.0)
    assert not t.decided
    t.set_excluded("centralus", True, 0.0)
    assert t.decided
    assert t.replicas["centralus"].state is UNKNOWN
    t.set_excluded("centralus", False, 1.0)
    assert not t.decided


def test_a_new_replica_makes_the_tracker_undecided_again() -> None:
    t = tracker(["eastus", "westus"])
    make_healthy_at_startup(t)
    assert t.decided
    t.update_replicas(replicas(REGIONS))
    assert not t.decided
    t.observe("centralus", OK, 1.0)
    assert t.decided


def test_no_replicas_is_decided() -> None:
    t = tracker([])
    assert t.decided
    assert t.usable(0.0) == frozenset()


# -- 5. next_probe_in --------------------------------------------------------------------------------------


def test_next_probe_in_follows_the_state() -> None:
    t = tracker(interval_seconds=7, failure_threshold=3, success_threshold=3)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS  # Unknown
    t.observe(HOME, FAIL, 0.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS  # Unknown with a failure
    t.observe(HOME, OK, 0.0)
    assert t.next_probe_in(HOME) == 7.0  # Healthy
    t.observe(HOME, FAIL, 1.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS  # suspect
    t.observe(HOME, FAIL, 2.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS  # still suspect
    t.observe(HOME, FAIL, 3.0)
    assert t.replicas[HOME].state is UNHEALTHY
    assert t.next_probe_in(HOME) == 7.0  # decided: Unhealthy
    t.observe(HOME, FAIL, 10.0)
    assert t.next_probe_in(HOME) == 7.0
    t.observe(HOME, OK, 17.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS  # recovering
    t.observe(HOME, OK, 18.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS
    t.observe(HOME, FAIL, 19.0)
    assert t.next_probe_in(HOME) == 7.0  # the recovery was interrupted: Unhealthy, no successes
    feed(t, HOME, OK, 3, 20.0)
    assert t.replicas[HOME].state is HEALTHY
    assert t.next_probe_in(HOME) == 7.0  # Healthy again (successes > 0 no longer means recovering)


def test_next_probe_in_suspect_then_success_returns_to_interval() -> None:
    t = tracker(interval_seconds=30)
    t.observe(HOME, OK, 0.0)
    t.observe(HOME, FAIL, 30.0)
    assert t.next_probe_in(HOME) == QUICK_REPROBE_SECONDS
    t.observe(HOME, OK, 31.0)
    assert t.next_probe_in(HOME) == 30.0


@pytest.mark.parametrize("interval", [1, 2, 5, 3600])
def test_next_probe_in_is_never_longer_than_the_interval(interval: int) -> None:
    t = tracker(interval_seconds=interval, timeout_seconds=1)
    assert t.next_probe_in(HOME) == min(QUICK_REPROBE_SECONDS, interval)
    t.observe(HOME, OK, 0.0)
    assert t.next_probe_in(HOME) == float(interval)
    assert isinstance(t.next_probe_in(HOME), float)


def test_next_probe_in_an_unknown_region_raises() -> None:
    with pytest.raises(KeyError):
        tracker().next_probe_in("northeurope")


# -- 6. never pin to an unhealthy or excluded replica --------------------------------------------------------

_event = st.tuples(
    st.sampled_from(REGIONS),
    st.sampled_from([OK, OK, THROTTLED, *FAILURES, "exclude", "include"]),
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 30.0, 120.0, 400.0]),
)


@settings(max_examples=200, deadline=None)
@given(
    failure_threshold=thresholds,
    success_threshold=thresholds,
    delay=st.sampled_from([0, 10, 60, 300]),
    throttling_is_failure=st.booleans(),
    cluster_region=st.sampled_from([*REGIONS, None, "northeurope"]),
    events=st.lists(_event, max_size=80),
)
def test_the_chosen_target_is_always_a_healthy_replica_or_global(
    failure_threshold: int,
    success_threshold: int,
    delay: int,
    throttling_is_failure: bool,
    cluster_region: str | None,
    events: list[tuple[str, str, float]],
) -> None:
    p = geo_policy("Global")
    t = HealthTracker(
        ProbeSettings(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            failback_delay_seconds=delay,
            throttling_is_failure=throttling_is_failure,
        ),
        p.replicas,
    )
    now = 0.0
    for region, outcome, advance in events:
        now += advance
        if outcome in ("exclude", "include"):
            t.set_excluded(region, outcome == "exclude", now)
        else:
            t.observe(region, outcome, now)
        usable = t.usable(now)
        chosen = choose(p, cluster_region, usable)
        assert chosen.endpoint == p.endpoints[chosen.region]
        if chosen.is_global:
            assert not usable
            continue
        health = t.replicas[chosen.region]
        assert health.state is HEALTHY
        assert not health.excluded
        assert health.reported_state is HEALTHY
        assert health.usable_at <= now
        # The most preferred usable replica.
        assert chosen.region == next(r for r in preference_order(p, cluster_region) if r in usable)


# -- 7. a flapping home replica does not drag workloads back and forth ----------------------------------------

_run = st.tuples(
    st.integers(min_value=1, max_value=7),  # probes in this run
    st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.0, 20.0, 60.0]),  # clock advance before each probe
)


@settings(max_examples=200, deadline=None)
@given(
    failure_threshold=thresholds,
    success_threshold=thresholds,
    delay=st.sampled_from([1, 10, 30, 120]),
    first_failing=st.booleans(),
    runs=st.lists(_run, min_size=1, max_size=25),
)
def test_a_flapping_home_replica_attracts_workloads_at_most_once_per_failback_window(
    failure_threshold: int,
    success_threshold: int,
    delay: int,
    first_failing: bool,
    runs: list[tuple[int, float]],
) -> None:
    p = geo_policy("Global")
    t = HealthTracker(
        ProbeSettings(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            failback_delay_seconds=delay,
        ),
        p.replicas,
    )
    now = 0.0
    target = choose(p, HOME, t.usable(now))
    assert target.is_global  # nothing probed yet
    changes: list[tuple[float, Target]] = []

    def step() -> None:
        nonlocal target
        chosen = choose(p, HOME, t.usable(now))
        if chosen != target:
            changes.append((now, chosen))
            target = chosen

    for region in REGIONS:  # startup: every replica answers
        t.observe(region, OK, now)
        step()
    assert target.region == HOME
    failing = first_failing
    for length, advance in runs:
        for _ in range(length):
            now += advance
            t.observe(HOME, FAIL if failing else OK, now)
            step()
        failing = not failing
    now += advance  # time passes after the last probe too
    step()

    toward_home = [when for when, chosen in changes if chosen.region == HOME]
    for earlier, later in itertools.pairwise(toward_home):
        assert later - earlier >= delay, (toward_home, delay)
    times = [when for when, _ in changes]
    for start in times:
        in_window = [when for when in times if start <= when < start + delay]
        assert len(in_window) <= 2, (changes, delay)
    # Only the home replica flaps: the target is always home or the next replica, never global.
    assert all(chosen.region in ("eastus", "westus") for _, chosen in changes[1:])


def test_a_flapping_home_replica_moves_back_only_after_the_delay() -> None:
    """The property above is not vacuous: a concrete flap with a return."""
    p = geo_policy()
    t = HealthTracker(ProbeSettings(failure_threshold=2, success_threshold=2, failback_delay_seconds=60), p.replicas)
    make_healthy_at_startup(t)
    assert choose(p, HOME, t.usable(0.0)).region == HOME
    feed(t, HOME, FAIL, 2, 10.0)
    assert choose(p, HOME, t.usable(10.0)).region == "westus"
    feed(t, HOME, OK, 2, 20.0)  # recovered at 20
    feed(t, HOME, FAIL, 1, 30.0)
    feed(t, HOME, OK, 1, 35.0)
    assert choose(p, HOME, t.usable(79.0)).region == "westus"
    assert choose(p, HOME, t.usable(80.0)).region == HOME


# -- 8. update_replicas -------------------------------------------------------------------------------------


def test_update_replicas_keeps_state_for_known_regions() -> None:
    t = tracker(failback_delay_seconds=100)
    make_healthy_at_startup(t)
    make_recovered(t, "westus", 10.0)
    t.set_excluded("centralus", True, 10.0)
    t.observe(HOME, FAIL, 11.0)
    before = {region: t.replicas[region] for region in REGIONS}
    snapshot = {region: repr(h) for region, h in before.items()}
    t.update_replicas(replicas(["centralus", "eastus", "westus"]))
    assert list(t.replicas) == ["centralus", "eastus", "westus"]  # the new order
    for region in REGIONS:
        assert repr(t.replicas[region]) == snapshot[region]
    assert t.replicas[HOME].consecutive_failures == 1
    assert t.replicas["centralus"].reported_state is EXCLUDED
    assert t.usable(50.0) == {HOME}
    assert t.usable(110.0) == {HOME, "westus"}


def test_update_replicas_resets_a_region_whose_endpoint_changed() -> None:
    t = tracker(failure_threshold=1)
    make_healthy_at_startup(t)
    t.observe("westus", FAIL, 1.0)
    assert t.replicas["westus"].state is UNHEALTHY
    new = [Replica("eastus", endpoint("eastus")), Replica("westus", "mirror.example.com:5000")]
    t.update_replicas(new)
    health = t.replicas["westus"]
    assert health.endpoint == "mirror.example.com:5000"
    assert health.state is UNKNOWN
    assert (health.consecutive_failures, health.consecutive_successes) == (0, 0)
    assert health.last_probe_time is None
    assert t.replicas["eastus"].state is HEALTHY
    assert not t.decided
    assert t.usable(2.0) == {"eastus"}


def test_update_replicas_drops_removed_regions() -> None:
    t = tracker(failure_threshold=1)
    make_healthy_at_startup(t)
    t.observe("centralus", FAIL, 1.0)
    t.update_replicas(replicas(["eastus", "westus"]))
    assert set(t.replicas) == {"eastus", "westus"}
    assert t.observe("centralus", OK, 2.0) is None
    assert "centralus" not in t.usable(2.0)
    assert t.decided
    # Listed again later: a fresh, Unknown replica.
    t.update_replicas(replicas(REGIONS))
    assert t.replicas["centralus"].state is UNKNOWN
    assert t.replicas["centralus"].consecutive_failures == 0


def test_update_replicas_applies_new_settings() -> None:
    t = tracker(failure_threshold=5)
    make_healthy_at_startup(t)
    feed(t, HOME, FAIL, 2, 1.0)
    assert t.replicas[HOME].state is HEALTHY
    t.update_replicas(replicas(), ProbeSettings(failure_threshold=3))
    assert t.settings.failure_threshold == 3
    assert t.observe(HOME, FAIL, 2.0) == Transition(HOME, HEALTHY, UNHEALTHY, FAIL)
    t.update_replicas(replicas())  # no settings: keep the current ones
    assert t.settings.failure_threshold == 3


# -- 9. decide() with replication and digest pinning ----------------------------------------------------------

WEB = "contoso.azurecr.io/shop/web:1.2"
API = "contoso.azurecr.io/shop/api:3"
DIGEST = "sha256:" + "a" * 64


def workload(images: Mapping[str, str], annotations: Mapping[str, str] | None = None) -> WorkloadView:
    metadata: dict[str, Any] = {"name": "web", "namespace": "default", "uid": "u-1"}
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {"template": {"spec": {"containers": [{"name": n, "image": i} for n, i in images.items()]}}},
    }
    return view_of(KINDS["Deployment"], body)


def pinned_to(region: str, images: Mapping[str, str], edited: Mapping[str, str] | None = None) -> WorkloadView:
    """A workload geopin pinned to `region` (images rewritten, originals recorded), whose user then set
    `edited` images (container name → image, on the global name) over some of them."""
    host = endpoint(region)
    shown = {name: f"{host}/{image.split('/', 1)[1]}" for name, image in images.items()}
    shown.update(edited or {})
    annotations = {
        ANNOTATION_PINNED_REGION: region,
        ANNOTATION_ORIGINAL_IMAGES: json.dumps({f"containers/{name}": image for name, image in images.items()}),
    }
    return workload(shown, annotations)


Availability = Callable[[str, str], bool | None]


class Registry:
    """availability(image, region) from a table (default: present); remembers the look-ups."""

    def __init__(self, table: Mapping[tuple[str, str], bool | None] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: list[tuple[str, str]] = []

    def __call__(self, image: str, region: str) -> bool | None:
        self.calls.append((image, region))
        return self.table.get((image, region), True)


def snap(
    availability: Availability | None = None,
    usable: frozenset[str] = frozenset(REGIONS),
    digest_of: Callable[[str], str | None] | None = None,
    verified: Callable[[str, str], bool] | None = None,
    **extra: Any,
) -> PolicySnapshot:
    return PolicySnapshot(
        policy=geo_policy(**extra),
        cluster_region=HOME,
        usable=usable,
        availability=availability,
        verified=verified,
        digest_of=digest_of,
    )


def test_decide_skips_a_home_region_the_image_has_not_reached() -> None:
    registry = Registry({(WEB, "eastus"): False})
    choice = decide(snap(registry), workload({"web": WEB}), None)
    assert choice.target == Target("westus", endpoint("westus"))
    assert choice.awaiting == "eastus"
    assert choice.unknown == ()
    assert choice.digests is None
    assert (WEB, "eastus") in registry.calls
    assert (WEB, "centralus") not in registry.calls  # decided at westus


def test_decide_takes_the_next_region_with_every_image() -> None:
    registry = Registry({(WEB, "eastus"): False, (API, "westus"): False})
    choice = decide(snap(registry), workload({"web": WEB, "api": API}), None)
    assert choice == Choice(Target("centralus", endpoint("centralus")), awaiting="eastus")


def test_decide_skips_unhealthy_regions_without_looking_them_up() -> None:
    registry = Registry({(WEB, "eastus"): False})
    choice = decide(snap(registry, usable=frozenset({"eastus", "centralus"})), workload({"web": WEB}), None)
    assert choice.target == Target("centralus", endpoint("centralus"))
    assert choice.awaiting == "eastus"
    assert all(region != "westus" for _, region in registry.calls)


def test_decide_with_the_image_nowhere_falls_back_to_global() -> None:
    registry = Registry({(WEB, r): False for r in REGIONS})
    choice = decide(snap(registry), workload({"web": WEB}), None)
    assert choice.target == Target("global", "contoso.azurecr.io")
    assert choice.awaiting == "eastus"


def test_decide_with_an_unknown_availability_asks_first() -> None:
    registry = Registry({(API, "eastus"): None})
    choice = decide(snap(registry), workload({"web": WEB, "api": API}), None)
    assert choice.target is None
    assert choice.unknown == ((API, "eastus"),)  # only the one not looked up yet
    assert choice.awaiting is None


def test_decide_unknown_after_a_missing_home_names_the_next_region() -> None:
    registry = Registry({(WEB, "eastus"): False, (WEB, "westus"): None, (API, "westus"): None})
    choice = decide(snap(registry), workload({"web": WEB, "api": API}), None)
    assert choice.target is None
    assert set(choice.unknown) == {(WEB, "westus"), (API, "westus")}


def test_decide_accepts_the_current_pin_without_a_check() -> None:
    # Home lacks the image; westus (the current pin) would fail the check, but its pods pull from it now.
    registry = Registry({(WEB, "eastus"): False, (WEB, "westus"): False})
    view = pinned_to("westus", {"web": WEB})
    choice = decide(snap(registry), view, None)
    assert choice.target == Target("westus", endpoint("westus"))
    assert choice.awaiting == "eastus"
    assert (WEB, "westus") not in registry.calls


def test_decide_current_pin_with_unknown_availability_still_accepted() -> None:
    registry = Registry({(WEB, "eastus"): None, (WEB, "westus"): None})
    view = pinned_to("eastus", {"web": WEB})
    choice = decide(snap(registry), view, None)
    assert choice == Choice(Target("eastus", endpoint("eastus")))
    assert registry.calls == []


def test_decide_checks_a_users_new_tag_at_the_current_pin() -> None:
    # The soak found it: pinned to eastus, the user rolls to a tag pushed in centralus that has not
    # reached eastus yet. Before, the current pin was taken unchecked and the new Pods could not pull.
    new = "contoso.azurecr.io/shop/web:1.3"
    registry = Registry({(new, "eastus"): False, (new, "westus"): False})
    view = pinned_to("eastus", {"web": WEB}, edited={"web": new})
    choice = decide(snap(registry), view, None)
    assert choice.target == Target("centralus", endpoint("centralus"))
    assert choice.awaiting == "eastus"
    assert (new, "eastus") in registry.calls
    # Not looked up yet: asked first, nothing decided.
    unknown = decide(snap(Registry({(new, "eastus"): None})), view, None)
    assert unknown.target is None
    assert unknown.unknown == ((new, "eastus"),)


def guesses(*pairs: tuple[str, str]) -> Callable[[str, str], bool]:
    """verified(image, region): every presence is a replica's own answer but those of `pairs`."""
    return lambda image, region: (image, region) not in pairs


def test_decide_prefers_a_replica_that_answered_to_one_whose_head_failed() -> None:
    # The soak found it (seed 3 in CI): web-1's new tag was only at centralus; westus had answered 404,
    # then a HEAD there timed out and was taken as present, and the template was moved to westus.
    new = "contoso.azurecr.io/shop/web:5"
    registry = Registry({(new, "eastus"): False})
    view = pinned_to("centralus", {"web": WEB}, edited={"web": new})
    choice = decide(snap(registry, verified=guesses((new, "westus"))), view, None)
    assert choice.target == Target("centralus", endpoint("centralus"))
    assert choice.awaiting == "eastus"
    # Not pinned yet: the same, the first replica that answered.
    fresh = decide(snap(Registry(), verified=guesses((WEB, "eastus"))), workload({"web": WEB}), None)
    assert fresh.target == Target("westus", endpoint("westus"))
    assert fresh.awaiting == "eastus"


def test_decide_fails_open_to_a_guess_only_when_no_replica_answered() -> None:
    everywhere = guesses(*((WEB, r) for r in REGIONS))
    assert decide(snap(Registry(), verified=everywhere), workload({"web": WEB}), None).target == Target(
        "eastus", endpoint("eastus")
    )
    absent_at_home = Registry({(WEB, "eastus"): False})
    choice = decide(snap(absent_at_home, verified=everywhere), workload({"web": WEB}), None)
    assert choice == Choice(Target("westus", endpoint("westus")), awaiting="eastus")
    # A region not looked up yet after a guess is asked before anything is decided.
    unknown = decide(
        snap(Registry({(WEB, "westus"): None}), verified=guesses((WEB, "eastus"))), workload({"web": WEB}), None
    )
    assert unknown.target is None
    assert unknown.unknown == ((WEB, "westus"),)


def test_decide_checks_only_the_new_image_of_a_partly_edited_pin() -> None:
    new = "contoso.azurecr.io/shop/api:4"
    registry = Registry({(WEB, "eastus"): False, (new, "eastus"): True})
    view = pinned_to("eastus", {"web": WEB, "api": API}, edited={"api": new})
    choice = decide(snap(registry), view, None)
    assert choice == Choice(Target("eastus", endpoint("eastus")))
    assert (new, "eastus") in registry.calls
    assert (WEB, "eastus") not in registry.calls


def test_decide_an_unhealthy_current_pin_is_not_kept() -> None:
    registry = Registry()
    view = workload({"web": WEB}, {ANNOTATION_PINNED_REGION: "eastus"})
    choice = decide(snap(registry, usable=frozenset({"westus"})), view, None)
    assert choice.target == Target("westus", endpoint("westus"))


def test_decide_without_replication_check_ignores_availability() -> None:
    registry = Registry({(WEB, r): False for r in REGIONS})
    choice = decide(snap(registry, replicationCheck=False), workload({"web": WEB}), None)
    assert choice == Choice(Target("eastus", endpoint("eastus")))
    assert registry.calls == []


def test_decide_preferred_region_is_checked_first() -> None:
    registry = Registry({(WEB, "centralus"): False})
    view = workload({"web": WEB}, {ANNOTATION_REGION: "centralus"})
    choice = decide(snap(registry), view, None)
    assert choice.target == Target("eastus", endpoint("eastus"))
    assert choice.awaiting == "centralus"


_availability = st.sampled_from([True, True, False, None])


@settings(max_examples=200, deadline=None)
@given(
    table=st.fixed_dictionaries({(i, r): _availability for i in (WEB, API) for r in REGIONS}),
    usable=st.frozensets(st.sampled_from(REGIONS)),
    current=st.sampled_from([None, *REGIONS, "global"]),
)
def test_decide_replication_invariants(
    table: dict[tuple[str, str], bool | None], usable: frozenset[str], current: str | None
) -> None:
    registry = Registry(table)
    if current in REGIONS:
        view = pinned_to(current, {"web": WEB, "api": API})
    else:
        view = workload({"web": WEB, "api": API}, {ANNOTATION_PINNED_REGION: current} if current else None)
    choice = decide(snap(registry, usable=usable), view, None)
    order = [r for r in preference_order(geo_policy(), HOME) if r in usable]
    images = (WEB, API)

    def present(region: str) -> bool:
        return all(table[(i, region)] is True for i in images)

    def missing(region: str) -> bool:  # known to lack an image, nothing unknown
        return all(table[(i, region)] is not None for i in images) and not present(region)

    if choice.unknown:
        assert choice.target is None
        regions = {region for _, region in choice.unknown}
        assert len(regions) == 1
        (region,) = regions
        assert region in usable
        assert region != current
        assert set(choice.unknown) == {(i, region) for i in images if table[(i, region)] is None}
        before = order[: order.index(region)]
        assert all(missing(r) and r != current for r in before)
        return
    assert choice.target is not None
    skipped = order if choice.target.is_global else order[: order.index(choice.target.region)]
    assert all(missing(r) and r != current for r in skipped)
    assert choice.awaiting == (skipped[0] if skipped else None)
    if not choice.target.is_global:
        assert choice.target.region in usable
        assert choice.target.region == current or present(choice.target.region)


def test_decide_digest_pinning_returns_the_digests() -> None:
    digests = {WEB: DIGEST, API: "sha256:" + "b" * 64}
    choice = decide(
        snap(Registry(), digest_of=digests.get, digestPinning=True), workload({"web": WEB, "api": API}), None
    )
    assert choice.target == Target("eastus", endpoint("eastus"))
    assert choice.digests == digests
    assert choice.unknown == ()


def test_decide_digest_pinning_asks_for_an_unresolved_digest() -> None:
    digests = {API: DIGEST}
    choice = decide(
        snap(Registry(), digest_of=digests.get, digestPinning=True), workload({"web": WEB, "api": API}), None
    )
    assert choice.target is None
    assert choice.unknown == ((WEB, ""),)


def test_decide_digest_pinning_without_a_resolver_asks_for_every_digest() -> None:
    choice = decide(snap(Registry(), digestPinning=True), workload({"web": WEB, "api": API}), None)
    assert choice.target is None
    assert set(choice.unknown) == {(WEB, ""), (API, "")}


def test_decide_digest_pinning_needs_no_digest_for_a_digest_reference() -> None:
    by_digest = f"contoso.azurecr.io/shop/web@{DIGEST}"
    choice = decide(snap(Registry(), digest_of=lambda _: None, digestPinning=True), workload({"web": by_digest}), None)
    assert choice.target == Target("eastus", endpoint("eastus"))
    assert choice.unknown == ()
    assert choice.digests == {}


def test_decide_digest_pinning_is_not_applied_on_global() -> None:
    looked_up: list[str] = []

    def digest_of(image: str) -> str | None:
        looked_up.append(image)
        return None

    choice = decide(
        snap(Registry(), usable=frozenset(), digest_of=digest_of, digestPinning=True), workload({"web": WEB}), None
    )
    assert choice == Choice(Target("global", "contoso.azurecr.io"))
    assert looked_up == []


def test_stay_fallback_keeps_the_current_pin_in_decide() -> None:
    view = workload({"web": WEB}, {ANNOTATION_PINNED_REGION: "westus"})
    choice = decide(snap(Registry(), usable=frozenset(), fallback="Stay"), view, None)
    assert geo_policy("Stay").fallback is Fallback.STAY
    assert choice.target == Target("westus", endpoint("westus"))


# -- failback delay across a restart or a change of leader ----------------------------------------------

WALL, NOW = 1_700_000_000.0, 50.0  # the new process's wall clock and its own clock, at one instant


def _status_row(region: str, state: str, since_wall: float) -> dict[str, Any]:
    """A status.replicas row as the leader writes it (lastTransitionTime in whole seconds, UTC)."""
    stamp = datetime.fromtimestamp(since_wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"region": region, "endpoint": endpoint(region), "state": state, "lastTransitionTime": stamp}


def test_a_failback_delay_under_way_survives_a_restart() -> None:
    """The home replica recovered 20 s before the restart: it is usable 300 s after the recovery."""
    status = {
        "replicas": [
            _status_row(HOME, "Healthy", WALL - 20),
            *(_status_row(r, "Healthy", WALL - 900) for r in REGIONS[1:]),
        ],
        "usableRegions": list(REGIONS[1:]),  # eastus healthy, waiting out its delay
    }
    t = tracker(failback_delay_seconds=300)
    t.restore_failback_delays(status, now=NOW, wall_now=WALL)
    assert not t.decided  # still Unknown: a first probe decides, as after any start
    make_healthy_at_startup(t, NOW)
    assert HOME not in t.usable(NOW + 279)
    assert HOME in t.usable(NOW + 280)
    assert set(REGIONS[1:]) <= t.usable(NOW)


def test_a_stale_unhealthy_row_holds_nothing_back() -> None:
    """The status lags a repoint: a leader that had already moved workloads back to eastus may have left it
    shown Unhealthy. The new leader must not take that for a verdict and move the workloads away again."""
    status = {"replicas": [_status_row(HOME, "Unhealthy", WALL - 400)], "usableRegions": list(REGIONS[1:])}
    t = tracker(failback_delay_seconds=300)
    t.restore_failback_delays(status, now=NOW, wall_now=WALL)
    assert t.replicas[HOME].state is UNKNOWN
    make_healthy_at_startup(t, NOW)
    assert HOME in t.usable(NOW)


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"replicas": "nonsense", "usableRegions": 5},
        {"replicas": [{"region": HOME, "state": "Healthy", "lastTransitionTime": "not a time"}], "usableRegions": []},
        {"replicas": [{**_status_row(HOME, "Healthy", WALL - 5), "endpoint": "old.example.com"}], "usableRegions": []},
        {"replicas": [_status_row(HOME, "Healthy", WALL - 5)], "usableRegions": [HOME]},
        {"replicas": [_status_row(HOME, "Healthy", WALL - 5)]},  # no usableRegions: nothing to infer
    ],
)
def test_a_status_without_a_pending_delay_changes_nothing(status: dict[str, Any]) -> None:
    t = tracker(failback_delay_seconds=300)
    t.restore_failback_delays(status, now=NOW, wall_now=WALL)
    make_healthy_at_startup(t, NOW)
    assert t.usable(NOW) == set(REGIONS)


# -- a Redirect hold across a restart or a change of leader --------------------------------------------


def test_an_unhealthy_row_tells_when_the_hold_began_on_this_process_clock() -> None:
    status = {
        "replicas": [_status_row(HOME, "Unhealthy", WALL - 40), _status_row("westus", "Healthy", WALL - 900)],
        "usableRegions": ["westus"],
    }
    assert tracker().unusable_since_in(status, now=NOW, wall_now=WALL) == {HOME: NOW - 40}


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"replicas": "nonsense", "usableRegions": 5},
        {"replicas": [_status_row(HOME, "Unhealthy", WALL - 40)]},  # no usableRegions: nothing to infer
        {"replicas": [_status_row(HOME, "Unhealthy", WALL - 40)], "usableRegions": [HOME]},  # usable after all
        {"replicas": [_status_row(HOME, "Healthy", WALL - 40)], "usableRegions": []},  # a failback delay
        {"replicas": [{**_status_row(HOME, "Unhealthy", WALL - 40), "endpoint": "old"}], "usableRegions": []},
        {"replicas": [{**_status_row(HOME, "Unhealthy", 0), "lastTransitionTime": "never"}], "usableRegions": []},
    ],
)
def test_no_hold_is_inferred_from_anything_else(status: dict[str, Any]) -> None:
    assert tracker().unusable_since_in(status, now=NOW, wall_now=WALL) == {}


_answer = st.sampled_from([True, True, "guess", False, None])


@settings(max_examples=300, deadline=None)
@given(
    table=st.fixed_dictionaries({(i, r): _answer for i in (WEB, API) for r in REGIONS}),
    usable=st.frozensets(st.sampled_from(REGIONS)),
    current=st.sampled_from([None, *REGIONS, "global"]),
)
def test_decide_never_trades_an_answer_for_a_guess(
    table: dict[tuple[str, str], bool | str | None], usable: frozenset[str], current: str | None
) -> None:
    """ "guess": the HEAD failed and the image is taken as present, but not verified."""
    registry = Registry({key: True if value == "guess" else value for key, value in table.items()})  # type: ignore[misc]
    if current in REGIONS:
        view = pinned_to(current, {"web": WEB, "api": API})
    else:
        view = workload({"web": WEB, "api": API}, {ANNOTATION_PINNED_REGION: current} if current else None)
    choice = decide(snap(registry, usable=usable, verified=lambda i, r: table[(i, r)] is True), view, None)
    order = [r for r in preference_order(geo_policy(), HOME) if r in usable]
    images = (WEB, API)

    def answered(region: str) -> bool:
        return all(table[(i, region)] is True for i in images)

    def possible(region: str) -> bool:
        return all(table[(i, region)] in (True, "guess") for i in images)

    if choice.unknown:
        (region,) = {region for _, region in choice.unknown}
        assert not any(answered(r) or r == current for r in order[: order.index(region)])
        return
    assert choice.target is not None
    if choice.target.is_global:
        assert not any(possible(r) or r == current for r in order)
        return
    region = choice.target.region
    before = order[: order.index(region)]
    assert not any(answered(r) or r == current for r in before)
    if region != current and not answered(region):
        assert possible(region)
        assert not any(answered(r) or r == current for r in order)  # failed open: nothing better known
        assert not any(possible(r) for r in before)
