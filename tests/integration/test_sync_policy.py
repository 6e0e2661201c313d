"""The sync policy against the real Dovecot (README, "Partial mirrors"): direction: pull never
changes the server, push never changes the Maildir, delete: none keeps each side's deletions
to itself, create_folders and folder_settings choose where folders appear. A deletion not
propagated is not undone: the kept copy is never transferred again."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

from tests.crash.crash_support import write_local
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    Account,
    assert_folder_in_sync,
    local_files,
    local_state,
    run_cli,
    server_state,
    synced_ok,
    write_config,
)


def server_snapshot(dovecot: Dovecot, user: User) -> dict[str, dict[int, tuple]]:
    """Every folder, every UID with its flags and bytes: what "the server did not change"
    compares."""
    return {folder: {uid: (m.flags, m.body) for uid, m in dovecot.messages(user, folder).items()}
            for folder in sorted(dovecot.folders(user))}


def bodies(counter: Counter) -> set[bytes]:
    return {body for body, _ in counter}


def lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def with_needle(account: Account, folder: str, needle: bytes) -> Path:
    found = [p for _, p in local_files(account.folder_dir(folder)) if needle in p.read_bytes()]
    assert len(found) == 1, found
    return found[0]


def rename_flags(path: Path, flags: str) -> Path:
    target = path.parent.parent / "cur" / f"{path.name.split(':2,', 1)[0]}:2,{flags}"
    path.rename(target)
    return target


def test_pull_never_changes_the_server(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [(make_message(i), "") for i in range(5)])
    dovecot.seed(user, "Lists", [(make_message(i, folder="Lists"), "S") for i in range(2)])
    account = write_config(tmp_path, dovecot, user, extra="    direction: pull\n")
    # local mail of its own: never uploaded, a local-only folder never created there
    write_local(account, "INBOX", make_message(100), "S")
    write_local(account, "Local", make_message(101, folder="Local"), "")
    before = server_snapshot(dovecot, user)

    out = synced_ok(account)
    assert "+7 down +0 up" in out, out
    assert server_snapshot(dovecot, user) == before
    assert "Local" not in dovecot.folders(user)
    assert_folder_in_sync(dovecot, user, account, "Lists")

    # server side: a flag, an expunge, new mail; local side: a flag, a deletion, new mail
    uids = sorted(dovecot.messages(user, "INBOX"))
    dovecot.set_flags(user, "INBOX", uids[0], "\\Flagged")
    dovecot.expunge(user, "INBOX", uids[1])
    dovecot.append(user, "INBOX", make_message(5))
    rename_flags(with_needle(account, "INBOX", b"test message 2 in"), "S")
    with_needle(account, "INBOX", b"test message 3 in").unlink()
    write_local(account, "INBOX", make_message(102), "")
    before = server_snapshot(dovecot, user)
    time.sleep(0.01)

    out = synced_ok(account)
    assert server_snapshot(dovecot, user) == before
    local = local_state(account.folder_dir("INBOX"))
    have = bodies(local)
    assert lf(make_message(5)) in have  # new server mail arrived
    assert lf(make_message(1)) not in have  # the server's expunge reached the Maildir
    assert (lf(make_message(0)), "F") in local  # so did its flag
    assert (lf(make_message(2)), "S") in local  # the local flag stays local, not undone
    assert lf(make_message(3)) not in have  # deleted locally: not downloaded again
    assert {lf(make_message(100)), lf(make_message(102))} <= have  # local mail stays local

    # again: nothing moves, the local deletion is still not undone
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
    assert lf(make_message(3)) not in bodies(local_state(account.folder_dir("INBOX")))
    assert server_snapshot(dovecot, user) == before


def test_push_never_changes_local_mail(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [(make_message(i), "") for i in range(2)])
    account = write_config(tmp_path, dovecot, user, extra="    direction: push\n")
    for i in range(10, 14):
        write_local(account, "INBOX", make_message(i), "S")

    def local_listing() -> list[tuple[str, bytes]]:
        return [(p.name, p.read_bytes()) for _, p in local_files(account.folder_dir("INBOX"))]

    listing = local_listing()
    out = synced_ok(account)
    assert "+0 down +4 up" in out, out
    assert local_listing() == listing
    server = bodies(server_state(dovecot, user, "INBOX"))
    assert {lf(make_message(i)) for i in range(10, 14)} <= server
    assert lf(make_message(0)) in server  # the server's own mail stays there

    # the server expunges one of ours and flags another: the Maildir keeps both as they are
    by_body = {lf(m.body): uid for uid, m in dovecot.messages(user, "INBOX").items()}
    dovecot.expunge(user, "INBOX", by_body[lf(make_message(10))])
    dovecot.add_flags(user, "INBOX", by_body[lf(make_message(11))], "\\Flagged")
    # locally: a flag change and a deletion, which reach the server
    rename_flags(with_needle(account, "INBOX", b"test message 12 in"), "RS")
    with_needle(account, "INBOX", b"test message 13 in").unlink()
    listing = local_listing()
    time.sleep(0.01)

    synced_ok(account)
    assert local_listing() == listing
    server = server_state(dovecot, user, "INBOX")
    assert lf(make_message(10)) not in bodies(server)  # kept locally, not uploaded again
    assert (lf(make_message(11)), "FS") in server  # the server's flag is not undone
    assert (lf(make_message(12)), "RS") in server  # the local flag change arrived
    assert lf(make_message(13)) not in bodies(server)  # the local deletion arrived
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
    assert lf(make_message(10)) not in bodies(server_state(dovecot, user, "INBOX"))
    assert local_listing() == listing


def test_delete_none_keeps_each_sides_deletions(dovecot: Dovecot, user: User,
                                                tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [(make_message(i), "") for i in range(4)])
    account = write_config(tmp_path, dovecot, user, extra="    delete: none\n")
    synced_ok(account)
    assert_folder_in_sync(dovecot, user, account, "INBOX")

    by_body = {lf(m.body): uid for uid, m in dovecot.messages(user, "INBOX").items()}
    dovecot.expunge(user, "INBOX", by_body[lf(make_message(0))])
    with_needle(account, "INBOX", b"test message 1 in").unlink()
    dovecot.add_flags(user, "INBOX", by_body[lf(make_message(2))], "\\Flagged")
    dovecot.append(user, "INBOX", make_message(4))
    write_local(account, "INBOX", make_message(5), "S")
    time.sleep(0.01)

    synced_ok(account)
    local, server = local_state(account.folder_dir("INBOX")), server_state(dovecot, user,
                                                                           "INBOX")
    assert lf(make_message(0)) in bodies(local) and lf(make_message(0)) not in bodies(server)
    assert lf(make_message(1)) in bodies(server) and lf(make_message(1)) not in bodies(local)
    assert (lf(make_message(2)), "F") in local  # flags still sync
    assert {lf(make_message(4)), lf(make_message(5))} <= bodies(local) & bodies(server)
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
    assert local_state(account.folder_dir("INBOX")) == local
    assert server_state(dovecot, user, "INBOX") == server


def test_create_folders_and_folder_settings(dovecot: Dovecot, user: User,
                                            tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [make_message(0)])
    dovecot.seed(user, "ServerOnly", [make_message(1, folder="ServerOnly")])
    dovecot.seed(user, "Archive", [make_message(2, folder="Archive")])
    account = write_config(tmp_path, dovecot, user, extra=(
        "    create_folders: server\n"
        "    folder_settings:\n"
        "      \"Arch*\": {direction: pull}\n"))
    write_local(account, "LocalOnly", make_message(3, folder="LocalOnly"), "S")
    write_local(account, "Archive", make_message(4, folder="Archive"), "S")

    out = synced_ok(account)
    # a server folder missing locally is not created there (no error), a local one is
    # created on the server
    assert not account.folder_dir("ServerOnly").exists()
    assert "LocalOnly" in dovecot.folders(user)
    assert_folder_in_sync(dovecot, user, account, "LocalOnly")
    # Archive is pull: its local mail is not uploaded, its server mail is downloaded (the
    # folder exists on both sides already)
    archive = bodies(server_state(dovecot, user, "Archive"))
    assert lf(make_message(4, folder="Archive")) not in archive
    assert lf(make_message(2, folder="Archive")) in bodies(
        local_state(account.folder_dir("Archive")))
    assert "error" not in out.lower(), out
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out


def test_create_folders_none(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [make_message(0)])
    dovecot.seed(user, "ServerOnly", [make_message(1, folder="ServerOnly")])
    account = write_config(tmp_path, dovecot, user, extra="    create_folders: none\n")
    write_local(account, "INBOX", make_message(9), "")
    write_local(account, "LocalOnly", make_message(3, folder="LocalOnly"), "S")
    synced_ok(account)
    assert not account.folder_dir("ServerOnly").exists()
    assert "LocalOnly" not in dovecot.folders(user)
    assert_folder_in_sync(dovecot, user, account, "INBOX")


# ---- windows: max_age, max_messages ----------------------------------------------------------

def set_key(account: Account, line: str) -> None:
    """Replace (or add) one account-level key in the config."""
    key = line.split(":", 1)[0]
    lines = [x for x in account.config.read_text().splitlines() if not x.startswith(f"    {key}:")]
    account.config.write_text("\n".join([*lines, f"    {line}"]) + "\n")


def test_max_age_window_narrows_and_widens(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    now = time.time()
    days = [400, 200, 100, 50, 10, 1]  # age of each message, in days
    for i, age in enumerate(days):
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - age * 86400)
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 60d\n")

    out = synced_ok(account)
    assert "+3 down" in out, out
    assert bodies(local_state(account.folder_dir("INBOX"))) == {
        lf(make_message(i)) for i in (3, 4, 5)}
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
    # syncd status says what is mirrored
    rc, out, err = run_cli("--config", str(account.config), "status", "--json")
    assert rc == 0, err
    inbox = json.loads(out)["accounts"][account.name]["folders"]["INBOX"]
    assert inbox["window"] == {"label": "last 60 days", "inside": 3, "total": 6}
    assert inbox["pending"] == {"new": 0, "flags": 0, "deleted": 0}
    rc, out, err = run_cli("--config", str(account.config), "status")
    assert "last 60 days: 3 of 6" in out, out

    # narrowing: nothing removed anywhere; the local copies that fall out stay, untouched
    set_key(account, "max_age: 5d")
    before = server_snapshot(dovecot, user)
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
    assert server_snapshot(dovecot, user) == before
    assert len(local_files(account.folder_dir("INBOX"))) == 3
    rc, out, err = run_cli("--config", str(account.config), "status", "--json")
    inbox = json.loads(out)["accounts"][account.name]["folders"]["INBOX"]
    assert inbox["window"]["inside"] == 1
    assert inbox["pending"] == {"new": 0, "flags": 0, "deleted": 0}  # parked: not pending
    # a local change to a parked message stays local; deleting its local copy deletes nothing
    rename_flags(with_needle(account, "INBOX", b"test message 3 in"), "FS")
    with_needle(account, "INBOX", b"test message 4 in").unlink()
    time.sleep(0.01)
    synced_ok(account)
    assert server_snapshot(dovecot, user) == before

    # widening: what falls inside comes down (message 4 again: its local copy went while it
    # was outside), parked pairs are taken back and their flags synced; nothing is duplicated
    set_key(account, "max_age: 300d")
    out = synced_ok(account)
    assert "+3 down" in out, out  # 1, 2 and 4
    local = local_state(account.folder_dir("INBOX"))
    assert bodies(local) == {lf(make_message(i)) for i in (1, 2, 3, 4, 5)}
    assert (lf(make_message(3)), "FS") in server_state(dovecot, user, "INBOX")
    assert len(dovecot.messages(user, "INBOX")) == 6
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out


def test_max_messages_keeps_the_newest(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [(make_message(i), "S") for i in range(10)])
    account = write_config(tmp_path, dovecot, user, extra="    max_messages: 4\n")
    out = synced_ok(account)
    assert "+4 down" in out, out
    assert bodies(local_state(account.folder_dir("INBOX"))) == {
        lf(make_message(i)) for i in range(6, 10)}
    # new mail pushes the oldest mirrored one out of the window: kept locally, not deleted
    dovecot.append(user, "INBOX", make_message(10))
    out = synced_ok(account)
    assert "+1 down +0 up -0" in out, out
    assert len(local_files(account.folder_dir("INBOX"))) == 5
    assert len(dovecot.messages(user, "INBOX")) == 11
    # deleting a mirrored message locally deletes it on the server (inside the window)
    with_needle(account, "INBOX", b"test message 9 in").unlink()
    time.sleep(0.01)
    synced_ok(account)
    assert lf(make_message(9)) not in bodies(server_state(dovecot, user, "INBOX"))
    # the window slid back over message 6, still here locally: paired again, not downloaded
    local = bodies(local_state(account.folder_dir("INBOX")))
    assert sorted(local) == sorted({lf(make_message(i)) for i in (6, 7, 8, 10)})
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out


def test_first_sync_with_a_window_onto_an_existing_maildir_uploads_nothing_twice(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    now = time.time()
    for i in range(4):
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - (100 - i) * 86400)
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 30d\n")
    # copies of the old messages already here (a Maildir another tool kept)
    for i in range(4):
        write_local(account, "INBOX", make_message(i), "S")
    out = synced_ok(account)
    assert "+0 down +0 up" in out, out
    assert len(dovecot.messages(user, "INBOX")) == 4
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out


def test_a_no_change_sync_under_a_policy_stays_cheap(dovecot: Dovecot, user: User,
                                                     tmp_path: Path) -> None:
    """A window or a one-way policy leaves messages out of the state; the no-change check
    compares STATUS with the server's count at the last sync, so nothing is selected."""
    now = time.time()
    for i in range(6):
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - i * 30 * 86400)
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 70d\n")
    write_local(account, "INBOX", make_message(50), "S")
    synced_ok(account)
    synced_ok(account)  # settles the Maildir stamp after the sync's own changes
    rc, out, err = run_cli("--config", str(account.config), "--debug", "sync")
    assert rc == 0, out + err
    assert "a full sync" not in err, err
    assert not re.search(r"> b'\w+ (UID |)(SELECT|EXAMINE|FETCH|SEARCH) ", err), err
    # and a change still gets through
    dovecot.append(user, "INBOX", make_message(9))
    out = synced_ok(account)
    assert "+1 down" in out, out


