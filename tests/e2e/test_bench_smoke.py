"""The benchmarks' smoke run (`python -m bench --smoke ...`) on the real control plane, so bench/ never rots.

The real-node benchmark (`pods`) has its own file, test_bench_pods_smoke.py.

No timed assertions: only that every benchmark ran to the end and wrote a JSON result of the
documented shape. Results go to a temp dir (BENCH_RESULTS_DIR), never into bench/results/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness.benchrun import run_bench

pytestmark = pytest.mark.e2e

BENCHMARKS = ("failover", "steady", "admission", "probe-hang")


@pytest.mark.timeout(600)
def test_bench_smoke_writes_every_result(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path)}
    env.pop("BENCH_STEADY_SECONDS", None)
    run_bench("--smoke", *BENCHMARKS, timeout=540, env=env)
    for name in BENCHMARKS:
        files = sorted(tmp_path.glob(f"{name}-*.json"))
        assert len(files) == 1, (name, [p.name for p in tmp_path.iterdir()])
        document = json.loads(files[0].read_text())
        assert {"benchmark", "date", "machine", "parameters", "figures"} <= set(document), document.keys()
        assert document["benchmark"] == name
        assert {"cores", "memory_mib", "python", "kubernetes"} <= set(document["machine"])
        assert document["machine"]["kubernetes"].startswith("v1.")
        assert document["figures"], name
