"""syncd.core is pure: no sockets, files, clocks, threads or outer layers (docs/architecture.md).

Checked on the source with ``ast``, so even a lazily imported module inside a function fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import syncd.core

CORE = Path(syncd.core.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))

FORBIDDEN_MODULES = {
    "socket", "ssl", "os", "io", "pathlib", "sqlite3", "time", "datetime", "threading",
    "subprocess", "imapclient", "poplib", "imaplib", "smtplib", "select", "selectors", "signal",
    "asyncio", "multiprocessing", "concurrent", "shutil", "tempfile", "glob", "fcntl", "mmap",
    "random", "secrets", "uuid", "urllib", "http", "logging", "keyring", "watchdog",
    "apscheduler", "importlib", "builtins", "ctypes",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


def _forbidden(module: str) -> bool:
    """An I/O module, or any part of syncd outside syncd.core (every other package sits above
    it: tests/unit/test_layering.py)."""
    if module.startswith("syncd.") and not (module == "syncd.core"
                                            or module.startswith("syncd.core.")):
        return module != "syncd.__version__"
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN_MODULES)


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # "from syncd import engine" imports a module too
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def test_core_modules_found() -> None:
    names = {path.name for path in MODULES}
    assert {"flags.py", "model.py", "actions.py", "plan.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = "syncd.core"
    bad = [f"line {line}: {module}" for line, module in _imports(tree, package)
           if _forbidden(module)]
    # Inside syncd, core may only depend on core.
    bad += [f"line {line}: {module}" for line, module in _imports(tree, package)
            if module.startswith("syncd.") and not module.startswith("syncd.core")
            and module not in ("syncd.core", "syncd.errors")]
    assert not bad, f"{path.name} imports I/O or outer layers: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_io_calls(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"line {node.lineno}: {node.func.id}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in FORBIDDEN_CALLS
    ]
    assert not bad, f"{path.name} does I/O: {bad}"


def test_checker_catches_violations() -> None:
    """The checks above must be able to fail."""
    tree = ast.parse("import os.path\nfrom syncd.adapters import imap\nfrom .. import engine\n"
                     "def f():\n    import time\n")
    modules = [module for _, module in _imports(tree, "syncd.core")]
    assert all(_forbidden(m) for m in ("os.path", "syncd.adapters", "time"))
    assert "syncd.engine" in modules
    assert "time" in modules