def _uid_bounds(text: str) -> list[tuple[int, int]]:
    """A UID set's ranges as (low, high) ("3:9,12" -> [(3, 9), (12, 12)]); never expanded."""
    bounds = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        bounds.append((int(low), int(high or low)))
    return bounds


def test_a_first_sync_under_an_age_window_lists_only_the_window(dovecot: Dovecot, user: User,
                                                                 tmp_path: Path) -> None:
    """The first sync of a folder under max_age alone asks UID SEARCH SINCE and nothing about
    the rest of the folder (no UID SEARCH ALL: none of those UIDs is known, and new ones
    outside the window stay out of the view); the next sync, which knows UIDs, lists them all
    again to tell an expunge from a message that left the window."""
    now = time.time()
    for i in range(20):  # old: outside the window
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - (400 - i) * 86400)
    for i in range(20, 23):
        dovecot.append(user, "INBOX", make_message(i), "", date=now - (23 - i) * 86400)
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 30d\n")
    rc, out, err = run_cli("--config", str(account.config), "--debug", "sync")
    assert rc == 0, out + err
    assert "+3 down" in out, out
    search = re.search(r"> b'\w+ UID SEARCH SINCE ", err)
    assert search, err
    assert not re.search(r"> b'\w+ UID SEARCH ALL", err), err
    # Pipelined: the SEARCH went out before the SELECT's reply came in; the window's flags
    # and sizes came in one FETCH (no FETCH of sizes alone after one of flags).
    select_done = re.search(r"< b'\w+ OK \[READ-WRITE\]", err)
    assert select_done and search.start() < select_done.start(), err
    assert len(re.findall(r"> b'\w+ UID FETCH \S+ \(UID FLAGS RFC822\.SIZE\)'", err)) == 1, err
    assert not re.search(r"> b'\w+ UID FETCH \S+ \(UID RFC822\.SIZE\)'", err), err
    assert len(local_files(account.folder_dir("INBOX"))) == 3
    # the next sync, after a local change, knows UIDs: it lists the folder to spot expunges
    rename_flags(with_needle(account, "INBOX", b"test message 21 in"), "S")
    time.sleep(0.01)
    dovecot.expunge(user, "INBOX", [22])  # message 21's neighbour, inside the window
    rc, out, err = run_cli("--config", str(account.config), "--debug", "sync")
    assert rc == 0, out + err
    assert re.search(r"> b'\w+ UID SEARCH ALL", err), err
    assert len(local_files(account.folder_dir("INBOX"))) == 2
    assert len(dovecot.messages(user, "INBOX")) == 22  # the old ones never touched


