"""`syncd adopt`: Maildirs made by the real mbsync and offlineimap3 against the test Dovecot,
adopted, then synced: no body crosses the wire (bytes counted through a proxy), nothing
changes on either side, file names stay as the other tool made them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from syncd.store.state import StateStore
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    Account,
    local_files,
    run_cli,
    server_state,
    write_config,
)
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.skipif(not (shutil.which("mbsync") and shutil.which("offlineimap")),
                                reason="needs mbsync (isync) and offlineimap (offlineimap3)")

SIZE = 40_000  # every message: one body through the proxy would be plain to see
FOLDERS = {"INBOX": 4, "Lists/dev": 3, "Sent": 2}


def seed(dovecot: Dovecot, user: User) -> None:
    for folder, count in FOLDERS.items():
        if folder != "INBOX":
            dovecot.create_folder(user, folder)
        for i in range(count):
            flags = ["\\Seen"] if i % 2 else []
            if i == 2:
                flags.append("\\Flagged")
            dovecot.append(user, folder, make_message(i, folder=folder, size=SIZE), flags=flags)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the Maildir (names and bytes): adopt and the sync must keep them."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def server_snapshot(dovecot: Dovecot, user: User) -> dict[str, dict[int, frozenset[str]]]:
    return {folder: dovecot.flags(user, folder) for folder in FOLDERS}


def without_tuid(data: bytes) -> bytes:
    """mbsync adds an ``X-TUID:`` header to every message it downloads (to find it again
    after an interrupted run): the one difference between its files and the server's."""
    head, sep, body = data.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.startswith(b"X-TUID: ")]
    return b"\n".join(lines) + sep + body


def assert_folder_in_sync(dovecot: Dovecot, user: User, account: Account, folder: str, *,
                          local_dir: Path) -> None:
    """Each server message once locally with the same flags (X-TUID aside), and no more."""
    server = server_state(dovecot, user, folder)
    local = Counter((without_tuid(path.read_bytes()), flags)
                    for flags, path in local_files(local_dir))
    assert local == server, f"{folder}: local {sorted(local.values())} != server"


def run_tool(argv: list[str], home: Path) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}\n{done.stderr}"


def mbsync_rc(dovecot: Dovecot, user: User, maildir: Path, *, subfolders: str = "Verbatim",
              sync_state: str = "*") -> str:
    inbox = maildir / "INBOX" if subfolders == "Verbatim" else maildir
    path_line = f"Path {maildir}/\n" if subfolders == "Verbatim" else ""
    return f"""\
# as mbsync(1) shows it
IMAPAccount test
Host 127.0.0.1
Port {dovecot.imaps_port}
User {user.name}
PassCmd "printf {user.password}"
SSLType IMAPS
CertificateFile {dovecot.ca_file}

IMAPStore test-remote
Account test

MaildirStore test-local
{path_line}Inbox {inbox}
SubFolders {subfolders}

Channel test
Far :test-remote:
Near :test-local:
Patterns *
Create Both
SyncState {sync_state}
"""


def make_with_mbsync(tmp_path: Path, dovecot: Dovecot, user: User, account: Account,
                     **options: str) -> Path:
    rc = tmp_path / "mbsyncrc"
    rc.write_text(mbsync_rc(dovecot, user, account.maildir, **options))
    account.maildir.mkdir(parents=True)  # mbsync 1.4 does not create its store's root
    run_tool(["mbsync", "-c", str(rc), "-a"], tmp_path)
    return rc


def make_with_offlineimap(tmp_path: Path, dovecot: Dovecot, user: User, account: Account,
                          sep: str = ".") -> Path:
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""\
[general]
accounts = test
metadata = {tmp_path}/offlineimap-meta

[Account test]
localrepository = test-local
remoterepository = test-remote

[Repository test-local]
type = Maildir
localfolders = {account.maildir}
sep = {sep}

