"""Fixtures of the server matrix: ``server`` is parametrized over every server of
tests/support/servers (each started once per session, skipped with the reason when this
machine lacks it), ``mx`` gives a fresh user on it with a syncd config for that user.

The core scenarios run in ``make test``; those marked ``interop_full`` only with
SYNCD_INTEROP_FULL=1 (``make test-interop``) or when selected with ``-m interop_full``.
SYNCD_INTEROP_SERVERS=cyrus,courier limits the servers (comma-separated kinds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import (
    SERVER_KINDS,
    HarnessError,
    ImapServer,
    ServerUnavailable,
    make_server,
)
from tests.support.servers.matrix import Matrix

_KINDS = tuple(k for k in (os.environ.get("SYNCD_INTEROP_SERVERS") or "").split(",") if k) \
    or SERVER_KINDS
_unavailable: dict[str, str] = {}
_started: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    full = os.environ.get("SYNCD_INTEROP_FULL") == "1" or "interop_full" in (
        config.getoption("markexpr", "") or "")
    here = Path(__file__).parent
    kept, dropped = [], []
    for item in items:
        if here not in Path(item.path).parents:
            kept.append(item)
            continue
        item.add_marker(pytest.mark.interop)
        if item.get_closest_marker("interop_full") and not full:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _started or _unavailable:
        terminalreporter.write_sep("-", "server matrix")
        for kind, secs in _started.items():
            terminalreporter.write_line(f"{kind}: started in {secs:.2f} s")
        for kind, why in _unavailable.items():
            terminalreporter.write_line(f"{kind}: SKIPPED, {why}")


@pytest.fixture(scope="session", params=_KINDS)
def server(request: pytest.FixtureRequest, dovecot_workroot: Path) -> Iterator[ImapServer]:
    kind: str = request.param
    if kind in _unavailable:
        pytest.skip(_unavailable[kind])
    srv = make_server(kind, dovecot_workroot / f"matrix-{kind}")
    try:
        srv.start()
    except ServerUnavailable as e:
        _unavailable[kind] = str(e)
        pytest.skip(str(e))
    except HarnessError as e:
        pytest.fail(f"the test server {kind} did not start (a harness bug): {e}", pytrace=False)
    _started[kind] = srv.start_seconds or 0.0
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def mx(server: ImapServer, tmp_path: Path) -> Matrix:
    """A fresh user on ``server`` with a syncd config (account "mx", layout verbatim)."""
    return Matrix.create(server, tmp_path)
