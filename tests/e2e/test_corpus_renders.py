"""The manifest corpus of tests/unit/test_plan_corpus.py is what helm and kustomize render from its sources."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_the_renders_are_up_to_date() -> None:
    done = subprocess.run(
        [str(ROOT / "hack" / "render-corpus.sh"), "--check"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
