"""syncd never expunges a message the user did not delete (issue 15
defect 1), against a real Dovecot that advertises no UIDPLUS and no MOVE: a plain EXPUNGE
there removes every message marked \\Deleted, those another client marked and those that
mutt only marked T (which syncd pushes as \\Deleted) included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User, make_message, running
from tests.support.syncd_env import (
    Account,
    assert_folder_in_sync,
    local_files,
    synced_ok,
    write_config,
)

# A bare IMAP4rev1 server: no UIDPLUS (so no UID EXPUNGE), no MOVE, no CONDSTORE.
BARE_CAPABILITY = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID IDLE UNSELECT CHILDREN NAMESPACE LITERAL+"


@pytest.fixture(scope="module")
def bare_dovecot(dovecot_workroot: Path) -> Iterator[Dovecot]:
    with running(Dovecot(dovecot_workroot / "dovecot-no-uidplus",
                         imap_capability=BARE_CAPABILITY)) as dc:
        yield dc


def local_by_text(account: Account, folder: str = "INBOX") -> dict[int, str]:
    """Test message number -> local flags."""
    found: dict[int, str] = {}
    for flags, path in local_files(account.folder_dir(folder)):
        body = path.read_bytes()
        for n in range(10):
            if f"test message {n} ".encode() in body:
                assert n not in found, f"message {n} twice locally"
                found[n] = flags
    return found


def server_by_text(dc: Dovecot, user: User, folder: str = "INBOX") -> dict[int, set[str]]:
    """Test message number -> server flags."""
    found: dict[int, set[str]] = {}
    for message in dc.messages(user, folder).values():
        for n in range(10):
            if f"test message {n} ".encode() in message.body:
                assert n not in found, f"message {n} twice on the server"
                found[n] = {f for f in message.flags if f != "\\Recent"}
    return found


def local_path(account: Account, n: int) -> Path:
    [path] = [p for _, p in local_files(account.folder_dir("INBOX"))
              if f"test message {n} ".encode() in p.read_bytes()]
    return path


def set_local_flags(path: Path, flags: str) -> None:
    base = path.name.split(":2,", 1)[0]
    os.rename(path, path.parent.parent / "cur" / f"{base}:2,{flags}")


def test_no_uidplus_expunges_only_what_the_user_deleted(bare_dovecot: Dovecot,
                                                         tmp_path: Path) -> None:
    dc = bare_dovecot
    user = dc.add_user()
    uids = dc.seed(user, "INBOX", [(make_message(n), "S") for n in range(5)])
    account = write_config(tmp_path, dc, user)
    synced_ok(account)

    dc.add_flags(user, "INBOX", uids[0], ["\\Deleted"])  # another client's mark
    set_local_flags(local_path(account, 1), "ST")          # mutt's "d": marked, undeletable
    local_path(account, 2).unlink()                          # the user's real deletion

    synced_ok(account)
    server = server_by_text(dc, user)
    # Nothing but message 2 may go, and it may not go yet: a plain EXPUNGE would take 0 and 1.
    assert set(server) == {0, 1, 2, 3, 4}, server
    assert "\\Deleted" in server[0] and "\\Deleted" in server[1] and "\\Deleted" in server[2]
    local = local_by_text(account)
    assert set(local) == {0, 1, 3, 4}, local
    assert local[0] == "ST" and local[1] == "ST"

    # While others stay marked, the deletion stays pending: message 2 is neither downloaded
    # again nor expunged, and nothing else changes.
    out = synced_ok(account)
    assert "+0 down +0 up" in out, out
    assert set(server_by_text(dc, user)) == {0, 1, 2, 3, 4}
    assert set(local_by_text(account)) == {0, 1, 3, 4}

    # The other client clears its mark; the user undeletes message 1 in mutt. Now only
    # message 2 is marked: the pending expunge goes through.
    dc.remove_flags(user, "INBOX", uids[0], ["\\Deleted"])
    set_local_flags(local_path(account, 1), "S")
    synced_ok(account)
    server = server_by_text(dc, user)
    assert set(server) == {0, 1, 3, 4}, server
    assert all(flags == {"\\Seen"} for flags in server.values()), server
    assert local_by_text(account) == {0: "S", 1: "S", 3: "S", 4: "S"}
    assert_folder_in_sync(dc, user, account, "INBOX")
    out = synced_ok(account)
    assert "+0 down +0 up -0 ~0 flags" in out, out


def test_no_move_trash_copies_once_and_expunges_only_ours(bare_dovecot: Dovecot,
                                                          tmp_path: Path) -> None:
    """trash_folder without MOVE: COPY, then the expunge under the same rule; a deferred
    expunge is retried without copying again."""
    dc = bare_dovecot
    user = dc.add_user()
    uids = dc.seed(user, "INBOX", [(make_message(n), "S") for n in range(4)])
    dc.create_folder(user, "Trash")
    account = write_config(tmp_path, dc, user, extra="    trash_folder: Trash\n")
    synced_ok(account)

    dc.add_flags(user, "INBOX", uids[0], ["\\Deleted"])  # another client's mark
    local_path(account, 2).unlink()
    synced_ok(account)
    assert set(server_by_text(dc, user)) == {0, 1, 2, 3}
    assert set(server_by_text(dc, user, "Trash")) == {2}
    assert set(local_by_text(account, "Trash")) == {2}

    synced_ok(account)  # still blocked: no second copy
    assert len(dc.messages(user, "Trash")) == 1

    dc.remove_flags(user, "INBOX", uids[0], ["\\Deleted"])
    synced_ok(account)
    assert set(server_by_text(dc, user)) == {0, 1, 3}
    assert len(dc.messages(user, "Trash")) == 1
    assert set(local_by_text(account)) == {0, 1, 3}
    assert set(local_by_text(account, "Trash")) == {2}
    assert_folder_in_sync(dc, user, account, "INBOX")
    assert_folder_in_sync(dc, user, account, "Trash")


def test_uidplus_expunges_only_ours_at_once(dovecot: Dovecot, user: User,
                                            tmp_path: Path) -> None:
    """With UIDPLUS the deletion goes through at once, by UID, whatever else is marked."""
    uids = dovecot.seed(user, "INBOX", [(make_message(n), "S") for n in range(4)])
    account = write_config(tmp_path, dovecot, user)
    synced_ok(account)
    dovecot.add_flags(user, "INBOX", uids[0], ["\\Deleted"])
    set_local_flags(local_path(account, 1), "ST")
    local_path(account, 2).unlink()
    synced_ok(account)
    assert set(server_by_text(dovecot, user)) == {0, 1, 3}
    assert set(local_by_text(account)) == {0, 1, 3}
    assert_folder_in_sync(dovecot, user, account, "INBOX")
