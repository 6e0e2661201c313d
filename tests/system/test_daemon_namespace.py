"""`syncd run` against a server whose folders live under `INBOX.` (Courier, Cyrus; Dovecot with
``prefix = INBOX.`` / ``separator = .`` here): folders named as syncd shows them locally, without
the prefix, in `idle:` and in `folders.include`, get the server's news in real time (issue 15).
The poll interval is an hour, so only IDLE or NOTIFY can bring the mail down this fast."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import assert_folder_in_sync, local_files, write_config

EVENT_LIMIT = 10.0


@pytest.mark.parametrize("notify", [False, True], ids=["idle", "notify"])
def test_prefix_less_folder_names_are_watched(dovecot_factory: Callable[..., Dovecot],
                                              tmp_path: Path, notify: bool,
                                              daemons: Callable[..., DaemonProcess]) -> None:
    dc = dovecot_factory(inbox_prefix="INBOX.", separator=".", mailbox_list_index=notify)
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(0)])
    dc.create_folder(user, "INBOX.Lists")
    dc.append(user, "INBOX.Lists", make_message(1, folder="Lists"), ["\\Seen"])
    # Without NOTIFY, `idle: [Lists]` must IDLE on INBOX.Lists; with NOTIFY, the daemon's
    # filter must let INBOX.Lists through `include: [INBOX, Lists]`.
    extra = ("    poll_interval: 1h\n    idle: [INBOX, Lists]\n" if not notify else
             "    poll_interval: 1h\n    idle: [INBOX]\n"
             "    folders:\n      include: [INBOX, Lists]\n")
    account = write_config(tmp_path, dc, user, extra=extra)
    d = daemons(account.config)
    lists = account.folder_dir("Lists")
    wait_until(lambda: len(local_files(lists)) == 1, 30, message=lambda: f"first sync\n{d.log()}")
    d.wait_for_log("every folder with NOTIFY" if notify else "INBOX, Lists with IDLE",
                   timeout=15)
    if not notify:
        d.wait_for_log("IDLE folder Lists is INBOX.Lists on the server", timeout=15)

    dc.append(user, "INBOX.Lists", make_message(2, folder="Lists"))
    wait_until(lambda: len(local_files(lists)) == 2, EVENT_LIMIT,
               message=lambda: f"new mail in INBOX.Lists\n{d.log()}")
    assert_folder_in_sync(dc, user, account, "INBOX.Lists", local_dir=lists)
    assert not (account.maildir / "INBOX" / "Lists").exists()
