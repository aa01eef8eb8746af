"""The package's shape: no import cycle between its modules (imports under TYPE_CHECKING count too), and files
small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "preftune"


def _module_names() -> dict[str, Path]:
    """``preftune.layouts.batch`` -> its file; a package is named by its folder (its ``__init__.py``)."""
    names = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The preftune modules ``name`` imports by statement, anywhere in the file (functions, TYPE_CHECKING)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` names a module; `from .m import x` a module's name
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known.keys()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    known = _module_names()
    graph = {name: _imports(name, path, known) - {name} for name, path in known.items()}
    assert graph["preftune.training.trainer"] >= {
        "preftune.config",
        "preftune.losses",
    }  # the parser sees imports
    assert _cycles(graph) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_files_are_small_enough_to_read_in_one_sitting() -> None:
    lengths = {path: len(path.read_text().splitlines()) for path in SRC.rglob("*.py")}
    limit = {path: 300 if path.parent.name == "training" else 350 for path in lengths}
    too_long = {str(path.relative_to(SRC)): n for path, n in lengths.items() if n > limit[path]}
    assert too_long == {}
