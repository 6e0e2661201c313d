"""A server whose personal folders live under a namespace prefix (Courier, Cyrus: "INBOX."
with "." as delimiter), emulated by Dovecot with ``prefix = INBOX.`` / ``separator = .``: a
top-level CREATE is refused there ("Client tried to access nonexistent namespace").

syncd asks NAMESPACE (RFC 2342): new local folders are created under the prefix with the
server's delimiter, server folders show locally without the prefix, and a folder the server
refuses is that folder's error, never the account's (issue 15, defect 2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.imap.client import ImapSession
from tests.integration.test_imap_round_trips import commands
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    Account,
    assert_folder_in_sync,
    local_files,
    run_cli,
    sync,
    write_config,
)

PREFIX = "INBOX."


@pytest.fixture
def courier_like(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    return dovecot_factory(inbox_prefix=PREFIX, separator=".")


def local_dir(account: Account, *components: str) -> Path:
    """A folder's directory under the account's Maildir (plain ASCII names)."""
    if account.layout == "maildir++":
        return account.maildir / ("." + ".".join(components))
    return account.maildir.joinpath(*components)


def make_local_folder(path: Path, messages: list[bytes]) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for n, message in enumerate(messages):
        (path / "cur" / f"17000000{n:02d}.M{n}P{n}.host:2,S").write_bytes(
            message.replace(b"\r\n", b"\n"))


def seed(dc: Dovecot, user: User, folder: str, messages: list[bytes]) -> None:
    """Over IMAP: Dovecot's own Maildir++ names leave the namespace prefix out."""
    if folder != "INBOX" and folder not in dc.folders(user):
        dc.create_folder(user, folder)
    for message in messages:
        dc.append(user, folder, message, ["\\Seen"])


def synced(account: Account, expect_rc: int = 0) -> str:
    rc, out, err = sync(account)
    assert rc == expect_rc, f"sync exit {rc}, wanted {expect_rc}: {out}{err}"
    return out + err


def assert_quiet(account: Account, expect_rc: int = 0) -> str:
    out = synced(account, expect_rc)
    assert "+0 down +0 up -0 ~0 flags" in out, out
    return out


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_folders_live_under_the_personal_namespace(courier_like: Dovecot, tmp_path: Path,
                                                   layout: str) -> None:
    dc = courier_like
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(i) for i in range(3)])
    seed(dc, user, "INBOX.Lists", [make_message(i, folder="Lists") for i in range(2)])
    account = write_config(tmp_path, dc, user, layout=layout)
    make_local_folder(local_dir(account, "Archive"),
                      [make_message(i, folder="Archive") for i in range(2)])
    make_local_folder(local_dir(account, "Archive", "2024"),
                      [make_message(9, folder="Archive/2024")])

    out = synced(account)
    assert "+5 down +3 up" in out, out
    assert "created folder 'INBOX.Archive' on the server" in out, out
    assert "created folder 'INBOX.Archive.2024' on the server" in out, out
    folders = dc.folders(user)
    assert {"INBOX.Archive", "INBOX.Archive.2024", "INBOX.Lists"} <= set(folders), folders
    assert not any(name.startswith(("Archive", "Lists")) for name in folders), folders
    inbox = account.maildir if layout == "maildir++" else account.maildir / "INBOX"
    assert_folder_in_sync(dc, user, account, "INBOX", local_dir=inbox)
    assert_folder_in_sync(dc, user, account, "INBOX.Lists", local_dir=local_dir(account, "Lists"))
    assert_folder_in_sync(dc, user, account, "INBOX.Archive",
                          local_dir=local_dir(account, "Archive"))
    assert_folder_in_sync(dc, user, account, "INBOX.Archive.2024",
                          local_dir=local_dir(account, "Archive", "2024"))
    # Nothing laid out under the prefix locally.
    assert not local_dir(account, "INBOX", "Lists").exists()
    assert not (account.maildir / "INBOX" / "Archive").exists()

    assert_quiet(account)
    # The no-change check knows the places too: LOGIN, NAMESPACE and LIST in one round trip.
    assert [c.split(" ", 1)[0] for c in commands(account.config)] == [
        "LOGIN", "NAMESPACE", "LIST", "LOGOUT"]
    # Server-side news reach the prefix-less local folders.
    dc.append(user, "INBOX.Archive", make_message(20, folder="Archive"))
    out = synced(account)
    assert "+1 down" in out, out
    assert_folder_in_sync(dc, user, account, "INBOX.Archive",
                          local_dir=local_dir(account, "Archive"))
    assert_quiet(account)

    rc, out, err = run_cli("--config", str(account.config), "check")
    print(out)
    assert rc == 0, out + err
    assert 'namespace "INBOX."' in out, out
    lists_line = next(line for line in out.splitlines() if "INBOX.Lists" in line)
    assert lists_line.rstrip().endswith(str(local_dir(account, "Lists"))), out


