"""What the diagnostic commands print: kubectl-style tables, and documents as JSON or YAML."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

__all__ = ["render", "table"]


def render(document: Mapping[str, Any], output: str) -> str:
    """``document`` as JSON or YAML text (ending in a newline)."""
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(dict(document), sort_keys=False)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns separated by two spaces (kubectl style); no trailing blanks."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        (indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows]
    ]