[Repository test-remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {dovecot.imaps_port}
remoteuser = {user.name}
remotepass = {user.password}
ssl = yes
sslcacertfile = {dovecot.ca_file}
""")
    run_tool(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], tmp_path)
    return rc


def adopt_then_sync(tmp_path: Path, dovecot: Dovecot, user: User, account: Account,
                    rc: Path, tool: str, local_dirs: dict[str, Path]) -> str:
    """adopt; then a sync through a byte-counting proxy: no body, no change anywhere."""
    before_local = snapshot(account.maildir)
    before_server = server_snapshot(dovecot, user)
    code, out, err = run_cli("--config", str(account.config), "adopt", account.name,
                             "--from", tool, "--rc", str(rc))
    assert code == 0, out + err
    assert snapshot(account.maildir) == before_local  # adopt writes only syncd's state
    with TcpProxy(dovecot.imaps_port) as proxy:
        proxied = write_config(tmp_path, dovecot, user, port=proxy.port,
                               layout=account.layout)
        code, sync_out, sync_err = run_cli("--config", str(proxied.config), "sync")
        assert code == 0, sync_out + sync_err
        # A LIST, a SELECT and the flags per folder, and the TLS handshake: far less than
        # one message's body (SIZE bytes), let alone nine.
        assert proxy.bytes_down < SIZE, proxy.bytes_down
    assert snapshot(account.maildir) == before_local  # not a file renamed, added or removed
    assert server_snapshot(dovecot, user) == before_server  # no APPEND, STORE or EXPUNGE
    for folder, local_dir in local_dirs.items():
        assert_folder_in_sync(dovecot, user, account, folder, local_dir=local_dir)
    return out


def test_adopt_mbsync_verbatim_state_in_folders(tmp_path: Path, dovecot: Dovecot,
                                                 user: User) -> None:
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_mbsync(tmp_path, dovecot, user, account)
    code, dry, err = run_cli("--config", str(account.config), "adopt", "test", "--dry-run",
                             "--rc", str(rc))
    assert code == 0, dry + err
    assert "dry run: nothing was written" in dry
    assert not (account.state_dir / "test.sqlite3").exists()
    out = adopt_then_sync(tmp_path, dovecot, user, account, rc, "mbsync", {
        "INBOX": account.maildir / "INBOX", "Lists/dev": account.maildir / "Lists" / "dev",
        "Sent": account.maildir / "Sent"})
    assert "INBOX" in out and "4 message(s) paired by UID" in out
    assert ".mbsyncstate" in out  # the other tool's files, left for the user


def test_adopt_mbsync_maildirpp_state_directory(tmp_path: Path, dovecot: Dovecot,
                                                user: User) -> None:
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user, layout="maildir++")
    state_dir = tmp_path / "mbsync-state"
    state_dir.mkdir()
    rc = make_with_mbsync(tmp_path, dovecot, user, account, subfolders="Maildir++",
                          sync_state=f"{state_dir}/")
    adopt_then_sync(tmp_path, dovecot, user, account, rc, "mbsync", {
        "INBOX": account.maildir, "Lists/dev": account.maildir / ".Lists.dev",
        "Sent": account.maildir / ".Sent"})


def test_adopt_offlineimap(tmp_path: Path, dovecot: Dovecot, user: User) -> None:
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_offlineimap(tmp_path, dovecot, user, account)
    # sep "." (offlineimap's default): Lists/dev is the folder "Lists.dev"; adopt records
    # that place, so syncd keeps using it.
    adopt_then_sync(tmp_path, dovecot, user, account, rc, "offlineimap", {
        "INBOX": account.maildir / "INBOX", "Lists/dev": account.maildir / "Lists.dev",
        "Sent": account.maildir / "Sent"})


def test_adopt_pending_changes_are_synced_both_ways(tmp_path: Path, dovecot: Dovecot,
                                                    user: User) -> None:
    """The tool's state is the base of the three-way merge: a flag changed in mutt and a
    message flagged on the server since mbsync's last run both propagate, once."""
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_mbsync(tmp_path, dovecot, user, account)
    inbox = account.maildir / "INBOX"
    first = sorted((inbox / "new").iterdir())[0]  # unseen: mutt reads it
    first.rename(inbox / "cur" / (first.name.split(":2,")[0] + ":2,S"))
    uids = dovecot.uids(user, "Sent")
    dovecot.add_flags(user, "Sent", uids[0], ["\\Answered"])
    code, out, err = run_cli("--config", str(account.config), "adopt", "test", "--rc", str(rc))
    assert code == 0, out + err
    code, out, err = run_cli("--config", str(account.config), "sync")
    assert code == 0, out + err
    for folder in FOLDERS:
        assert_folder_in_sync(dovecot, user, account, folder,
                              local_dir=account.maildir.joinpath(*folder.split("/")))
    assert "\\Seen" in dovecot.flags(user, "INBOX")[dovecot.uids(user, "INBOX")[0]]


def test_adopt_after_uidvalidity_change_pairs_by_content(tmp_path: Path, dovecot: Dovecot,
                                                         user: User) -> None:
    """UIDVALIDITY changed since mbsync's last run: its UIDs are void, so the folder is
    paired by Message-ID and size (headers only; mbsync's X-TUID header discounted), and
    the sync after it still fetches no body and changes nothing."""
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_mbsync(tmp_path, dovecot, user, account)
    dovecot.set_uidvalidity(user, "Sent", 4242)
    out = adopt_then_sync(tmp_path, dovecot, user, account, rc, "mbsync", {
        "INBOX": account.maildir / "INBOX", "Lists/dev": account.maildir / "Lists" / "dev",
        "Sent": account.maildir / "Sent"})
    assert "UIDVALIDITY changed" in out
    assert "2 message(s) paired by Message-ID and size" in out
    with StateStore(account.state_dir / "test.sqlite3") as state:
        sent = state.folder("Sent")
        assert sent is not None and sent.uidvalidity == 4242
        assert state.message_count(sent.id) == 2


def test_adopt_refuses_a_state_from_another_server(tmp_path: Path, dovecot: Dovecot,
                                                   user: User) -> None:
    """mbsync's state names UIDs this server never gave out under the same UIDVALIDITY:
    refused, and nothing is written."""
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_mbsync(tmp_path, dovecot, user, account)
    state_file = account.maildir / "INBOX" / ".mbsyncstate"
    header, _, body = state_file.read_text().partition("\n\n")
    state_file.write_text(header + "\n\n" + body.replace("4 4", "99 4"))
    code, out, err = run_cli("--config", str(account.config), "adopt", "test", "--rc", str(rc))
    assert code == 1, out + err
    assert "never given out" in err and "nothing was changed" in err
    states = list(account.state_dir.glob("test*.sqlite*")) if account.state_dir.exists() else []
    for path in states:
        with StateStore(path) as state:
            assert all(state.message_count(f.id) == 0 for f in state.folders())


# --- messages deleted locally after the other tool's last run --------------------------------


def message_id_of(path: Path) -> str:
    for line in path.read_bytes().split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(f"{path} has no Message-ID")


def message_files(folder_dir: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder_dir / sub).iterdir())


