"""The server matrix (issue 15): syncd's core scenarios against every server of
tests/support/servers — Dovecot (full, Exchange-like, Gmail-like, bare IMAP4rev1, INBOX.
namespace), Cyrus imapd, Courier-IMAP, GNU mailutils imap4d, pymap — with the real CLI.

Each test asserts the behaviour the contract promises (docs/architecture.md, "What every sync
keeps"), on every server:
nothing lost, nothing duplicated, idempotent, flags merged, deletions and new files both ways,
folders shown locally without the server's namespace prefix. A failure here is a finding about
syncd on that server (the harness's own failures say "harness"). The first three tests are the
core that `make test` runs; the others are marked ``interop_full`` (make test-interop).
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import make_message
from tests.support.servers import ImapServer
from tests.support.servers.matrix import DATE, Matrix, message_id

full = pytest.mark.interop_full


def first_sync(mx: Matrix) -> None:
    mx.seed()
    mx.sync()
    assert mx.assert_in_sync() == 6


def assert_idempotent(mx: Matrix) -> None:
    """A sync right after a sync changes nothing on either side (DESIGN Part 2.3)."""
    before = mx.snapshot()
    mx.sync()
    after = mx.snapshot()
    kind = mx.server.kind
    local_b, remote_b = before
    local_a, remote_a = after
    if local_a != local_b:
        raise AssertionError(
            f"[{kind}] the second sync changed the Maildir: removed "
            f"{sorted(set(local_b) - set(local_a))}, added {sorted(set(local_a) - set(local_b))}"
            f", rewritten {sorted(k for k in local_a.keys() & local_b if local_a[k] != local_b[k])}"
        )
    if remote_a != remote_b:
        changed = {f: ("UIDVALIDITY" if remote_a.get(f, (0,))[0] != remote_b.get(f, (0,))[0]
                       else {u: (remote_b[f][1].get(u, ("gone",))[0], v[0])
                             for u, v in remote_a[f][1].items() if remote_b[f][1].get(u) != v}
                       or f"UIDs removed {sorted(set(remote_b[f][1]) - set(remote_a[f][1]))}")
                   for f in set(remote_a) | set(remote_b)
                   if remote_a.get(f) != remote_b.get(f)}
        raise AssertionError(f"[{kind}] the second sync changed the server: {changed}")


# ------------------------------------------------------------------------------------------------
# the core (make test)


def test_first_sync_then_idempotent(mx: Matrix) -> None:
    """Seeded server -> empty Maildir: everything down with its flags, folders shown without
    the namespace prefix; then a second sync changes nothing."""
    first_sync(mx)
    assert_idempotent(mx)
    mx.assert_local_names()


def test_server_changes_come_down(mx: Matrix) -> None:
    """Another client: new mail (INBOX and Archive), a flag change, an expunge."""
    first_sync(mx)
    s, u = mx.server, mx.user
    s.append(u, "INBOX", make_message(10, subject="new on the server"), ["\\Seen"], DATE)
    s.append(u, "Archive", make_message(110, folder="Archive"), [], DATE)
    s.set_flags(u, "INBOX", mx.server_uid("INBOX", "Test message 2 in INBOX"),
                ["\\Seen", "\\Flagged"])
    s.expunge(u, "INBOX", mx.server_uid("INBOX", "Test message 0 in INBOX"))
    mx.sync()
    assert mx.assert_in_sync() == 7
    assert_idempotent(mx)


def test_local_changes_go_up(mx: Matrix) -> None:
    """As mutt does: a flag change (rename), a deletion (unlink), a new file (tmp -> cur)."""
    first_sync(mx)
    flagged = mx.local_file("INBOX", "Test message 2 in INBOX")
    mx.set_local_flags(flagged, "FS")
    mx.local_file("INBOX", "Test message 1 in INBOX").unlink()
    mx.write_local("INBOX", make_message(20, subject="written by mutt"), "S")
    mx.sync()
    assert mx.assert_in_sync() == 6
    uid = mx.server_uid("INBOX", "Test message 2 in INBOX")
    assert {"\\Seen", "\\Flagged"} <= mx.server.messages(mx.user, "INBOX")[uid].flags
    assert_idempotent(mx)


# ------------------------------------------------------------------------------------------------
# the full matrix (make test-interop)


@full
def test_local_delete_spares_other_deleted_messages(mx: Matrix) -> None:
    """Deleting one file expunges that message only: one that another client marked
    \\Deleted, and one that mutt only marked T (still undeletable), stay (issue 15, defect 1)."""
    first_sync(mx)
    s, u = mx.server, mx.user
    marked_by_other = mx.server_uid("INBOX", "Test message 3 in INBOX")
    s.add_flags(u, "INBOX", marked_by_other, ["\\Deleted"])
    mx.sync()
    assert mx.assert_in_sync() == 6
    trashed = mx.local_file("INBOX", "Test message 2 in INBOX")
    mx.set_local_flags(trashed, "T")  # mutt's "d" without sync-mailbox: T, not removed
    mx.local_file("INBOX", "Test message 0 in INBOX").unlink()
    mx.sync()
    remaining = {message_id(m.body): m.flags for m in s.messages(u, "INBOX").values()}
    for i in (3, 2):
        mid = message_id(make_message(i))
        assert mid in remaining, (
            f"[{s.kind}] message {i} (marked \\Deleted, not deleted by the user) was expunged "
            "from the server")
        assert "\\Deleted" in remaining[mid], f"[{s.kind}] message {i} lost \\Deleted"
    deleted = message_id(make_message(0))
    if "UIDPLUS" not in s.capabilities(u):
        # Without UID EXPUNGE a plain EXPUNGE would take messages 2 and 3 too: the deletion
        # waits, marked \Deleted on the server and gone locally (never downloaded again),
        # until the folder's \Deleted set is the user's deletions alone.
        assert "\\Deleted" in remaining.get(deleted, ()), (
            f"[{s.kind}] the pending deletion is not marked \\Deleted on the server")
        mx.sync()
        assert not any("Test message 0 in INBOX" in p.read_text(errors="replace")
                       for p in mx.local_files("INBOX")), f"[{s.kind}] deleted mail came back"
        s.remove_flags(u, "INBOX", marked_by_other, ["\\Deleted"])
        mx.set_local_flags(mx.local_file("INBOX", "Test message 2 in INBOX"), "")
        mx.sync()  # the undelete goes up; the \Deleted set is then ours alone
        mx.sync()
        remaining = {message_id(m.body): m.flags for m in s.messages(u, "INBOX").values()}
    assert deleted not in remaining, (
        f"[{s.kind}] the message deleted locally is still on the server")
    assert mx.assert_in_sync() == 5
    assert_idempotent(mx)


@full
def test_new_local_folder_goes_up(mx: Matrix) -> None:
    """A folder made locally is created on the server (under its personal namespace, with its
    delimiter) with its messages; server mail elsewhere still comes down (defect 2)."""
    first_sync(mx)
    mx.write_local("Projects", make_message(200, folder="Projects"), "S")
    mx.write_local("Projects", make_message(201, folder="Projects"), "")
    mx.server.append(mx.user, "INBOX", make_message(11, subject="new while a folder is made"),
                     [], DATE)
    mx.sync()
    assert "Projects" in mx.server.folders(mx.user), (
        f"[{mx.server.kind}] folder Projects was not created on the server "
        f"(server has {mx.server.folders(mx.user)})")
    assert mx.assert_in_sync() == 9
    assert_idempotent(mx)
    assert mx.folder_dir("Projects") == mx.maildir / "Projects"


@full
def test_uidvalidity_change_repairs_without_duplicates(mx: Matrix) -> None:
    """A folder gets a new UIDVALIDITY (deleted and recreated with the same messages, or
    Dovecot's index rebuilt): re-paired by content, nothing downloaded again, nothing twice,
    nothing lost (DESIGN Part 2.4, defect 5)."""
    first_sync(mx)
    keys = mx.local_keys("Archive")
    mx.server.force_uidvalidity_change(mx.user, "Archive")
    mx.sync()
    assert mx.assert_in_sync() == 6
    assert mx.local_keys("Archive") == keys, (
        f"[{mx.server.kind}] Archive was downloaded again after the UIDVALIDITY change "
        f"(keys before {sorted(keys)}, after {sorted(mx.local_keys('Archive'))})")
    assert_idempotent(mx)


@full
def test_lost_state_syncs_without_duplicates(mx: Matrix) -> None:
    """The state directory is gone (a new machine with the old Maildir): the next sync pairs by
    content and duplicates nothing on either side (defect 5)."""
    first_sync(mx)
    shutil.rmtree(mx.state_dir)
    mx.sync()
    assert mx.assert_in_sync() == 6
    assert_idempotent(mx)


@full
def test_flag_the_server_cannot_keep(mx: Matrix) -> None:
    """mutt marks a message forwarded ($Forwarded, P). A server that keeps keywords gets it; one
    that cannot (mailutils refuses it, others drop it) leaves it local: the sync succeeds, the
    local flag is never reverted, later syncs change nothing (defect 4)."""
    first_sync(mx)
    path = mx.local_file("INBOX", "Test message 0 in INBOX")
    mx.set_local_flags(path, "PS")
    mx.sync()
    local = mx.local_file("INBOX", "Test message 0 in INBOX")
    assert "P" in local.name.split(":2,")[1], (
        f"[{mx.server.kind}] the local $Forwarded (P) was reverted: {local.name}")
    uid = mx.server_uid("INBOX", "Test message 0 in INBOX")
    kept = "$Forwarded" in mx.server.messages(mx.user, "INBOX")[uid].flags
    mx.assert_in_sync(ignore="" if kept else "P")
    assert_idempotent(mx)
    assert "P" in mx.local_file("INBOX", "Test message 0 in INBOX").name.split(":2,")[1]


@full
def test_an_age_window_mirrors_recent_mail_and_widens_without_duplicates(mx: Matrix) -> None:
    """max_age: only the messages newer than the window come down (the window's UIDs asked
    with the SELECT: a pipelined UID SEARCH SINCE, then UID SEARCH ALL once UIDs are known),
    the old ones stay on the server untouched; a flag changed locally goes up; lifting the
    window downloads the rest, nothing twice (issue 18)."""
    mx.seed()  # dated 2024: outside a 30-day window
    recent = time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(time.time() - 2 * 86400))
    for i in (10, 11):
        mx.server.append(mx.user, "INBOX", make_message(i), [], recent)
    mx.write_config("    max_age: 30d\n")
    mx.sync()
    kind = mx.server.kind
    assert len(mx.local_keys("INBOX")) == 2, f"[{kind}] {sorted(mx.local_keys('INBOX'))}"
    assert len(mx.local_keys("Archive")) == 0, f"[{kind}] the old Archive came down"
    assert len(mx.server.messages(mx.user, "INBOX")) == 6
    path = mx.local_file("INBOX", "Test message 10 in INBOX")
    mx.set_local_flags(path, "S")
    mx.sync()
    uid = mx.server_uid("INBOX", "Test message 10 in INBOX")
    assert "\\Seen" in mx.server.messages(mx.user, "INBOX")[uid].flags, f"[{kind}]"
    assert_idempotent(mx)
    mx.write_config()
    mx.sync()
    assert mx.assert_in_sync() == 8
    assert_idempotent(mx)


@full
def test_daemon_brings_new_mail_down(mx: Matrix) -> None:
    """`syncd run` with IDLE on INBOX: a message appended on the server appears locally. Where
    the server pushes during IDLE, within seconds (polling every 5 min would miss it); where it
    has no IDLE (bare IMAP4rev1) or never pushes (mailutils), within the poll interval (10 s)."""
    server: ImapServer = mx.server
    pushes = server.idle_pushes
    mx.write_config(f"    idle: [INBOX]\n    poll_interval: {'5m' if pushes else '10s'}\n")
    mx.seed()
    log = mx.root / "daemon.log"
    with DaemonProcess(mx.config, log_path=log) as d:
        inbox = mx.folder_dir("INBOX")
        wait_until(lambda: (len(mx.local_files("INBOX")), len(mx.local_files("Archive"))) == (4, 2),
                   30, message=lambda: f"[{server.kind}] the first sync\n{d.log()[-3000:]}")
        if pushes:
            # (NOTIFY, or a syncd that says nothing: the deadline below still holds)
            with contextlib.suppress(AssertionError):
                d.wait_for_log("with IDLE", 10)
        time.sleep(1.0)  # the IDLE command itself is on its way
        sent = time.monotonic()
        server.append(mx.user, "INBOX", make_message(30, subject="pushed"), [], DATE)
        limit = 15.0 if pushes else 25.0
        wait_until(lambda: len(mx.local_files("INBOX")) == 5, limit, interval=0.05,
                   message=lambda: f"[{server.kind}] the new message in {inbox} "
                   f"({len(mx.local_files('INBOX'))} there)\n{d.log()[-3000:]}")
        took = time.monotonic() - sent
        assert d.alive(), f"[{server.kind}] the daemon died\n{d.log()[-3000:]}"
        rc, _ = d.stop(10)
        assert rc == 0, f"[{server.kind}] daemon exit status {rc}\n{d.log()[-3000:]}"
    print(f"{server.kind}: new mail down in {took:.2f} s")
    mx.assert_in_sync()
