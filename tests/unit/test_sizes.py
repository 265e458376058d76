"""Size rules of the source (docs/architecture.md): a module a newcomer can read, a function one screen.

They drifted once, unnoticed, while three branches grew the same modules; this test keeps them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "operator" / "geopin"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def oversized(root: Path) -> list[str]:
    """Every module over MAX_MODULE_LINES and function over MAX_FUNCTION_LINES below ``root``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(root).as_posix()
        if (lines := text.count("\n")) > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_or_function_of_geopin_is_oversized() -> None:
    assert oversized(SOURCE) == []


def test_the_rule_names_an_oversized_module_and_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "fine.py").write_text("def short():\n    return 1\n")
    assert oversized(tmp_path) == [
        f"big.py: {MAX_MODULE_LINES + 1} lines",
        f"long.py:1 long: {MAX_FUNCTION_LINES + 1} lines",
    ]
