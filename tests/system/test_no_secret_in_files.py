"""No secret, nor what may hold one, in any file syncd writes (issue 16 item 8): a
password_command's text can be ``echo hunter2``, so it stays in the config file alone."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import run_subprocess, write_config


def test_no_file_syncd_writes_holds_the_password_command(
        dovecot: Dovecot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user: User = dovecot.add_user(password="hunter2-" + secrets.token_hex(6))
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the subprocesses' config cache
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    command = f"printf {user.password}"
    assert command in account.config.read_text()
    # Validate and cache, then a cache hit, a status report and a second hit.
    for argv in (("sync",), ("sync",), ("status",), ("check",)):
        out = run_subprocess("--config", str(account.config), *argv)
        assert out.returncode == 0, out.stdout + out.stderr
    written = [path for path in tmp_path.rglob("*")
               if path.is_file() and path != account.config]
    assert any(path.parent == cache / "syncd" for path in written), written
    assert any(path.name == "status.json" for path in written), written
    assert any(path.suffix == ".sqlite3" for path in written), written
    for path in written:
        data = path.read_bytes()
        assert command.encode() not in data, path
        assert user.password.encode() not in data, path
