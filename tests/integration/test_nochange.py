"""The no-change check of `syncd sync` (syncd/imap/nochange.py) against the real Dovecot: with
nothing to do, one login, one LIST-STATUS and no engine; with anything to do on either side,
the full sync runs after it and does it.

Which path ran is read from Dovecot's log: the check logs in once; when it hands over, the
engine logs in a second time."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    Account,
    assert_folder_in_sync,
    local_files,
    run_cli,
    sync,
    synced_ok,
    write_config,
)


def settled(dovecot: Dovecot, user: User, tmp_path: Path, **config: str) -> Account:
    """An account synced, and synced again a second later: its Maildir stamps then vouch for
    it (a stamp taken within a second of the last change does not)."""
    dovecot.seed(user, "INBOX", [(make_message(i), "S" if i % 2 else "") for i in range(6)])
    dovecot.seed(user, "Lists/python", [make_message(i, folder="Lists/python")
                                        for i in range(3)])
    account = write_config(tmp_path, dovecot, user, **config)
    synced_ok(account)
    time.sleep(1.2)
    synced_ok(account)
    return account


def logins(dovecot: Dovecot, mark: int) -> int:
    return dovecot.log_text(mark).count("Login: user=")


def last_syncs(account: Account) -> dict[str, float]:
    db = sqlite3.connect(account.state_dir / f"{account.name}.sqlite3")
    try:
        return dict(db.execute("SELECT remote_name, last_sync FROM folder"))
    finally:
        db.close()


def test_nothing_to_do_is_one_login(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """One login and one LIST-STATUS, each folder's last_sync recorded. (That the engine and
    imapclient are not even imported is checked by test_imap_round_trips.py's import test.)"""
    account = settled(dovecot, user, tmp_path)
    before = last_syncs(account)
    mark = dovecot.log_mark()
    assert "test: +0 down +0 up -0 ~0 flags" in synced_ok(account)
    assert logins(dovecot, mark) == 1, dovecot.log_text(mark)
    after = last_syncs(account)
    assert set(after) == set(before) == {"INBOX", "Lists/python"}
    assert all(after[name] > before[name] for name in after), (before, after)


def _server_new(dovecot: Dovecot, user: User, account: Account) -> str:
    dovecot.deliver(user, "INBOX", make_message(100))
    return "+1 down"


def _server_flag(dovecot: Dovecot, user: User, account: Account) -> str:
    dovecot.add_flags(user, "INBOX", dovecot.uids(user, "INBOX")[0], "\\Flagged")
    return "~1 flags"


def _server_expunge(dovecot: Dovecot, user: User, account: Account) -> str:
    dovecot.expunge(user, "Lists/python", dovecot.uids(user, "Lists/python")[0])
    return "-1 "


def _server_folder(dovecot: Dovecot, user: User, account: Account) -> str:
    dovecot.seed(user, "Archive", [make_message(200, folder="Archive")])
    return "+1 down"


def _local_flag(dovecot: Dovecot, user: User, account: Account) -> str:
    _, path = sorted(local_files(account.folder_dir("INBOX")))[0]
    base = path.name.split(":2,", 1)[0]
    os.rename(path, path.parent.parent / "cur" / f"{base}:2,FS")
    return "~1 flags"


def _local_new(dovecot: Dovecot, user: User, account: Account) -> str:
    new = account.folder_dir("INBOX") / "new"
    (new / "1700000000.local1.host").write_bytes(make_message(300).replace(b"\r\n", b"\n"))
    return "+1 up"


def _local_folder(dovecot: Dovecot, user: User, account: Account) -> str:
    for sub in ("cur", "new", "tmp"):
        (account.maildir / "Drafts" / sub).mkdir(parents=True)
    return "1 folders created"