def test_patterns_match_with_or_without_the_prefix(courier_like: Dovecot,
                                                    tmp_path: Path) -> None:
    dc = courier_like
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(0)])
    seed(dc, user, "INBOX.Trash", [make_message(1, folder="Trash")])
    seed(dc, user, "INBOX.Junk", [make_message(2, folder="Junk")])
    seed(dc, user, "INBOX.Lists", [make_message(3, folder="Lists")])
    account = write_config(tmp_path, dc, user, extra=(
        "    folders:\n      include: ['*']\n      exclude: [Trash, INBOX.Junk]\n"))
    synced(account)
    assert not (account.maildir / "Trash").exists()
    assert not (account.maildir / "Junk").exists()
    assert_folder_in_sync(dc, user, account, "INBOX.Lists", local_dir=account.maildir / "Lists")
    assert_quiet(account)


def test_a_refused_create_is_that_folders_error(courier_like: Dovecot, tmp_path: Path) -> None:
    dc = courier_like
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(i) for i in range(2)])
    account = write_config(tmp_path, dc, user)
    # Dovecot refuses a name that begins with "~" ("Invalid mailbox name").
    refused = make_message(5, folder="~Refused")
    make_local_folder(account.maildir / "~Refused", [refused])
    make_local_folder(account.maildir / "Good", [make_message(6, folder="Good")])

    out = synced(account, expect_rc=1)
    print(out)
    assert "INBOX.~Refused" in out and "cannot create" in out, out
    assert "Begins with '~'" in out, out
    assert_folder_in_sync(dc, user, account, "INBOX", local_dir=account.maildir / "INBOX")
    assert_folder_in_sync(dc, user, account, "INBOX.Good", local_dir=account.maildir / "Good")
    # The local folder and its message are left alone, and tried again next time.
    assert [p.read_bytes() for _, p in local_files(account.maildir / "~Refused")] == [
        refused.replace(b"\r\n", b"\n")]
    out = assert_quiet(account, expect_rc=1)
    assert "INBOX.~Refused" in out, out

    rc, status, err = run_cli("--config", str(account.config), "status", "--json")
    assert rc == 0, status + err
    assert "INBOX.~Refused" in status and "cannot create" in status, status


def test_an_upgrade_keeps_the_recorded_local_folders(
        courier_like: Dovecot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders a syncd without namespace support laid out (``INBOX/Lists``) stay where they
    are: nothing is downloaded, uploaded or moved again."""
    from syncd.core.folders import Namespace

    dc = courier_like
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(0)])
    seed(dc, user, "INBOX.Lists", [make_message(i, folder="Lists") for i in range(3)])
    account = write_config(tmp_path, dc, user)
    with monkeypatch.context() as patch:
        # The old behaviour: no namespace known, server names taken as they are.
        patch.setattr(ImapSession, "personal_namespace", lambda self: Namespace())
        synced(account)
    legacy = account.maildir / "INBOX" / "Lists"
    assert_folder_in_sync(dc, user, account, "INBOX.Lists", local_dir=legacy)

    assert_quiet(account)
    assert not (account.maildir / "Lists").exists()
    assert_folder_in_sync(dc, user, account, "INBOX.Lists", local_dir=legacy)
    # A new server folder takes the new layout; the old ones stay put.
    seed(dc, user, "INBOX.News", [make_message(7, folder="News")])
    out = synced(account)
    assert "+1 down +0 up" in out, out
    assert_folder_in_sync(dc, user, account, "INBOX.News", local_dir=account.maildir / "News")
    assert_quiet(account)
