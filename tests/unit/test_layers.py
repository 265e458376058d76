"""The package layers are a rule the code obeys, not only a picture in docs/architecture.md.

Ranks, lowest first: ``geopin.core`` (pure) < ``geopin.io`` (the edges) < ``geopin.control`` (components
that act over time) < ``geopin.handlers`` (Kopf wiring) < ``geopin.cli`` (the command). A module may
import its own layer and the layers below it, never one above, and no two modules may import each other,
directly or through others. ``geopin`` itself (``__init__``: the version) ranks with the core.

Every import counts wherever it is written: at the top, inside a function (a lazy import is still a
dependency) and under ``if TYPE_CHECKING:`` (a type names what a module depends on; mypy reads it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "operator"
PACKAGE = "geopin"
RANKS = {"geopin": 0, "geopin.core": 0, "geopin.io": 1, "geopin.control": 2, "geopin.handlers": 3, "geopin.cli": 4}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` under ``root`` → the modules of ``package`` it imports."""
    paths = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:  # `from pkg import module` names the module, not the package
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in paths else base)
        graph[module] = {t for t in targets if t == package or t.startswith(f"{package}.")} - {module}
    return graph


def rank_of(module: str) -> int | None:
    """The rank of the longest layer prefix of ``module``; None for a module in no layer."""
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or (prefix != PACKAGE and module.startswith(f"{prefix}.")):
            return RANKS[prefix]
    return None


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Modules in no layer, upward imports and import cycles, one line each (empty: the rule holds)."""
    problems = []
    for module in sorted(graph):
        if rank_of(module) is None:
            problems.append(f"{module}: in no layer")
    for module in sorted(graph):
        for target in sorted(graph[module]):
            source_rank, target_rank = rank_of(module), rank_of(target)
            if source_rank is not None and target_rank is not None and target_rank > source_rank:
                problems.append(f"{module} imports {target}: upward")
    problems.extend(f"cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph))
    return problems


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle for each back edge a depth-first walk meets; empty when the graph is acyclic."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles


def test_geopin_obeys_the_layers() -> None:
    graph = read_imports(ROOT)
    assert len(graph) >= 40, sorted(graph)  # the reader found the package, not an empty tree
    assert "geopin.io.kube" in graph["geopin.control.reconciler"]  # and reads imports as they are written
    assert layer_violations(graph) == []


def test_nothing_imports_the_command() -> None:
    graph = read_imports(ROOT)
    importers = {m for m, targets in graph.items() for t in targets if rank_of(t) == RANKS["geopin.cli"]}
    assert {m for m in importers if not m.startswith("geopin.cli")} == set()


def test_the_rule_reports_upward_imports_cycles_and_strays() -> None:
    bad = {
        "geopin.core.policy": {"geopin.io.kube"},  # pure code reaching the API
        "geopin.io.kube": set(),
        "geopin.control.engine": {"geopin.control.reporting", "geopin.core.policy"},
        "geopin.control.reporting": {"geopin.control.runtime"},
        "geopin.control.runtime": {"geopin.control.engine"},  # engine → reporting → runtime → engine
        "geopin.stray": set(),
    }
    assert layer_violations(bad) == [
        "geopin.stray: in no layer",
        "geopin.core.policy imports geopin.io.kube: upward",
        "cycle: geopin.control.engine -> geopin.control.reporting -> geopin.control.runtime -> geopin.control.engine",
    ]


def test_the_reader_sees_relative_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    files = {
        "geopin/__init__.py": "",
        "geopin/core/__init__.py": "",
        "geopin/core/policy.py": "from . import selectors\nfrom ..io.kube import Kube\n",
        "geopin/core/selectors.py": "def f():\n    import geopin.cli.main\n",
        "geopin/core/status.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from geopin.control import engine\n"
        ),
        "geopin/io/__init__.py": "",
        "geopin/io/kube.py": "import json\nfrom geopin import __version__\n",
        "geopin/control/__init__.py": "",
        "geopin/control/engine.py": "",
        "geopin/cli/__init__.py": "",
        "geopin/cli/main.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = read_imports(tmp_path)
    assert graph["geopin.core.policy"] == {"geopin.core.selectors", "geopin.io.kube"}
    assert graph["geopin.core.selectors"] == {"geopin.cli.main"}
    assert graph["geopin.core.status"] == {"geopin.control.engine"}
    assert graph["geopin.io.kube"] == {"geopin"}
    assert layer_violations(graph) == [
        "geopin.core.policy imports geopin.io.kube: upward",
        "geopin.core.selectors imports geopin.cli.main: upward",
        "geopin.core.status imports geopin.control.engine: upward",
    ]