def test_a_first_sync_logs_in_once(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """No state database yet: the no-change check could only say "a full sync", after a
    login and a listing of its own, so it is not asked; the engine has the connection opened
    ahead (one login)."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    mark = dovecot.log_mark()
    rc, out, err = run_cli("--config", str(account.config), "--debug", "sync")
    assert rc == 0 and "+3 down" in out, out + err
    assert "a full sync" not in err, err
    assert logins(dovecot, mark) == 1, dovecot.log_text(mark)


@pytest.mark.parametrize("change", [_server_new, _server_flag, _server_expunge, _server_folder,
                                    _local_flag, _local_new, _local_folder],
                         ids=lambda f: f.__name__.strip("_"))
def test_any_change_hands_over_to_the_full_sync(
        dovecot: Dovecot, user: User, tmp_path: Path,
        change: Callable[[Dovecot, User, Account], str]) -> None:
    account = settled(dovecot, user, tmp_path)
    expected = change(dovecot, user, account)
    mark = dovecot.log_mark()
    out = synced_ok(account)
    assert expected in out, out
    # The check's connection and the engine's, both logged in (none opened for nothing).
    assert logins(dovecot, mark) == 2, dovecot.log_text(mark)
    assert "no auth attempts" not in dovecot.log_text(mark)
    for folder in dovecot.folders(user):
        assert_folder_in_sync(dovecot, user, account, folder)
    time.sleep(1.2)
    synced_ok(account)  # takes the stamps again, a second after the change
    mark = dovecot.log_mark()
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)
    assert logins(dovecot, mark) == 1, dovecot.log_text(mark)


def test_right_after_a_sync_the_files_are_looked_at_without_the_engine(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """The stamps a sync takes right after changing a folder do not vouch for it (a change in
    the same second would not move an mtime): the check compares the files with the state
    instead, and a change made in that second is still found."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dovecot, user)
    assert "+4 down" in synced_ok(account)
    mark = dovecot.log_mark()
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)
    assert logins(dovecot, mark) == 1, dovecot.log_text(mark)  # no engine

    _local_flag(dovecot, user, account)  # within a second of the stamp just taken
    mark = dovecot.log_mark()
    assert "~1 flags" in synced_ok(account)
    assert logins(dovecot, mark) == 2, dovecot.log_text(mark)
    assert_folder_in_sync(dovecot, user, account, "INBOX")


def test_an_interrupted_transfer_is_finished_by_the_full_sync(dovecot: Dovecot, user: User,
                                                              tmp_path: Path) -> None:
    from syncd.store.state import StateStore

    account = settled(dovecot, user, tmp_path)
    store = StateStore(account.state_dir / f"{account.name}.sqlite3")
    try:
        folder = store.folder("INBOX")
        assert folder is not None
        with store.transaction():
            store.add_intents(folder.id, "download", [(9999, "1700000000.gone.host", "", None)])
    finally:
        store.close()
    mark = dovecot.log_mark()
    assert "+0 down" in synced_ok(account)
    assert logins(dovecot, mark) == 2, dovecot.log_text(mark)
    store = StateStore(account.state_dir / f"{account.name}.sqlite3")
    try:
        assert store.open_intents() == []
    finally:
        store.close()


def test_an_excluded_local_folder_does_not_count(dovecot: Dovecot, user: User,
                                                 tmp_path: Path) -> None:
    account = settled(dovecot, user, tmp_path,
                      extra="    folders:\n      exclude: [Junk]\n")
    for sub in ("cur", "new", "tmp"):
        (account.maildir / "Junk" / sub).mkdir(parents=True)
    mark = dovecot.log_mark()
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)
    assert logins(dovecot, mark) == 1, dovecot.log_text(mark)
    assert "Junk" not in dovecot.folders(user)


def test_a_refused_login_is_tried_once_and_the_password_asked_once(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    account = settled(dovecot, user, tmp_path)
    asked = tmp_path / "asked"
    # Not a word: syncd redacts every password it has seen from what it prints, in this process
    # too, and the tests after this one check messages that contain words.
    wrong = "x7Qw-not-the-password"
    text = account.config.read_text().replace(
        f'password_command: "printf {user.password}"',
        f"password_command: \"sh -c 'echo >> {asked}; printf {wrong}'\"")
    account.config.write_text(text)
    mark = dovecot.log_mark()
    rc, out, err = sync(account)
    assert rc == 1
    assert f"login as {user.name!r}" in out + err, out + err
    assert asked.read_text().count("\n") == 1
    log = dovecot.log_text(mark)
    assert log.count("auth failed") == 1, log
