"""`make soak-smoke` (`python -m bench soak --smoke`): two minutes of seeded faults, as a user runs it.

The soak checks its invariants itself (bench/soak_checks.py) and exits 1 on a violation; here the run
must end clean, have injected faults of several classes, written templates (switches happened), and
left nothing in the checkout. That the checker can fail is shown by docs/reliability.md's run of a
deliberately broken build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "bench" / "results"
SEED = 3


@pytest.mark.timeout(420)
def test_two_minutes_of_faults_violate_no_invariant() -> None:
    before = sorted(p.name for p in RESULTS.iterdir())
    env = {k: v for k, v in os.environ.items() if k != "BENCH_RESULTS_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--smoke", "--seed", str(SEED)],
        cwd=REPO_ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert sorted(p.name for p in RESULTS.iterdir()) == before, "a smoke run wrote into bench/results/"
    wrote = re.search(r"wrote (\S+/soak-\S+\.json)", result.stdout)
    assert wrote is not None, result.stdout[-2000:]
    path = Path(wrote.group(1))
    document = json.loads(path.read_text())
    figures = document["figures"]
    assert document["parameters"] == {"minutes": 2.0, "seed": SEED, "deployments": figures["deployments"]}
    assert figures["violations"] == []
    assert len(figures["faults"]) >= 4, figures["faults"]  # several classes, not one repeated
    assert figures["template_writes"] > 0
    assert figures["timeline"][0][0] == 0.0
    path.unlink()
    path.parent.rmdir()
