"""Placeholders (max_size), `syncd fetch`, fetch_flagged and `syncd prune` against the real
Dovecot (README, "Partial mirrors"). A placeholder holds the original's headers and a short
body; it is never uploaded: moved by the mail client into another folder, it becomes a
server-side copy of the original."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from syncd.core.placeholder import placeholder_of
from tests.crash.crash_support import write_local
from tests.integration.test_sync_policy import (
    rename_flags,
    server_snapshot,
    set_key,
    synced_ok,
)
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, local_files, run_cli, write_config

BIG = 50_000  # bytes: over max_size below
MAX_SIZE = "    max_size: 20k\n"


def big_message(i: int, folder: str = "INBOX") -> bytes:
    return make_message(i, folder=folder, size=BIG)


def mid(i: int) -> str:
    """The Message-ID make_message gives message ``i`` of INBOX."""
    return re.search(rb"Message-ID: (<[^>]+>)", make_message(i)).group(1).decode()


def local_by_subject(account: Account, folder: str, i: int) -> Path:
    needle = f"Test message {i} in".encode()
    found = [p for _, p in local_files(account.folder_dir(folder)) if needle in p.read_bytes()]
    assert len(found) == 1, (folder, i, found)
    return found[0]


def is_placeholder(path: Path) -> bool:
    return placeholder_of(path.read_bytes()) is not None


def state_placeholders(account: Account) -> dict[str, int]:
    """Maildir key -> the state's placeholder mark, every folder."""
    with sqlite3.connect(account.state_dir / f"{account.name}.sqlite3") as db:
        return dict(db.execute("SELECT maildir_key, placeholder FROM message"))


def fetch(account: Account, *paths: Path) -> tuple[int, str, str]:
    return run_cli("--config", str(account.config), "fetch", *map(str, paths))


def seeded(dovecot: Dovecot, user: User, tmp_path: Path, extra: str = "") -> Account:
    dovecot.append(user, "INBOX", make_message(1), "\\Seen")
    dovecot.append(user, "INBOX", big_message(2), "\\Seen")
    dovecot.append(user, "INBOX", big_message(3))
    return write_config(tmp_path, dovecot, user, extra=MAX_SIZE + extra)


def test_a_big_message_becomes_a_placeholder_whose_flags_sync_both_ways(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    account = seeded(dovecot, user, tmp_path)
    out = synced_ok(account)
    assert "+3 down" in out, out
    small = local_by_subject(account, "INBOX", 1)
    assert small.read_bytes() == make_message(1).replace(b"\r\n", b"\n")
    holder = local_by_subject(account, "INBOX", 2)
    data = holder.read_bytes()
    found = placeholder_of(data)
    assert found is not None and found.size == BIG and found.folder == "INBOX"
    assert b"syncd fetch" in data and len(data) < 2000
    assert f"Message-ID: {mid(2)}".encode() in data  # the original headers
    assert b"xxxxxxxx" not in data  # no body
    assert set(state_placeholders(account).values()) == {0, 1}
    assert synced_ok(account).count("+0 down +0 up -0") == 1  # idempotent

    # flags: local -> server, server -> local, as for any message
    uids = {m.message_id: uid for uid, m in dovecot.messages(user, "INBOX").items()}
    rename_flags(holder, "FS")
    time.sleep(0.01)
    synced_ok(account)
    assert "\\Flagged" in dovecot.messages(user, "INBOX")[uids[mid(2)]].flags
    dovecot.add_flags(user, "INBOX", uids[mid(3)], "\\Answered")
    synced_ok(account)
    assert local_by_subject(account, "INBOX", 3).name.endswith(":2,R")
    # the server copies are still the full messages, and nothing was uploaded
    assert [m.size for m in dovecot.messages(user, "INBOX").values()].count(BIG) == 2
    assert len(dovecot.messages(user, "INBOX")) == 3

    # max_size raised past them: the placeholders are replaced by the full messages, in place
    set_key(account, "max_size: 1MB")
    synced_ok(account)
    assert not any(is_placeholder(p) for _, p in local_files(account.folder_dir("INBOX")))
    assert local_by_subject(account, "INBOX", 2).name.endswith(":2,FS")
    assert set(state_placeholders(account).values()) == {0}
    assert "+0 down +0 up -0" in synced_ok(account)


def test_syncd_fetch_replaces_a_placeholder_in_place(dovecot: Dovecot, user: User,
                                                     tmp_path: Path) -> None:
    account = seeded(dovecot, user, tmp_path)
    synced_ok(account)
    holder = rename_flags(local_by_subject(account, "INBOX", 2), "FS")
    before = server_snapshot(dovecot, user)
    rc, out, err = fetch(account, holder)
    assert rc == 0, out + err
    assert holder.exists() and not is_placeholder(holder)  # same name: same flags
    assert holder.read_bytes() == big_message(2).replace(b"\r\n", b"\n")
    assert state_placeholders(account)[holder.name.split(":")[0]] == 0
    assert server_snapshot(dovecot, user) == before
    assert "+0 down +0 up -0" in synced_ok(account)
    assert len(local_files(account.folder_dir("INBOX"))) == 3

    # a file that is no placeholder, one outside any configured Maildir: usage errors (2),
    # and the good one in the same call is still fetched
    other = local_by_subject(account, "INBOX", 3)
    stray = tmp_path / "stray" / "cur" / "x:2,S"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"Subject: x\n\nx\n")
    rc, out, err = fetch(account, holder, stray, other)
    assert rc == 2
    assert "not a placeholder" in err and "not in the Maildir" in err, err
    assert not is_placeholder(other)


