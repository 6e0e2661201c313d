"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config.load import load_config
from syncd.imap.client import ImapSession
from tests.support.dovecot import Dovecot, User
from tests.support.syncd_env import write_config


@pytest.fixture
def session(dovecot: Dovecot, user: User, tmp_path: Path) -> Iterator[ImapSession]:
    """A logged-in ImapSession on the test Dovecot, as the account "test"."""
    account = load_config(write_config(tmp_path, dovecot, user).config).accounts["test"]
    s = ImapSession.connect(account, lambda: user.password)
    try:
        yield s
    finally:
        s.close()
