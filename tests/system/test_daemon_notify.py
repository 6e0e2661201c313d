"""The daemon against a server that offers NOTIFY (RFC 5465; Dovecot with
mailbox_list_index = yes): one connection watches every folder, so a folder outside `idle:`
is as real-time as INBOX. Real Dovecot, the daemon as a subprocess."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import assert_folder_in_sync, local_files, write_config

# Real time means seconds; the poll interval is an hour, so only NOTIFY can be this fast.
EVENT_LIMIT = 10.0


@pytest.fixture
def daemon_of(tmp_path: Path) -> Iterator[Callable[[Path], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        d = DaemonProcess(config, log_path=tmp_path / f"daemon-{len(started)}.log",
                          args=tuple(os.environ.get("SYNCD_TEST_DAEMON_ARGS", "").split()))
        started.append(d.start())
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop(5.0)
            print(f"--- daemon log:\n{d.log()[-4000:]}")


def count(folder: Path) -> int:
    return len(local_files(folder))


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "idle-only"])
def test_every_folder_is_real_time_with_notify(dovecot_factory: Callable[..., Dovecot],
                                               tmp_path: Path, notify: bool,
                                               daemon_of: Callable[[Path], DaemonProcess]
                                               ) -> None:
    dc = dovecot_factory(mailbox_list_index=notify)
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(i) for i in range(2)])
    dc.seed(user, "Lists/python", [make_message(i, folder="Lists/python") for i in range(2)])
    dc.seed(user, "Junk", [make_message(i, folder="Junk") for i in range(1)])
    account = write_config(tmp_path, dc, user, extra="    poll_interval: 1h\n"
                           "    folders:\n      exclude: [Junk]\n")
    d = daemon_of(account.config)
    lists = account.folder_dir("Lists/python")
    wait_until(lambda: count(lists) == 2, 30, message=lambda: f"first sync\n{d.log()}")
    d.wait_for_log("every folder with NOTIFY" if notify else "INBOX with IDLE", timeout=15)

    # New mail and a flag change in a folder that is not in `idle:`.
    dc.append(user, "Lists/python", make_message(50, folder="Lists/python"))
    if notify:
        wait_until(lambda: count(lists) == 3, EVENT_LIMIT,
                   message=lambda: f"NOTIFY: new mail in Lists/python\n{d.log()}")
        uid = dc.uids(user, "Lists/python")[0]
        dc.add_flags(user, "Lists/python", uid, ["\\Flagged"])
        wait_until(lambda: any("F" in flags for flags, _ in local_files(lists)), EVENT_LIMIT,
                   message=lambda: f"NOTIFY: flag change in Lists/python\n{d.log()}")
        assert_folder_in_sync(dc, user, account, "Lists/python")
    else:
        # Without NOTIFY only `idle:` folders are real-time; this one waits for the poll.
        time.sleep(3)
        assert count(lists) == 2
    # Excluded folders stay excluded whatever the server reports.
    dc.append(user, "Junk", make_message(60, folder="Junk"))
    dc.append(user, "INBOX", make_message(70))
    inbox = account.folder_dir("INBOX")
    wait_until(lambda: count(inbox) == 3, EVENT_LIMIT, message=lambda: d.log())
    assert not os.path.exists(account.folder_dir("Junk"))
    assert_folder_in_sync(dc, user, account, "INBOX")
