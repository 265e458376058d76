"""Every ```` ```sh runnable ```` block in README.md and docs/*.md runs and exits 0.

A fenced block whose info string is ``sh runnable`` is documentation that must keep working: each one is
its own test (id ``<file>:<line>`` of the opening fence) and runs with ``bash -euo pipefail`` in the repo
root, ``.venv/bin`` first on PATH and the control-plane binaries of hack/controlplane/build.sh after it,
for at most 120 s. A block may rely only on the repo, the venv and those binaries. Plain ```` ```sh ````
blocks are not run; show a block's output in a separate ```` ```text ```` block.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 120
INFO = ("sh", "runnable")
# An opening or closing fence: up to three spaces, then three or more backticks or tildes.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repo root, e.g. docs/cli.md
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def collect_blocks(text: str, path: str) -> list[Block]:
    """The ``sh runnable`` fenced blocks of one Markdown document, in order (CommonMark fences)."""
    blocks: list[Block] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i].rstrip("\n"))
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, indent = opening["fence"], len(lines[i]) - len(lines[i].lstrip(" "))
        start, body = i, []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i].rstrip("\n"))
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            # Content lines lose up to the opening fence's indentation, as CommonMark says.
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            i += 1
        i += 1
        if tuple(opening["info"].split()) == INFO:
            blocks.append(Block(path, start + 1, "".join(body)))
    return blocks


def runnable_blocks(root: Path = ROOT) -> list[Block]:
    """Every runnable block of README.md and docs/*.md under root, files in sorted order."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    blocks: list[Block] = []
    for file in files:
        if file.is_file():
            blocks += collect_blocks(file.read_text(encoding="utf-8"), file.relative_to(root).as_posix())
    return blocks


def runnable_params(root: Path = ROOT) -> list[object]:
    """pytest parameters, one per block, with the id ``<file>:<line>``."""
    return [pytest.param(block, id=block.id) for block in runnable_blocks(root)]


@pytest.fixture(scope="session")
def docs_path() -> str:
    """PATH for the blocks: the venv first, then the control-plane binaries, then the caller's PATH."""
    from tests.harness.controlplane import find_binaries

    return os.pathsep.join([str(ROOT / ".venv" / "bin"), str(find_binaries()), os.environ.get("PATH", "")])


def _tail(output: str, lines: int = 40) -> str:
    return "\n".join(output.rstrip("\n").splitlines()[-lines:]) or "(empty)"


@pytest.mark.parametrize("block", runnable_params())
def test_runnable_block_exits_zero(block: Block, docs_path: str) -> None:
    env = {**os.environ, "PATH": docs_path, "VIRTUAL_ENV": str(ROOT / ".venv")}
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: runnable block did not finish within {TIMEOUT_SECONDS} s", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"{block.id}: runnable block exited {result.returncode}\n"
            f"--- block ---\n{block.code}--- stdout (tail) ---\n{_tail(result.stdout)}\n"
            f"--- stderr (tail) ---\n{_tail(result.stderr)}",
            pytrace=False,
        )