def server_message_ids(dovecot: Dovecot, user: User, folder: str) -> list[str]:
    return sorted(m.message_id for m in dovecot.messages(user, folder, bodies=False).values())


def make_with(tool: str, tmp_path: Path, dovecot: Dovecot, user: User,
              account: Account) -> Path:
    if tool == "mbsync":
        return make_with_mbsync(tmp_path, dovecot, user, account)
    return make_with_offlineimap(tmp_path, dovecot, user, account)


def sync_through_proxy(tmp_path: Path, dovecot: Dovecot, user: User, account: Account,
                       extra: str) -> str:
    """One `syncd sync`; no message body comes down (bytes counted through a proxy)."""
    with TcpProxy(dovecot.imaps_port) as proxy:
        proxied = write_config(tmp_path, dovecot, user, port=proxy.port,
                               layout=account.layout, extra=extra)
        code, out, err = run_cli("--config", str(proxied.config), "sync")
        assert code == 0, out + err
        assert proxy.bytes_down < SIZE, proxy.bytes_down
    return out + err


@pytest.mark.parametrize(("tool", "delete"), [("mbsync", "both"), ("mbsync", "none"),
                                              ("offlineimap", "both"),
                                              ("offlineimap", "pull")])
def test_a_file_deleted_after_the_tools_last_run_is_a_local_deletion(
        tmp_path: Path, dovecot: Dovecot, user: User, tool: str, delete: str) -> None:
    """The other tool's state pairs the message with a file that is gone: adopt records a
    local deletion, which the next sync handles as it would one made while syncd ran. With
    `delete: both` the server copy goes; with none or pull it stays there, untracked. The
    message is never downloaded again."""
    seed(dovecot, user)
    extra = f"    delete: {delete}\n"
    account = write_config(tmp_path, dovecot, user, extra=extra)
    rc = make_with(tool, tmp_path, dovecot, user, account)
    inbox = account.maildir / "INBOX"
    victim = message_files(inbox)[1]
    gone_id = message_id_of(victim)
    victim.unlink()  # deleted in mutt after the tool's last run
    code, out, err = run_cli("--config", str(account.config), "adopt", "test", "--from", tool,
                             "--rc", str(rc))
    assert code == 0, out + err
    assert (f"3 message(s) paired by UID; 1 deleted locally since {tool}'s last run") in out
    before = snapshot(account.maildir)
    for _ in range(2):  # and the sync after it: still not downloaded again
        sync_through_proxy(tmp_path, dovecot, user, account, extra)
        assert snapshot(account.maildir) == before
    on_server = server_message_ids(dovecot, user, "INBOX")
    if delete == "both":
        assert gone_id not in on_server and len(on_server) == 3
    else:
        assert gone_id in on_server and len(on_server) == 4
    assert gone_id not in [message_id_of(p) for p in message_files(inbox)]
    for folder in ("Lists/dev", "Sent"):  # nothing else changed
        assert dovecot.count(user, folder) == FOLDERS[folder]


