"""`python -m bench ...` run as a user runs it, for the tests that keep bench/ from rotting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.chart import ROOT

__all__ = ["run_bench"]

RESULTS = ROOT / "bench" / "results"


def run_bench(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bench ARGS`` from the checkout; fails (with the output's tail) unless it exits 0."""
    environment = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    return result


def run_smoke_outside_the_checkout(*args: str, name: str, timeout: float) -> tuple[Path, dict[str, Any]]:
    """A smoke run without BENCH_RESULTS_DIR, as a user types it: its one JSON result, written to a temp
    directory and never into bench/results/ (the path, and the document)."""
    before = sorted(p.name for p in RESULTS.iterdir())
    env = {k: v for k, v in os.environ.items() if k != "BENCH_RESULTS_DIR"}
    result = run_bench(*args, timeout=timeout, env=env)
    assert sorted(p.name for p in RESULTS.iterdir()) == before, "a smoke run wrote into bench/results/"
    wrote = re.search(rf"wrote (\S+/{name}-\S+\.json)", result.stdout)
    assert wrote is not None, result.stdout[-2000:]
    path = Path(wrote.group(1))
    assert not path.is_relative_to(ROOT)
    return path, json.loads(path.read_text())
