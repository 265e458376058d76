"""`python -m bench --smoke pods` on a real node, as a user runs it: no BENCH_RESULTS_DIR.

Its own file so that pytest-xdist can run it beside the other benchmarks' smoke run. No timed
assertions: the run ends, its JSON has the documented shape, and nothing is left in the checkout.
"""

from __future__ import annotations

import pytest

from tests.harness.benchrun import run_smoke_outside_the_checkout

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]


@pytest.mark.timeout(600)
def test_pods_smoke_measures_a_real_node_and_leaves_the_checkout_alone() -> None:
    path, document = run_smoke_outside_the_checkout("--smoke", "pods", name="pods", timeout=540)
    assert document["benchmark"] == "pods"
    assert document["parameters"]["sizes"] == [10]
    [figure] = document["figures"]
    [round_] = figure["rounds"]
    assert round_["pods_running_before"] == 4  # SCALED Deployments, one Pod each
    assert round_["outage_to_first_new_pod_running"] > 0
    assert round_["outage_to_global_endpoint_pod_running"] >= document["parameters"]["global_failover_delay_seconds"]
    # Redirect (the smoke run's strategy): the new Pod comes from westus, nothing that ran restarts,
    # no template is written.
    assert figure["strategy"] == "Redirect"
    assert round_["pods_replaced"] + round_["pods_restarted"] == 0
    assert round_["template_writes"] == 0
    path.unlink()
    path.parent.rmdir()