def test_a_file_name_adopt_cannot_read_deletes_nothing(tmp_path: Path, dovecot: Dovecot,
                                                       user: User) -> None:
    """A file whose name lost mbsync's ,U= (renamed by some tool) may be the message whose
    named file seems gone: then nothing in the folder counts as deleted. The renamed file is
    paired by content; a file really deleted beside it is downloaded again (the old way), and
    no server message is deleted, with `delete: both`."""
    seed(dovecot, user)
    account = write_config(tmp_path, dovecot, user)
    rc = make_with_mbsync(tmp_path, dovecot, user, account)
    inbox = account.maildir / "INBOX"
    renamed, deleted = message_files(inbox)[:2]
    base, _, info = renamed.name.partition(":2,")
    renamed.rename(renamed.parent / (base.split(",U=")[0] + ":2," + info))
    deleted_id = message_id_of(deleted)
    deleted.unlink()
    code, out, err = run_cli("--config", str(account.config), "adopt", "test", "--from",
                             "mbsync", "--rc", str(rc))
    assert code == 0, out + err
    assert ("2 message(s) in mbsync's state have no file any more, but 1 file name(s) here "
            "do not carry a UID adopt can read: none counted as deleted") in out
    assert "deleted locally" not in out
    for _ in range(2):
        code, out, err = run_cli("--config", str(account.config), "sync")
        assert code == 0, out + err
    assert dovecot.count(user, "INBOX") == FOLDERS["INBOX"]  # nothing deleted on the server
    assert_folder_in_sync(dovecot, user, account, "INBOX", local_dir=inbox)
    assert deleted_id in [message_id_of(p) for p in message_files(inbox)]
