"""Rooms one can read on a screen: no function or method in syncd/ is longer than
MAX_LINES, counted from its ``def`` line to its last line, docstring and comments included
(issue 17). The style aims at ~50; past MAX_LINES a function is split into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

import syncd

ROOT = Path(syncd.__file__).parent
MAX_LINES = 60


def function_lengths() -> dict[str, int]:
    """"path:line name" -> lines, for every function and method under syncd/."""
    lengths = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                where = f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"
                lengths[where] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_a_screen() -> None:
    lengths = function_lengths()
    assert len(lengths) > 500  # the walk found syncd's functions, nested ones included
    too_long = {where: n for where, n in lengths.items() if n > MAX_LINES}
    assert not too_long, (f"split these into named steps (at most {MAX_LINES} lines each): "
                          f"{too_long}")
