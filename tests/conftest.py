"""Shared pytest fixtures: a real, private Dovecot on 127.0.0.1 (see tests/support/dovecot.py).

Fixtures:
- ``dovecot_workroot`` (session): a fresh directory under /var/tmp, mode 0755, removed at the
  end (kept if SYNCD_TEST_KEEP=1 is set, for post-mortems).
- ``dovecot`` (session): one running instance with Dovecot's full capability list.
- ``dovecot_plain_imap`` (session, started only if a test asks for it): CONDSTORE, QRESYNC,
  ENABLE and NOTIFY hidden.
- ``user`` (function): a fresh user on ``dovecot``.
- ``dovecot_factory`` (function): ``make(**Dovecot kwargs) -> Dovecot`` for tests that need
  their own instance (restarts, outages, special config); every instance is stopped afterwards.

Missing Dovecot is a failure with a clear message, never a skip: ``make deps`` installs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # so that `tests.support` imports under plain `pytest` too
    sys.path.insert(0, str(_ROOT))

from tests.support.dovecot import (  # noqa: E402
    PLAIN_IMAP_CAPABILITY,
    Dovecot,
    User,
    running,
    start_or_fail,
)

_DOVECOT_FIXTURES = {"dovecot", "dovecot_plain_imap", "dovecot_factory", "user"}


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir() -> Iterator[None]:
    """syncd caches validated config files under $XDG_CACHE_HOME/syncd: keep the suite's
    (thousands of throw-away configs) out of the real home. Subprocesses inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="syncd-tests-cache-") as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a Dovecot fixture get the ``dovecot`` marker (for ``-m "not dovecot"``)."""
    for item in items:
        if _DOVECOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)


@pytest.fixture(scope="session")
def dovecot_workroot() -> Iterator[Path]:
    # Not under tmp_path_factory: /tmp/pytest-of-root is 0700, and Dovecot's unprivileged
    # processes must traverse every directory above their files (notes, gotcha 1).
    root = Path(tempfile.mkdtemp(prefix=f"syncd-tests-{os.getpid()}-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    yield root
    if os.environ.get("SYNCD_TEST_KEEP"):
        print(f"\nSYNCD_TEST_KEEP: test Dovecot files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(dovecot_workroot: Path) -> Iterator[Dovecot]:
    with running(Dovecot(dovecot_workroot / "dovecot")) as dc:
        yield dc


@pytest.fixture(scope="session")
def dovecot_plain_imap(dovecot_workroot: Path) -> Iterator[Dovecot]:
    with running(Dovecot(dovecot_workroot / "dovecot-plain",
                         imap_capability=PLAIN_IMAP_CAPABILITY)) as dc:
        yield dc


@pytest.fixture
def user(dovecot: Dovecot) -> User:
    return dovecot.add_user()


@pytest.fixture
def dovecot_factory(dovecot_workroot: Path) -> Iterator[Callable[..., Dovecot]]:
    made: list[Dovecot] = []

    def make(**kwargs: object) -> Dovecot:
        dc = Dovecot(dovecot_workroot / f"dc-{secrets.token_hex(4)}", **kwargs)  # type: ignore[arg-type]
        made.append(dc)
        return start_or_fail(dc)

    try:
        yield make
    finally:
        for dc in made:
            dc.stop()