def test_a_windowed_folder_reads_no_flags_outside_its_window(dovecot: Dovecot, user: User,
                                                             tmp_path: Path) -> None:
    """Messages outside the window are known by UID alone (UID SEARCH): their flags are never
    fetched, so a big archive under a small window costs a number per message, not a FETCH."""
    now = time.time()
    for i in range(30):  # old: outside the window
        dovecot.append(user, "INBOX", make_message(i), "\\Seen", date=now - (400 - i) * 86400)
    for i in range(30, 33):  # recent: UIDs 31..33 (message i has UID i + 1)
        dovecot.append(user, "INBOX", make_message(i), "", date=now - (33 - i) * 86400)
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 30d\n")
    out = synced_ok(account)
    assert "+3 down" in out, out
    # A local flag change makes the folder sync in full (not the no-change path).
    rename_flags(with_needle(account, "INBOX", b"test message 31 in"), "S")
    time.sleep(0.01)
    rc, out, err = run_cli("--config", str(account.config), "--debug", "sync")
    assert rc == 0, out + err
    # (a CHANGEDSINCE fetch, which reads only what changed, may ride along with the SELECT)
    flag_fetches = re.findall(r"> b'\w+ UID FETCH (\S+) \((?:UID )?FLAGS\)'", err)
    assert flag_fetches, err
    for uid_set in flag_fetches:
        assert "*" not in uid_set, flag_fetches
        assert all(31 <= low <= high <= 33 for low, high in _uid_bounds(uid_set)), flag_fetches
    assert (lf(make_message(31)), "S") in server_state(dovecot, user, "INBOX")
    assert len(dovecot.messages(user, "INBOX")) == 33
    out = synced_ok(account)
    assert "+0 down +0 up -0" in out, out
