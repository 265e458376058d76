"""`make soak-smoke` (`python -m bench soak --smoke`): two minutes of seeded faults, as a user runs it.

The soak checks its invariants itself (bench/soak_checks.py, bench/soak_nodes.py) and exits 1 on a
violation; here the run must end clean, have injected faults of several classes, written templates
(switches happened), watched the real node's Pods, and left nothing in the checkout. That the checker
can fail is shown by docs/reliability.md's run of a deliberately broken build.
"""

from __future__ import annotations

import pytest

from tests.harness.benchrun import run_smoke_outside_the_checkout

pytestmark = pytest.mark.e2e

SEED = 3


@pytest.mark.timeout(420)
def test_two_minutes_of_faults_violate_no_invariant() -> None:
    path, document = run_smoke_outside_the_checkout("soak", "--smoke", "--seed", str(SEED), name="soak", timeout=400)
    figures = document["figures"]
    assert document["parameters"] == {"minutes": 2.0, "seed": SEED, "deployments": figures["deployments"]}
    assert figures["violations"] == []
    assert len(figures["faults"]) >= 4, figures["faults"]  # several classes, not one repeated
    assert figures["template_writes"] > 0
    assert figures["pods_seen_running"] >= 3  # the real node's Pods ran, and were watched
    assert figures["timeline"][0][0] == 0.0
    path.unlink()
    path.parent.rmdir()
