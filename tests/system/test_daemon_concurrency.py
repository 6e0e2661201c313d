"""`syncd run` under real concurrency (issue 16), as a subprocess against a real Dovecot:
the watcher with a burst of new folders and a reload, an account busy at start-up, a reload
in the middle of a long batch, NOTIFY advertised but refused, and WATCHDOG=1 that stops when
a worker is stuck."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import oldest
from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    REPO,
    Account,
    assert_folder_in_sync,
    local_files,
    run_subprocess,
    wait_for_lock,
    write_config,
)
from tests.system.test_daemon import (
    EVENT_LIMIT,
    add_flag_locally,
    count,
    local_by_mid,
    saved_status,
    server_by_mid,
    status_json,
    stop_ok,
    wait_count,
    wait_first_sync,
)

StartDaemon = Callable[..., DaemonProcess]


def set_poll_interval(account: Account, value: str) -> None:
    """A config change that makes a reload restart the account."""
    text = account.config.read_text()
    lines = [line for line in text.splitlines() if "poll_interval" not in line]
    account.config.write_text("\n".join(lines) + f"\n    poll_interval: {value}\n")


def new_local_folder(account: Account, name: str, n: int) -> None:
    """A folder made by the mail client, with n messages (syncd creates it on the server)."""
    folder = account.folder_dir(name)
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data = make_message(i, folder=name).replace(b"\r\n", b"\n")
        (folder / "cur" / f"{time.time_ns()}.L{i}.burst:2,S").write_bytes(data)


# --------------------------------------------------------------------------------------------
# item 1: the watcher


@pytest.mark.parametrize("watchdog_release", ["installed", "6.0.0"])
def test_a_burst_of_new_folders_and_sighup(dovecot: Dovecot, user: User, tmp_path: Path,
                                           daemons: StartDaemon, watchdog_release: str) -> None:
    """New folders appear on both sides while mutt keeps changing files and a reload
    restarts the account: the reload completes and local changes still go up. Under
    watchdog 6 the watcher used to deadlock with its dispatcher thread here."""
    env = {}
    if watchdog_release != "installed":
        path = oldest.ensure("watchdog", watchdog_release)
        env["PYTHONPATH"] = os.pathsep.join([str(path), str(REPO)])
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user, extra="    poll_interval: 1h\n")
    d = daemons(account.config, env=env)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 3, 30, d)
    wait_first_sync(account, 30, d)

    stop = threading.Event()

    def mutt() -> None:  # keeps the watcher's dispatcher busy: flags on, flags off
        n = 0
        while not stop.is_set():
            for _, path in local_files(inbox):
                with contextlib.suppress(FileNotFoundError):
                    if n % 2 == 0:
                        add_flag_locally(path, "F")
                    else:
                        os.rename(path, path.with_name(path.name.replace("F", "")))
            n += 1
            time.sleep(0.01)

    churn = threading.Thread(target=mutt, daemon=True)
    churn.start()
    try:
        for i in range(12):
            dovecot.create_folder(user, f"Remote{i}")
            dovecot.append(user, f"Remote{i}", make_message(100 + i, folder=f"Remote{i}"))
            new_local_folder(account, f"Local{i}", 2)
        mark = len(d.log())
        set_poll_interval(account, "30m")
        d.signal(signal.SIGHUP)  # a full sync of every folder follows: set_account again
        d.wait_for_log("configuration reloaded", 20, since=mark)
        time.sleep(2)  # the restarted account's first sync, under the churn
    finally:
        stop.set()
        churn.join(5)
    wait_until(lambda: all(count(account.folder_dir(f"Remote{i}")) == 1 for i in range(12)),
               30, message=lambda: f"the new server folders downloaded\n{d.log()[-3000:]}")
    wait_until(lambda: all(dovecot.count(user, f"Local{i}") == 2 for i in range(12)), 30,
               message=lambda: f"the new local folders uploaded\n{d.log()[-3000:]}")
    # And local changes still go up at once, in an old folder and in a new one.
    time.sleep(1)
    for folder in ("INBOX", "Local3"):
        mid, path = sorted(local_by_mid(account.folder_dir(folder)).items())[0]
        if "R" not in path.name.partition(":2,")[2]:
            add_flag_locally(path, "R")
        wait_until(lambda f=folder, m=mid: "\\Answered" in server_by_mid(dovecot, user, f)[m][1],
                   EVENT_LIMIT * 2, interval=0.05,
                   message=lambda: f"a local flag change pushed\n{d.log()[-3000:]}")
    wait_until(lambda: _in_sync(dovecot, user, account, "INBOX"), 15)
    stop_ok(d)


def _in_sync(dc: Dovecot, user: User, account: Account, folder: str) -> bool:
    try:
        assert_folder_in_sync(dc, user, account, folder)
    except AssertionError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# item 2: an account busy at start-up


def test_an_account_busy_at_start_waits_for_its_lock(dovecot: Dovecot, user: User,
                                                   tmp_path: Path, daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dovecot, user, extra="    poll_interval: 1h\n")
    # A `syncd sync` from cron holds the account when the daemon starts (paused in its
    # first download batch, so it surely still does).
    env = dict(os.environ, SYNCD_SLOW_AT="download.commit=6")
    cron = subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(account.config),
                             "sync"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock(cron, account, 30)
        d = daemons(account.config)
        d.wait_for_log("waiting for the lock held by pid", 15)
        status = status_json(account)["accounts"]["test"]
        assert f"pid {cron.pid}" in (status["waiting"] or ""), status
        text = run_subprocess("--config", str(account.config), "status", timeout=60).stdout
        assert "waiting for the lock" in text, text
        out, err = cron.communicate(timeout=60)
        assert cron.returncode == 0, (out, err)
    finally:
        if cron.poll() is None:
            cron.kill()
            cron.wait()
    # The daemon takes the account over once the sync is done, and runs it in real time.
    d.wait_for_log("got the account's lock", 40)
    wait_until(lambda: not saved_status(account).get("waiting"), 10)
    dovecot.append(user, "INBOX", make_message(10))
    wait_count(account.folder_dir("INBOX"), 5, 30, d)
    assert_folder_in_sync(dovecot, user, account, "INBOX")
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# item 5: a reload while a worker is in a long batch


def test_sighup_during_a_long_batch_waits_for_the_worker(dovecot: Dovecot, user: User,
                                                        tmp_path: Path,
                                                        daemons: StartDaemon) -> None:
    """The reload's grace period (4 s) ends while the old worker is still in its batch:
    the new worker must not start beside it (it used to: the lock was released at the end
    of the grace period whether the worker had finished or not)."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(5)])
    account = write_config(tmp_path, dovecot, user, extra="    poll_interval: 1h\n")
    d = daemons(account.config, env={"SYNCD_SLOW_AT": "download.commit=7"})
    d.wait_for_log("pause at download.commit", 30)
    paused = time.monotonic()
    set_poll_interval(account, "30m")
    mark = dovecot.log_mark()
    d.signal(signal.SIGHUP)
    time.sleep(max(0.0, paused + 5.5 - time.monotonic()))  # past the grace, in the batch
    logins = dovecot.log_text(mark).count(f"user=<{user.name}>")
    assert logins == 0, f"a second worker logged in while the first was in its batch\n{d.log()}"
    assert "the new one waits" in d.log()
    d.wait_for_log("got the account's lock", 20)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 5, 20, d)
    dovecot.append(user, "INBOX", make_message(10))
    wait_count(inbox, 6, 20, d)
    assert_folder_in_sync(dovecot, user, account, "INBOX")
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# item 4: NOTIFY advertised, then refused


