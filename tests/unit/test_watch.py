"""The Maildir watcher (syncd/service/watch.py) under concurrency, with the installed watchdog
and with every older release pyproject.toml allows (tests/support/oldest.py): a declared lower
bound is a tested one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.service import inotify
from tests.support import oldest, watch_scenarios

REPO = Path(__file__).resolve().parents[2]
# A deadlock shows as a scenario that never ends: its own timeouts report it well within this.
SUBPROCESS_LIMIT = 90.0


@pytest.mark.parametrize("name", sorted(watch_scenarios.SCENARIOS))
def test_watcher_with_installed_watchdog(name: str) -> None:
    watch_scenarios.run(name, "watchdog")


@pytest.mark.skipif(not inotify.available(), reason="Linux only")
@pytest.mark.parametrize("name", sorted(watch_scenarios.SCENARIOS))
def test_watcher_with_one_inotify_thread(name: str) -> None:
    watch_scenarios.run(name, "inotify")


@pytest.mark.parametrize("version", oldest.releases("watchdog"))
def test_watcher_with_older_watchdog(version: str) -> None:
    path = oldest.ensure("watchdog", version)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "tests.support.watch_scenarios"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=SUBPROCESS_LIMIT,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The release asked for is the one that ran, not the venv's.
    assert f"ok watchdog {version}" in proc.stdout, proc.stdout


def test_the_declared_bounds_are_the_tested_ones() -> None:
    """The lower bound is tested above; the upper bound stops at the newest major release
    tested (a new major release may change the threading again)."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("watchdog"))
    import watchdog.version

    major = int(watchdog.version.VERSION_MAJOR)
    assert f"<{major + 1}" in spec, (spec, watchdog.version.VERSION_STRING)