def test_fetch_killed_midway_leaves_one_consistent_message(dovecot: Dovecot, user: User,
                                                           tmp_path: Path) -> None:
    """A failure after the full message is on disk but before the state is told (the
    checkpoint between them): the file is whole, the next sync settles the mark from the
    file, nothing is duplicated or lost; a failure before the rename leaves the placeholder."""
    from syncd import faults

    def crash(step: str) -> None:
        raise faults.InjectedCrash(step, 0)

    account = seeded(dovecot, user, tmp_path)
    synced_ok(account)
    holder = local_by_subject(account, "INBOX", 2)
    for point, whole in (("fetch_full.staged", False), ("fetch_full.rename", True)):
        faults.add_hook(point, crash)
        try:
            with pytest.raises(faults.InjectedCrash):
                fetch(account, holder)
        finally:
            faults.add_hook(point, None)
        assert is_placeholder(holder) is not whole
        synced_ok(account)  # recovery
        files = local_files(account.folder_dir("INBOX"))
        assert len(files) == 3, files
        assert not list((account.folder_dir("INBOX") / "tmp").iterdir())
        key = holder.name.split(":")[0]
        assert state_placeholders(account)[key] == int(not whole)
    assert len(dovecot.messages(user, "INBOX")) == 3


def test_fetch_flagged_replaces_flagged_placeholders(dovecot: Dovecot, user: User,
                                                     tmp_path: Path) -> None:
    account = seeded(dovecot, user, tmp_path, extra="    fetch_flagged: true\n")
    synced_ok(account)
    assert is_placeholder(local_by_subject(account, "INBOX", 2))
    # flagged locally
    rename_flags(local_by_subject(account, "INBOX", 2), "FS")
    time.sleep(0.01)
    synced_ok(account)
    two = local_by_subject(account, "INBOX", 2)
    assert not is_placeholder(two) and two.name.endswith(":2,FS")
    # flagged on the server
    uids = {m.message_id: uid for uid, m in dovecot.messages(user, "INBOX").items()}
    dovecot.add_flags(user, "INBOX", uids[mid(3)], "\\Flagged")
    synced_ok(account)
    assert not is_placeholder(local_by_subject(account, "INBOX", 3))
    assert "+0 down +0 up -0" in synced_ok(account)
    assert len(dovecot.messages(user, "INBOX")) == 3


@pytest.mark.parametrize("archive", ["Archive", "Zarchive"])
def test_a_placeholder_moved_by_the_mail_client_is_copied_on_the_server(
        dovecot: Dovecot, user: User, tmp_path: Path, archive: str) -> None:
    """Either folder may sync first: the destination copies from the original (CopyOriginal),
    or the source copies to the destination before its deletion (rescue_moved)."""
    dovecot.create_folder(user, archive)
    account = seeded(dovecot, user, tmp_path)
    synced_ok(account)
    # mutt's move: a new file in Archive with the same content, the old one unlinked
    holder = local_by_subject(account, "INBOX", 2)
    write_local(account, archive, holder.read_bytes(), "S")
    holder.unlink()
    # and a copy (the source stays)
    write_local(account, archive, local_by_subject(account, "INBOX", 3).read_bytes(), "F")
    time.sleep(0.01)
    synced_ok(account)

    copies = dovecot.messages(user, archive)
    assert sorted(m.message_id for m in copies.values()) == [
        mid(2), mid(3)]
    for message in copies.values():  # the originals, in full: never the placeholder
        assert message.size == BIG and b"X-Syncd-Placeholder" not in message.body
    flags = {m.message_id: m.flags for m in copies.values()}
    assert "\\Flagged" in flags[mid(3)]
    inbox = dovecot.messages(user, "INBOX")
    assert sorted(m.message_id for m in inbox.values()) == [
        mid(1), mid(3)]
    assert "+0 down +0 up -0" in synced_ok(account)
    assert len(local_files(account.folder_dir(archive))) == 2
    assert all(is_placeholder(p) for _, p in local_files(account.folder_dir(archive)))