@pytest.fixture
def refusing_notify(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """Advertises NOTIFY (imap_capability) but, without the mailbox list index, answers
    NOTIFY SET with NO."""
    return dovecot_factory(mailbox_list_index=False, imap_capability="+NOTIFY")


def test_notify_refused_falls_back_to_idle(refusing_notify: Dovecot, tmp_path: Path,
                                           daemons: StartDaemon) -> None:
    dc = refusing_notify
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(0)])
    dc.seed(user, "Lists/python", [make_message(0, folder="Lists/python")])
    account = write_config(tmp_path, dc, user, extra="    poll_interval: 1h\n"
                           "    idle: [INBOX, Lists/python]\n")
    d = daemons(account.config)
    wait_count(account.folder_dir("Lists/python"), 1, 30, d)
    d.wait_for_log("refused it", 15)
    d.wait_for_log("INBOX, Lists/python with IDLE", 15)
    for folder in ("INBOX", "Lists/python"):
        dc.append(user, folder, make_message(50, folder=folder))
        wait_count(account.folder_dir(folder), 2, EVENT_LIMIT * 2, d)
    assert_folder_in_sync(dc, user, account, "Lists/python")
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# item 6: the watchdog tells the truth


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path / "notify.sock") as sock:
        yield sock


def test_a_stuck_worker_stops_the_watchdog_pings(dovecot: Dovecot, user: User, tmp_path: Path,
                                                 daemons: StartDaemon,
                                                 notify_socket: NotifySocket) -> None:
    """WatchdogSec=4s: pings every 2 s while every thread moves or waits on purpose; once a
    worker hangs inside a sync (a fault hook that never returns), no more pings, so systemd
    would restart the daemon; STATUS= names the stuck worker."""
    sock = notify_socket
    account = write_config(tmp_path, dovecot, user, extra="    poll_interval: 1h\n")
    d = daemons(account.config, env={"NOTIFY_SOCKET": str(sock.path),
                                     "WATCHDOG_USEC": "4000000",
                                     "SYNCD_HANG_AT": "download.commit"})
    wait_first_sync(account, 30, d)
    # Idle (nothing to download, so no hang yet): the pings keep coming.
    start = len(sock.times("WATCHDOG=1"))
    wait_until(lambda: len(sock.times("WATCHDOG=1")) >= start + 3, 12,
               message=lambda: f"pings while idle: {sock.messages()}\n{d.log()[-2000:]}")
    dovecot.append(user, "INBOX", make_message(1))  # IDLE -> the worker -> the hang
    d.wait_for_log("hanging for good at download.commit", 15)
    hung = time.monotonic()
    wait_until(lambda: any("STUCK" in line and "worker test" in line
                           for line in sock.lines("STATUS=")), 10,
               message=lambda: f"a STATUS= naming the stuck worker: {sock.lines('STATUS=')}")
    # The threshold (3 s) plus one ping interval after the hang, no ping may come.
    quiet_from = hung + 3.0 + 2.0 + 0.5
    time.sleep(max(0.0, quiet_from + 6.0 - time.monotonic()))
    late = [t for t in sock.times("WATCHDOG=1") if t > quiet_from]
    assert not late, f"WATCHDOG=1 still sent {len(late)} times while the worker is stuck"
    assert "not telling systemd we are alive" in d.log()
    assert d.alive()
