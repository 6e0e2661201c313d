"""Older releases of a dependency, for tests that must hold across the whole range that
pyproject.toml allows (a bound that is declared is a bound that is tested).

Each release is installed once, without its dependencies, into ``<venv>/oldest/<name>-<version>``
with the venv's own pip; a test puts that directory first on PYTHONPATH of a subprocess.
``make test`` installs them beforehand (``python -m tests.support.oldest``), so the suite itself
needs no network.

This module must not import pytest or syncd.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Releases tested besides each declared lower bound, and why.
EXTRA_RELEASES: dict[str, tuple[str, ...]] = {
    # 6.0.0: the release whose dispatcher holds its lock while it calls handlers, under which
    # the watcher deadlock of issue 16 (item 1) was reproduced.
    "watchdog": ("6.0.0",),
    # Only the lower bound: syncd/imap/wire.py reaches into its internals
    # (tests/unit/test_imap_wire.py runs against it too).
    "imapclient": (),
}


def lower_bound(name: str) -> str:
    """The version in ``name>=X`` among pyproject.toml's dependencies."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    for spec in project["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}\s*>=\s*([\w.]+)(\s*,.*)?", spec.strip())
        if match:
            return match.group(1)
    raise LookupError(f"no lower bound for {name} in pyproject.toml")


def releases(name: str) -> list[str]:
    """The declared lower bound first, then the extra releases."""
    return [lower_bound(name), *EXTRA_RELEASES.get(name, ())]


def install_dir(name: str, version: str) -> Path:
    return Path(sys.prefix) / "oldest" / f"{name}-{version}"


def ensure(name: str, version: str) -> Path:
    """The directory holding that release (installed now if it is not there yet)."""
    target = install_dir(name, version)
    marker = target / ".complete"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--upgrade", "--target", str(target), f"{name}=={version}"],
        capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot install {name}=={version} into {target}:\n{proc.stderr}")
    marker.write_text(f"{name}=={version}\n")
    return target


def main() -> int:
    for name in EXTRA_RELEASES:
        for version in releases(name):
            print(f"{name}=={version}: {ensure(name, version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
