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