def test_a_moved_placeholder_whose_original_is_gone_stays_local(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.create_folder(user, "Archive")
    account = seeded(dovecot, user, tmp_path)
    synced_ok(account)
    holder = local_by_subject(account, "INBOX", 2)
    data = holder.read_bytes()
    uids = {m.message_id: uid for uid, m in dovecot.messages(user, "INBOX").items()}
    dovecot.expunge(user, "INBOX", uids[mid(2)])
    synced_ok(account)  # the server's deletion reaches the Maildir
    write_local(account, "Archive", data, "S")  # a placeholder from elsewhere
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err  # reported, not a failure: nothing is left to do
    assert "no original on the server" in out + err
    assert dovecot.messages(user, "Archive") == {}  # never APPENDed
    assert len(local_files(account.folder_dir("Archive"))) == 1
    synced_ok(account)
    assert dovecot.messages(user, "Archive") == {}


def test_prune_removes_local_copies_outside_the_window(dovecot: Dovecot, user: User,
                                                       tmp_path: Path) -> None:
    now = time.time()
    for i, age in enumerate([200, 100, 10, 1]):
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - age * 86400)
    account = write_config(tmp_path, dovecot, user)
    synced_ok(account)
    set_key(account, "max_age: 30d")
    synced_ok(account)  # parks messages 0 and 1 outside the window
    before = server_snapshot(dovecot, user)
    rc, out, err = run_cli("--config", str(account.config), "prune", account.name,
                           "--dry-run")
    assert rc == 0, err
    assert out.count("would remove") == 3, out  # two files and the summary
    assert len(local_files(account.folder_dir("INBOX"))) == 4
    rc, out, err = run_cli("--config", str(account.config), "prune", account.name)
    assert rc == 0, err
    assert "removed 2 local copies" in out, out
    remaining = {p.read_bytes() for _, p in local_files(account.folder_dir("INBOX"))}
    assert remaining == {make_message(i).replace(b"\r\n", b"\n") for i in (2, 3)}
    assert server_snapshot(dovecot, user) == before
    assert "+0 down +0 up -0" in synced_ok(account)
    assert server_snapshot(dovecot, user) == before
    # widening the window brings them back
    set_key(account, "max_age: 300d")
    assert "+2 down" in synced_ok(account)


def sync_only(account: Account, folder: str) -> None:
    """A sync of one folder, as the daemon runs one for a watcher's or IDLE's event."""
    from syncd.config.cache import load_settings
    from syncd.imap.account import AccountSync
    from syncd.imap.client import ImapSession
    from syncd.store.state import StateStore

    settings = load_settings(account.config)
    config = settings.accounts[account.name]
    with StateStore(config.state_path) as state:
        result = AccountSync(config, state, lambda: ImapSession.connect(
            config, lambda: account.user.password)).run(frozenset({folder}))
    assert result.ok, result.summary()


def test_a_moved_placeholder_is_copied_before_its_source_folder_deletes_it(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """The daemon syncs the folder the placeholder left first: the original is copied to
    where the mail client moved it before it is expunged, never lost, never APPENDed."""
    dovecot.create_folder(user, "Archive")
    account = seeded(dovecot, user, tmp_path, extra="    trash_folder: Trash\n")
    dovecot.create_folder(user, "Trash")
    synced_ok(account)
    holder = local_by_subject(account, "INBOX", 2)
    moved = write_local(account, "Archive", holder.read_bytes(), "FS")
    holder.unlink()
    time.sleep(0.01)
    sync_only(account, "INBOX")
    copies = dovecot.messages(user, "Archive")
    assert [(m.message_id, m.size) for m in copies.values()] == [(mid(2), BIG)]
    assert mid(2) not in {m.message_id for m in dovecot.messages(user, "INBOX").values()}
    synced_ok(account)
    synced_ok(account)
    copies = dovecot.messages(user, "Archive")
    assert [(m.message_id, m.size) for m in copies.values()] == [(mid(2), BIG)]
    assert {"\\Flagged", "\\Seen"} <= set(next(iter(copies.values())).flags)
    assert len(local_files(account.folder_dir("Archive"))) == 1 and moved.exists()
    assert is_placeholder(moved)
    assert "+0 down +0 up -0" in synced_ok(account)
