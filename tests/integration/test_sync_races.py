"""Races inside one sync, against the real Dovecot (issue 16): a mail reader's change made
while a sync executes its plan, a failure on one of several parallel connections, and a
`syncd sync` that finds the account busy."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import faults
from syncd.locks import AccountLock
from syncd.store.maildir import MaildirFolder
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    assert_folder_in_sync,
    local_files,
    sync,
    synced_ok,
    write_config,
)
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def hooks() -> Iterator[dict[str, object]]:
    """faults.add_hook, undone after the test."""
    added: dict[str, object] = {}
    yield added
    for step in added:
        faults.add_hook(step, None)


def mutt_flag(folder_dir: Path, path: Path, letter: str) -> Path:
    """What mutt does to flag a message: rename it into cur/ with the letter added."""
    key, _, info = path.name.partition(":2,")
    target = folder_dir / "cur" / f"{key}:2,{''.join(sorted(set(info) | {letter}))}"
    os.rename(path, target)
    return target


def test_a_rename_during_execute_is_picked_up_by_the_next_sync(
        dovecot: Dovecot, user: User, tmp_path: Path, hooks: dict[str, object]) -> None:
    """Item 3: mutt flags a message while the sync downloads new mail. The stamp used to be
    taken after execute and so vouched for the rename: the next sync (the no-change check
    and the engine alike) skipped the folder, and the flag never reached the server."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    synced_ok(account)
    inbox = account.folder_dir("INBOX")
    [(_, victim), *_] = local_files(inbox)
    dovecot.append(user, "INBOX", make_message(10))  # gives the next sync a download

    def rename(step: str) -> None:
        if not hooks.get("done"):
            hooks["done"] = mutt_flag(inbox, victim, "F")
            # The sync goes on for more than a second after the rename (a big download):
            # the racy-stamp slack cannot rescue it.
            time.sleep(1.2)

    faults.add_hook("download.commit", rename)
    hooks["download.commit"] = rename
    synced_ok(account)
    assert hooks.get("done"), "the hook did not run"
    faults.add_hook("download.commit", None)

    synced_ok(account)  # the next sync, nothing else changed since
    flagged = [m for m in dovecot.messages(user, "INBOX", bodies=False).values()
               if "\\Flagged" in m.flags]
    assert len(flagged) == 1, "the rename made during the sync was never pushed"
    assert_folder_in_sync(dovecot, user, account, "INBOX")


def test_own_renames_cost_one_scan_not_one_per_sync(
        dovecot: Dovecot, user: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3, the other side: a sync that renames files itself (flags pulled down) leaves a
    stamp that a later sync trusts: after a settling sync, no scan at all."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dovecot, user, extra="    connections: 1\n")
    synced_ok(account)
    dovecot.add_flags(user, "INBOX", dovecot.uids(user, "INBOX"), ["\\Seen"])
    synced_ok(account)  # renames every local file
    assert all("S" in flags for flags, _ in local_files(account.folder_dir("INBOX")))
    time.sleep(1.2)
    synced_ok(account)  # the stamp of a change this recent is racy: one look, then a stamp
    scans: list[Path] = []
    original = MaildirFolder.scan

    def counting(self: MaildirFolder) -> object:
        scans.append(self.path)
        return original(self)

    monkeypatch.setattr(MaildirFolder, "scan", counting)
    synced_ok(account)
    synced_ok(account)
    assert scans == [], f"settled folders were scanned again: {scans}"


def test_a_failure_on_a_parallel_connection_belongs_to_its_folder(
        dovecot: Dovecot, user: User, tmp_path: Path, hooks: dict[str, object]) -> None:
    """Item 5: two big first syncs on two connections; the extra connection dies after its
    first download group. Its folder must report the error (it used to look complete, and
    the error went to whichever folder had no changes); the other folder none."""
    for folder in ("Big1", "Big2"):
        dovecot.seed(user, folder, [make_message(i, folder=folder) for i in range(600)])
    account = write_config(tmp_path, dovecot, user, extra="    connections: 2\n")
    failed_in: list[str] = []

    def die(step: str) -> None:
        name = threading.current_thread().name
        if name.startswith("sync-") and not failed_in:
            failed_in.append(name)
            raise ConnectionResetError("injected: the extra connection died")

    faults.add_hook("download.commit", die)
    hooks["download.commit"] = die
    rc, out, err = sync(account)
    faults.add_hook("download.commit", None)
    assert failed_in, "the extra connection never ran"
    assert rc == 1, (out, err)
    errors = [line for line in out.splitlines() + err.splitlines() if "injected" in line]
    assert len(errors) == 1, out + err
    assert "Big1" in errors[0] or "Big2" in errors[0], errors
    synced_ok(account)  # and the next sync completes both
    for folder in ("Big1", "Big2"):
        assert assert_folder_in_sync(dovecot, user, account, folder) == 600


def test_a_busy_account_is_not_even_dialled(dovecot: Dovecot, user: User,
                                           tmp_path: Path) -> None:
    """Item 2: `syncd sync` takes the account's lock before it connects or logs in; busy, it
    says who holds the lock and leaves the server alone."""
    dovecot.seed(user, "INBOX", [make_message(0)])
    with TcpProxy(dovecot.imaps_port) as proxy:
        account = write_config(tmp_path, dovecot, user, port=proxy.port)
        lock = AccountLock(account.name, account.state_dir)
        lock.acquire()  # another open file description: busy, even for this process
        try:
            rc, out, err = sync(account)
        finally:
            lock.release()
        assert rc == 1
        assert f"pid {os.getpid()}" in out + err, out + err
        time.sleep(0.2)
        assert proxy.accepted == 0, "a busy account was dialled"
        synced_ok(account)
        assert proxy.accepted >= 1
    assert_folder_in_sync(dovecot, user, account, "INBOX")
