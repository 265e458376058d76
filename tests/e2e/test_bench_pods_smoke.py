"""`python -m bench --smoke pods` on a real node, as a user runs it: no BENCH_RESULTS_DIR.

Its own file so that pytest-xdist can run it beside the other benchmarks' smoke run. No timed
assertions: the run ends, its JSON has the documented shape, and nothing is left in the checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "bench" / "results"


@pytest.mark.timeout(600)
def test_pods_smoke_measures_a_real_node_and_leaves_the_checkout_alone() -> None:
    before = sorted(p.name for p in RESULTS.iterdir())
    env = {k: v for k, v in os.environ.items() if k != "BENCH_RESULTS_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "pods"],
        cwd=REPO_ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert sorted(p.name for p in RESULTS.iterdir()) == before, "a smoke run wrote into bench/results/"
    wrote = re.search(r"wrote (\S+/pods-\S+\.json)", result.stdout)
    assert wrote is not None, result.stdout[-2000:]
    path = Path(wrote.group(1))
    assert not path.is_relative_to(REPO_ROOT)
    document = json.loads(path.read_text())
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
