"""The daemon honours the sync policy (README, "Partial mirrors"): a `direction: pull`
account's daemon never writes to the server, whatever its IDLE, filesystem and scheduled
syncs see, and still brings the server's mail down in real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.crash.crash_support import write_local
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import local_files, write_config
from tests.system.test_daemon import add_flag_locally, count, stop_ok

StartDaemon = Callable[..., DaemonProcess]


def server_snapshot(dovecot: Dovecot, user: User) -> dict[str, dict[int, tuple]]:
    return {folder: {uid: (m.flags, m.body) for uid, m in dovecot.messages(user, folder).items()}
            for folder in sorted(dovecot.folders(user))}


def test_pull_daemon_never_writes_to_the_server(dovecot: Dovecot, user: User, tmp_path: Path,
                                               daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dovecot, user,
                           extra="    direction: pull\n    poll_interval: 2s\n")
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_until(lambda: count(inbox) == 4, 30, message=lambda: d.log()[-3000:])
    before = server_snapshot(dovecot, user)

    # local changes the watcher sees: a flag, a deletion, a new file, a new folder
    files = [p for _, p in local_files(inbox)]
    add_flag_locally(files[0], "F")
    files[1].unlink()
    write_local(account, "INBOX", make_message(100), "S")
    write_local(account, "Mine", make_message(101, folder="Mine"), "")
    # server mail still arrives (IDLE), and the deleted one is not downloaded again
    dovecot.append(user, "INBOX", make_message(50))
    time.sleep(0.5)
    wait_until(lambda: count(inbox) == 5, 15, message=lambda: d.log()[-3000:])
    time.sleep(5)  # a scheduled sync or two (poll_interval 2s) and the watcher's
    after = server_snapshot(dovecot, user)
    del after["INBOX"][max(after["INBOX"])]  # the message appended above
    assert after == before
    assert count(inbox) == 5
    stop_ok(d)


def test_window_daemon_mirrors_new_mail_and_deletes_nothing_old(
        dovecot: Dovecot, user: User, tmp_path: Path, daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(6)])
    account = write_config(tmp_path, dovecot, user,
                           extra="    max_messages: 3\n    poll_interval: 2s\n")
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_until(lambda: count(inbox) == 3, 30, message=lambda: d.log()[-3000:])
    for i in range(3):  # IDLE brings each down; the oldest mirrored ones are parked, kept
        dovecot.append(user, "INBOX", make_message(100 + i))
        wait_until(lambda n=4 + i: count(inbox) == n, 15, message=lambda: d.log()[-3000:])
    time.sleep(3)  # a scheduled sync too
    assert count(inbox) == 6
    assert len(dovecot.messages(user, "INBOX", bodies=False)) == 9
    stop_ok(d)


def test_daemon_fetches_flagged_placeholders(dovecot: Dovecot, user: User, tmp_path: Path,
                                             daemons: StartDaemon) -> None:
    """max_size with fetch_flagged: big mail arrives as placeholders; one flagged locally
    (the watcher) or on the server (IDLE) is replaced by the full message, in place."""
    from syncd.core.placeholder import placeholder_of

    big = [make_message(i, size=40_000) for i in range(2)]
    dovecot.seed(user, "INBOX", [*big, make_message(9)])
    account = write_config(tmp_path, dovecot, user, extra=(
        "    max_size: 10k\n    fetch_flagged: true\n    poll_interval: 60s\n"))
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_until(lambda: count(inbox) == 3, 30, message=lambda: d.log()[-3000:])

    def file_of(i: int) -> Path:
        needle = f"Test message {i} in".encode()
        return next(p for _, p in local_files(inbox) if needle in p.read_bytes())

    def full(i: int) -> bool:
        try:
            return placeholder_of(file_of(i).read_bytes()) is None
        except (StopIteration, FileNotFoundError):
            return False  # between two renames

    assert not full(0) and not full(1) and full(9)
    add_flag_locally(file_of(0), "F")
    wait_until(lambda: full(0), 15, message=lambda: d.log()[-3000:])
    uid = next(uid for uid, m in dovecot.messages(user, "INBOX").items() if m.body == big[1])
    dovecot.add_flags(user, "INBOX", uid, "\\Flagged")
    wait_until(lambda: full(1), 15, message=lambda: d.log()[-3000:])
    assert file_of(1).read_bytes() == big[1].replace(b"\r\n", b"\n")
    assert "F" in file_of(1).name.split(":2,")[1]
    assert count(inbox) == 3 and len(dovecot.messages(user, "INBOX", bodies=False)) == 3
    stop_ok(d)
