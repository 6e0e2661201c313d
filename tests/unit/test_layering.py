"""The house's layers (docs/architecture.md): every import inside syncd points down or sideways,
never up, and no two modules import each other, directly or around a circle.

Checked on the source with ``ast``, lazy imports inside functions and TYPE_CHECKING blocks
included: a lazy import is still a dependency, only a cheaper one at start-up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import syncd

ROOT = Path(syncd.__file__).parent

# Lowest first. A module may import from its own layer and the ones below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("syncd.core",),
    ("syncd.errors", "syncd.faults", "syncd.heap"),
    ("syncd.locks",),
    ("syncd.config", "syncd.auth", "syncd.store"),
    ("syncd.logs", "syncd.net", "syncd.outcome"),
    ("syncd.imap", "syncd.pop3", "syncd.smtp"),
    ("syncd.migrate", "syncd.service"),
    ("syncd.cli", "syncd.__main__"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None  # syncd itself (__version__)


def _imported(path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, syncd module) for every import in the file, resolved to a module of ``known``
    ("from syncd.imap import client" is syncd.imap.client)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                yield node.lineno, name
                if isinstance(node, ast.ImportFrom):
                    break  # the submodule named; its package need not count too


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(paths)
    return {name: {m for _, m in _imported(path, known) if m != name}
            for name, path in paths.items()}


GRAPH = _graph()


def test_every_module_has_a_layer() -> None:
    assert not [m for m in GRAPH if m != "syncd" and _layer(m) is None]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    level = _layer(module)
    if level is None:
        return
    upward = sorted(m for m in GRAPH[module]
                    if (target := _layer(m)) is not None and target > level)
    assert not upward, f"{module} (layer {level}) imports from above: {upward}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if there is any (depth-first search, three colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in colour and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    # A package's __init__ imports nothing here, so package -> module edges do not count.
    cycle = _cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or ())


def test_the_checks_can_fail() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert _layer("syncd.cli") > _layer("syncd.imap.account") > _layer("syncd.core.plan")
