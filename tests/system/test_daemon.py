"""`syncd run` as a subprocess against a real Dovecot: real-time sync both ways (latencies are
measured and printed, bounds are generous), outages (Dovecot restarted, a proxy that drops
every connection, changes made while the server is down), signals (SIGTERM, SIGHUP), locks,
the on_new_mail hook, several accounts with one broken, sd_notify and the systemd unit.

Every daemon is started by the ``daemons`` fixture and ended by its PID (SIGTERM, then SIGKILL)
in the fixture's finalizer, which also prints its log (shown when a test fails).
"""

from __future__ import annotations

import contextlib
import email.parser
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    REPO,
    Account,
    assert_folder_in_sync,
    local_files,
    run_subprocess,
    write_config,
)
from tests.support.tcp_proxy import TcpProxy

STOP_LIMIT = 5.0  # SIGTERM -> exit 0 within this many seconds (the README's contract)
EVENT_LIMIT = 5.0  # a generous bound on one real-time event; the targets are far lower

StartDaemon = Callable[..., DaemonProcess]


# --------------------------------------------------------------------------------------------
# helpers


def account_yaml(name: str, dc: Dovecot, user: User, *, port: int | None = None,
                 password: str | None = None, extra: str = "") -> str:
    return (f"  {name}:\n"
            f"    protocol: imap\n"
            f"    host: 127.0.0.1\n"
            f"    port: {port or dc.imaps_port}\n"
            f"    tls: implicit\n"
            f"    tls_ca_file: {dc.ca_file}\n"
            f"    username: {user.name}\n"
            f"    password_command: \"printf {password or user.password}\"\n"
            f"{extra}")


def write_accounts(tmp_path: Path, accounts: dict[str, tuple[Dovecot, User, str]], *,
                   general_extra: str = "") -> dict[str, Account]:
    """A config with several accounts: {name: (dovecot, user, account_yaml text)}."""
    config = tmp_path / "config.yaml"
    text = (f"general:\n  maildir_root: {tmp_path / 'Mail'}\n  state_dir: {tmp_path / 'state'}\n"
            f"{general_extra}accounts:\n" + "".join(block for _, _, block in accounts.values()))
    config.write_text(text)
    return {name: Account(config=config, name=name, maildir=tmp_path / "Mail" / name,
                          state_dir=tmp_path / "state", layout="verbatim", user=user)
            for name, (_, user, _) in accounts.items()}


def set_port(account: Account, old: int, new: int) -> None:
    text = account.config.read_text()
    assert f"port: {old}\n" in text
    account.config.write_text(text.replace(f"port: {old}\n", f"port: {new}\n"))


def count(folder_dir: Path) -> int:
    n = 0
    for sub in ("cur", "new"):
        with contextlib.suppress(FileNotFoundError):
            n += sum(1 for name in os.listdir(folder_dir / sub) if not name.startswith("."))
    return n


def wait_count(folder_dir: Path, n: int, timeout: float, d: DaemonProcess | None = None) -> float:
    """Wait until the local folder holds exactly n messages; the seconds it took."""
    started = time.monotonic()
    wait_until(lambda: count(folder_dir) == n, timeout, interval=0.005,
               message=lambda: f"{n} messages in {folder_dir} (have {count(folder_dir)})"
               + (f"\n{d.log()[-3000:]}" if d else ""))
    return time.monotonic() - started


_HEADERS = email.parser.BytesHeaderParser()


def mid_of(path: Path) -> str:
    return str(_HEADERS.parsebytes(path.read_bytes())["Message-ID"]).strip()


def local_by_mid(folder_dir: Path) -> dict[str, Path]:
    return {mid_of(p): p for _, p in local_files(folder_dir)}


def server_by_mid(dc: Dovecot, user: User,
                  folder: str = "INBOX") -> dict[str, tuple[int, frozenset[str]]]:
    return {m.message_id or "": (uid, m.flags)
            for uid, m in dc.messages(user, folder, bodies=False).items()}


def add_flag_locally(path: Path, letter: str) -> Path:
    """What mutt does to change flags: rename into cur/ with the new info suffix."""
    key, _, info = path.name.partition(":2,")
    letters = "".join(sorted(set(info) | {letter}))
    target = path.parent.parent / "cur" / f"{key}:2,{letters}"
    os.rename(path, target)
    return target


def new_local_message(folder_dir: Path, i: int, flags: str = "S") -> tuple[str, Path]:
    """Deliver a new message into cur/ as a mail client saving a copy does (tmp -> rename)."""
    data = make_message(i, subject=f"written locally {i}").replace(b"\r\n", b"\n")
    name = f"{time.time_ns()}.M{i}P{os.getpid()}.localtest"
    tmp = folder_dir / "tmp" / name
    tmp.write_bytes(data)
    final = folder_dir / "cur" / f"{name}:2,{flags}"
    os.rename(tmp, final)
    return mid_of(final), final


def status_json(account: Account) -> dict:
    proc = run_subprocess("--config", str(account.config), "status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def saved_status(account: Account) -> dict:
    try:
        return json.loads((account.state_dir / "status.json").read_text())["accounts"].get(
            account.name, {})
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def wait_first_sync(account: Account, timeout: float = 30.0, d: DaemonProcess | None = None,
                    ) -> None:
    wait_until(lambda: saved_status(account).get("last_sync"), timeout,
               message=lambda: f"the first sync of {account.name}"
               + (f"\n{d.log()[-3000:]}" if d else ""))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(what: str, values: list[float]) -> str:
    line = (f"{what}: n={len(values)} p50={statistics.median(values) * 1000:.0f} ms "
            f"p95={pct(values, 0.95) * 1000:.0f} ms max={max(values) * 1000:.0f} ms")
    print(line)
    return line


def stop_ok(d: DaemonProcess) -> float:
    rc, seconds = d.stop(STOP_LIMIT + 2)
    assert rc == 0, f"exit status {rc} after SIGTERM\n{d.log()[-3000:]}"
    assert seconds < STOP_LIMIT, f"took {seconds:.1f} s to stop after SIGTERM"
    return seconds


# --------------------------------------------------------------------------------------------
# 1, 2: real time, both ways


def test_server_append_reaches_maildir_in_real_time(dovecot: Dovecot, user: User,
                                                    tmp_path: Path,
                                                    daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 3, 30, d)
    # Warm-up: the first event may race the IDLE connection being set up.
    dovecot.append(user, "INBOX", make_message(1000))
    wait_count(inbox, 4, 15, d)

    latencies = []
    for i in range(20):
        # Let the echo of the last delivery (a filesystem event -> a debounced sync ~0.3 s
        # later) pass first: it would pick up this message early and flatter the numbers.
        time.sleep(0.5)
        dovecot.append(user, "INBOX", make_message(2000 + i))
        appended = time.monotonic()  # the message exists on the server from here on
        wait_until(lambda n=5 + i: count(inbox) == n, EVENT_LIMIT, interval=0.002,
                   message=lambda i=i: f"append #{i} to arrive\n{d.log()[-3000:]}")
        latencies.append(time.monotonic() - appended)
    # Dovecot itself delays IDLE notifications by 0.5 s (NOTIFY_DELAY_MSECS in its
    # mailbox-watch.c): that is the floor of these numbers.
    report("server APPEND -> file in new/", latencies)
    assert len(os.listdir(inbox / "new")) == 24  # unseen mail sits in new/
    assert_folder_in_sync(dovecot, user, account, "INBOX")
    stop_ok(d)


def test_local_changes_reach_server_in_real_time(dovecot: Dovecot, user: User, tmp_path: Path,
                                                 daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(8)])
    account = write_config(tmp_path, dovecot, user)
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 8, 30, d)
    local = local_by_mid(inbox)
    server = server_by_mid(dovecot, user)
    mids = sorted(local)
    timings: dict[str, list[float]] = {"flag (rename +S)": [], "delete (unlink)": [],
                                       "new file in cur/": []}

    def seen_on_server(mid: str) -> bool:
        return "\\Seen" in server_by_mid(dovecot, user)[mid][1]

    for mid in mids[:3]:
        add_flag_locally(local[mid], "S")
        t = time.monotonic()
        wait_until(lambda mid=mid: seen_on_server(mid), EVENT_LIMIT, interval=0.02,
                   message=lambda: f"\\Seen on the server\n{d.log()[-3000:]}")
        timings["flag (rename +S)"].append(time.monotonic() - t)

    for mid in mids[3:6]:
        uid = server[mid][0]
        local[mid].unlink()
        t = time.monotonic()
        wait_until(lambda uid=uid: uid not in dovecot.flags(user, "INBOX"), EVENT_LIMIT,
                   interval=0.02, message=lambda: f"the expunge\n{d.log()[-3000:]}")
        timings["delete (unlink)"].append(time.monotonic() - t)

    for i in range(3):
        mid, _ = new_local_message(inbox, 500 + i, flags="FS")
        t = time.monotonic()
        wait_until(lambda mid=mid: mid in server_by_mid(dovecot, user), EVENT_LIMIT,
                   interval=0.02, message=lambda: f"the APPEND\n{d.log()[-3000:]}")
        timings["new file in cur/"].append(time.monotonic() - t)
        assert server_by_mid(dovecot, user)[mid][1] >= {"\\Seen", "\\Flagged"}

    for what, values in timings.items():
        report(f"local {what} -> server", values)
    # The uploads are recorded, not downloaded again; both sides agree exactly.
    wait_until(lambda: assert_folder_in_sync(dovecot, user, account, "INBOX") == 8, 5)
    time.sleep(0.5)
    assert count(inbox) == 8
    assert_folder_in_sync(dovecot, user, account, "INBOX")
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# 3, 4, 5: servers and networks that go away


def test_dovecot_restart_while_idling(dovecot_factory: Callable[..., Dovecot], tmp_path: Path,
                                      daemons: StartDaemon) -> None:
    dc = dovecot_factory()
    u = dc.add_user()
    dc.seed(u, "INBOX", [make_message(i) for i in range(2)])
    account = write_config(tmp_path, dc, u)
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 2, 30, d)
    dc.append(u, "INBOX", make_message(10))
    wait_count(inbox, 3, 10, d)  # IDLE is up

    mark = len(d.log())
    dc.stop()  # the master and every child: the daemon's connections get BYE / EOF
    assert dc.pids() == []
    time.sleep(1.0)
    dc.start()
    dc.append(u, "INBOX", make_message(11))
    t = time.monotonic()
    waited = wait_count(inbox, 4, 30, d)
    print(f"a message appended right after the restart arrived after {waited:.1f} s")
    # And real time again afterwards.
    dc.append(u, "INBOX", make_message(12))
    assert wait_count(inbox, 5, EVENT_LIMIT, d) < EVENT_LIMIT
    print(f"caught up {time.monotonic() - t:.1f} s after the restart")
    assert d.alive()
    print(d.log()[mark:])
    assert_folder_in_sync(dc, u, account, "INBOX")
    stop_ok(d)


def test_proxy_dropping_every_connection(dovecot: Dovecot, user: User, tmp_path: Path,
                                         daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(i, size=40_000) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    with TcpProxy(dovecot.imaps_port) as proxy:
        set_port(account, dovecot.imaps_port, proxy.port)
        d = daemons(account.config)
        inbox = account.folder_dir("INBOX")
        wait_count(inbox, 3, 30, d)
        dovecot.append(user, "INBOX", make_message(9))
        wait_count(inbox, 4, 10, d)
        wait_until(lambda: len(proxy.links()) == 2, 5)  # the worker's and the IDLE one

        # 0. Only the worker's kept-open connection dies (as on the server's autologout, or a
        # NAT timeout): the next event reconnects at once, without an error or a backoff.
        worker_link = max(proxy.links(), key=lambda link: link.bytes_down)
        assert worker_link.bytes_down > 100_000  # it downloaded the 3 big messages
        mark = len(d.log())
        proxy.drop(worker_link)
        time.sleep(0.3)
        dovecot.append(user, "INBOX", make_message(10))
        waited = wait_count(inbox, 5, EVENT_LIMIT, d)
        print(f"the worker's connection was dropped: the next message arrived after "
              f"{waited:.2f} s")
        assert "WARNING" not in d.log()[mark:], d.log()[mark:]

        # 1. Everything dropped while idle, and new connections refused for a while.
        proxy.refusing = True
        dropped = proxy.drop_all()
        dovecot.append(user, "INBOX", make_message(11))
        time.sleep(1.5)
        proxy.refusing = False
        waited = wait_count(inbox, 6, 30, d)
        print(f"dropped {dropped} connections, refused for 1.5 s: the message appended "
              f"meanwhile arrived {waited:.1f} s after the network came back")

        # 2. Dropped in the middle of a large download.
        total = 6 + 300
        dovecot.seed(user, "INBOX", [make_message(100 + i, size=30_000) for i in range(300)])
        wait_until(lambda: count(inbox) > 6, 15, interval=0.002)
        during = count(inbox)
        dropped = proxy.drop_all()
        print(f"dropped {dropped} connections with {during - 6}/300 messages downloaded")
        wait_count(inbox, total, 60, d)
        assert_folder_in_sync(dovecot, user, account, "INBOX")

        # 3. Events still flow both ways.
        dovecot.append(user, "INBOX", make_message(12))
        assert wait_count(inbox, total + 1, EVENT_LIMIT, d) < EVENT_LIMIT
        mid = sorted(local_by_mid(inbox))[0]
        add_flag_locally(local_by_mid(inbox)[mid], "F")
        wait_until(lambda: "\\Flagged" in server_by_mid(dovecot, user)[mid][1], EVENT_LIMIT,
                   interval=0.02, message=lambda: f"\\Flagged on the server\n{d.log()[-3000:]}")
        assert_folder_in_sync(dovecot, user, account, "INBOX")
        stop_ok(d)


def test_local_changes_while_the_server_is_down(dovecot_factory: Callable[..., Dovecot],
                                                tmp_path: Path,
                                                daemons: StartDaemon) -> None:
    dc = dovecot_factory()
    u = dc.add_user()
    dc.seed(u, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dc, u)
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    wait_count(inbox, 4, 30, d)
    local = local_by_mid(inbox)
    server = server_by_mid(dc, u)
    flagged, deleted = sorted(local)[:2]

    dc.stop()
    add_flag_locally(local[flagged], "S")
    local[deleted].unlink()
    added, _ = new_local_message(inbox, 77)
    time.sleep(1.5)  # the daemon notices, fails to connect, backs off
    dc.start()
    t = time.monotonic()

    def pushed() -> bool:
        now = server_by_mid(dc, u)
        return ("\\Seen" in now[flagged][1] and deleted not in now and added in now)

    wait_until(pushed, 30, interval=0.1,
               message=lambda: f"the offline changes on the server\n{d.log()[-3000:]}")
    print(f"offline changes pushed {time.monotonic() - t:.1f} s after the server returned")
    assert server[deleted][0] not in dc.flags(u, "INBOX")
    wait_until(lambda: assert_folder_in_sync(dc, u, account, "INBOX") == 4, 5)
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# 6, 7, 8: signals and locks


def test_sigterm_during_a_big_initial_sync(dovecot: Dovecot, user: User, tmp_path: Path,
                                           daemons: StartDaemon,
                                           request: pytest.FixtureRequest) -> None:
    n = 3000
    dovecot.seed(user, "INBOX", (make_message(i) for i in range(n)))
    # ~1.2 MB of mail through a line of 300 kB/s: the sync takes about four seconds however
    # fast this machine is, so the SIGTERM below always comes in the middle of it.
    proxy = TcpProxy(dovecot.imaps_port, rate=300_000).start()
    request.addfinalizer(proxy.close)
    account = write_config(tmp_path, dovecot, user, port=proxy.port)
    d = daemons(account.config)
    inbox = account.folder_dir("INBOX")
    started = time.monotonic()
    # ~0.5 s into the sync: once the first messages are on disk.
    wait_until(lambda: count(inbox) > 0, 30, interval=0.01,
               message=lambda: f"the download to start\n{d.log()[-3000:]}")
    time.sleep(0.5)
    have = count(inbox)
    seconds = stop_ok(d)
    print(f"SIGTERM {time.monotonic() - started:.1f} s after start with {have}/{n} messages "
          f"local: exit 0 after {seconds:.2f} s")
    assert have < n, "the initial sync finished before SIGTERM: nothing was interrupted"
    proc = run_subprocess("--config", str(account.config), "--debug", "sync", timeout=120)
    # What the sync saw and did, for a failure below.
    print(proc.stdout, "\n".join(line[:300] for line in proc.stderr.splitlines()
                                 if "DEBUG   test:" in line or "INFO" in line
                                 or "WARNING" in line or "ERROR" in line))
    assert proc.returncode == 0, proc.stderr
    assert assert_folder_in_sync(dovecot, user, account, "INBOX") == n


def test_sighup_adds_an_account_and_survives_a_broken_config(
        dovecot: Dovecot, tmp_path: Path, daemons: StartDaemon) -> None:
    first, second = dovecot.add_user(), dovecot.add_user()
    dovecot.seed(first, "INBOX", [make_message(i) for i in range(2)])
    dovecot.seed(second, "INBOX", [make_message(i) for i in range(3)])
    one = {"one": (dovecot, first, account_yaml("one", dovecot, first))}
    accounts = write_accounts(tmp_path, one)
    d = daemons(accounts["one"].config)
    inbox_one = accounts["one"].folder_dir("INBOX")
    wait_count(inbox_one, 2, 30, d)
    pid = d.pid

    both = dict(one, two=(dovecot, second, account_yaml("two", dovecot, second)))
    accounts = write_accounts(tmp_path, both)
    d.signal(signal.SIGHUP)
    inbox_two = accounts["two"].folder_dir("INBOX")
    waited = wait_count(inbox_two, 3, 30, d)
    print(f"SIGHUP: the new account's mail arrived after {waited:.1f} s")
    dovecot.append(second, "INBOX", make_message(10))
    wait_count(inbox_two, 4, 10, d)  # and it is watched in real time

    good = accounts["one"].config.read_text()
    mark = len(d.log())
    accounts["one"].config.write_text(good.replace("    protocol: imap\n",
                                                   "    protocol: imap\n    bogus_key: 1\n", 1))
    d.signal(signal.SIGHUP)
    d.wait_for_log("reload refused", 10, since=mark)
    logged = d.log()[mark:]
    assert "bogus_key" in logged, logged
    # The old configuration keeps working: both accounts, both directions.
    dovecot.append(first, "INBOX", make_message(20))
    dovecot.append(second, "INBOX", make_message(21))
    wait_count(inbox_one, 3, 10, d)
    wait_count(inbox_two, 5, 10, d)
    mid = sorted(local_by_mid(inbox_one))[0]
    add_flag_locally(local_by_mid(inbox_one)[mid], "S")
    wait_until(lambda: "\\Seen" in server_by_mid(dovecot, first)[mid][1], 10, interval=0.05)
    assert d.alive() and d.pid == pid
    stop_ok(d)


def test_a_second_daemon_and_a_sync_refuse_while_the_daemon_runs(
        dovecot: Dovecot, user: User, tmp_path: Path, daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(0)])
    account = write_config(tmp_path, dovecot, user)
    d = daemons(account.config)
    wait_first_sync(account, 30, d)

    second = subprocess.run([sys.executable, "-m", "syncd", "--config", str(account.config),
                             "run"], cwd=REPO, capture_output=True, text=True, timeout=20)
    assert second.returncode != 0
    assert "already running" in second.stderr, second.stderr
    assert str(account.state_dir) in second.stderr
    assert "Traceback" not in second.stderr

    proc = run_subprocess("--config", str(account.config), "sync", "test", timeout=60)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    out = proc.stdout + proc.stderr
    assert "test" in out and "syncd run" in out, out
    assert "Traceback" not in out
    assert d.alive()
    stop_ok(d)
    # Once the daemon is gone, both work again.
    proc = run_subprocess("--config", str(account.config), "sync", timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# 9, 10: hooks, several accounts, status


def test_on_new_mail_hook(dovecot: Dovecot, user: User, tmp_path: Path,
                          daemons: StartDaemon) -> None:
    out = tmp_path / "hook.out"
    command = f'echo "$SYNCD_ACCOUNT|$SYNCD_FOLDER|$SYNCD_COUNT" >> {out}'
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user,
                           general_extra=f"  on_new_mail: '{command}'\n")
    d = daemons(account.config)
    wait_until(lambda: out.exists() and out.read_text(), 30,
               message=lambda: f"the hook to run\n{d.log()[-3000:]}")
    assert out.read_text().splitlines() == ["test|INBOX|3"]
    dovecot.append(user, "INBOX", make_message(10))
    dovecot.append(user, "INBOX", make_message(11), flags=["\\Seen"])  # not new mail
    wait_count(account.folder_dir("INBOX"), 5, 10, d)
    wait_until(lambda: len(out.read_text().splitlines()) >= 2, 10)
    time.sleep(0.3)
    lines = out.read_text().splitlines()
    assert lines[0] == "test|INBOX|3"
    assert [line.rsplit("|", 1)[0] for line in lines[1:]] == ["test|INBOX"] * (len(lines) - 1)
    assert sum(int(line.rsplit("|", 1)[1]) for line in lines[1:]) == 1
    # SIGINT (Ctrl-C in a terminal) stops it like SIGTERM: exit 0, quickly.
    d.signal(signal.SIGINT)
    started = time.monotonic()
    assert d.wait(STOP_LIMIT) == 0, d.log()[-3000:]
    assert time.monotonic() - started < STOP_LIMIT


def test_two_accounts_one_with_a_wrong_password(dovecot: Dovecot, tmp_path: Path,
                                                 daemons: StartDaemon) -> None:
    good_user, bad_user = dovecot.add_user(), dovecot.add_user()
    dovecot.seed(good_user, "INBOX", [make_message(i) for i in range(2)])
    dovecot.seed(bad_user, "INBOX", [make_message(i) for i in range(2)])
    accounts = write_accounts(tmp_path, {
        "good": (dovecot, good_user, account_yaml("good", dovecot, good_user)),
        "bad": (dovecot, bad_user, account_yaml("bad", dovecot, bad_user,
                                                password="WrongPassword")),
    })
    d = daemons(accounts["good"].config)
    good_inbox = accounts["good"].folder_dir("INBOX")
    wait_count(good_inbox, 2, 30, d)
    dovecot.append(good_user, "INBOX", make_message(10))
    wait_count(good_inbox, 3, 10, d)
    wait_until(lambda: saved_status(accounts["bad"]).get("error"), 20)

    status = status_json(accounts["good"])["accounts"]
    print(json.dumps(status, indent=1))
    assert status["good"]["error"] is None
    assert status["good"]["connection"] == "connected"
    assert status["good"]["last_sync"]
    assert status["good"]["folders"]["INBOX"]["messages"] == 3
    bad = status["bad"]
    assert bad["error"] and re.search(r"auth|login|password|credentials", bad["error"], re.I)
    assert "WrongPassword" not in json.dumps(status)
    assert bad["connection"].startswith("auth failed"), bad["connection"]
    assert not bad["last_sync"]
    assert not accounts["bad"].folder_dir("INBOX").exists()
    # The broken account is retried slowly, not hammered.
    time.sleep(2)
    attempts = d.log().count("bad: ")
    assert attempts <= 4, d.log()
    # The good one is still real-time both ways.
    dovecot.append(good_user, "INBOX", make_message(11))
    wait_count(good_inbox, 4, EVENT_LIMIT, d)
    mid = sorted(local_by_mid(good_inbox))[0]
    add_flag_locally(local_by_mid(good_inbox)[mid], "S")
    wait_until(lambda: "\\Seen" in server_by_mid(dovecot, good_user)[mid][1], EVENT_LIMIT,
               interval=0.05)
    stop_ok(d)


# --------------------------------------------------------------------------------------------
# 11, 12: systemd


def test_sd_notify_ready_status_and_watchdog(dovecot: Dovecot, user: User, tmp_path: Path,
                                             daemons: StartDaemon) -> None:
    dovecot.seed(user, "INBOX", [make_message(0)])
    account = write_config(tmp_path, dovecot, user)
    with NotifySocket(tmp_path / "notify.sock") as sock:
        started = time.monotonic()
        d = daemons(account.config, env={"NOTIFY_SOCKET": str(sock.path),
                                         "WATCHDOG_USEC": "2000000"})
        wait_until(lambda: sock.times("READY=1"), 15,
                   message=lambda: f"READY=1 (got {sock.messages()})\n{d.log()[-3000:]}")
        print(f"READY=1 {sock.times('READY=1')[0] - started:.2f} s after start")
        wait_until(lambda: any("connected" in line for line in sock.lines("STATUS=")), 15,
                   message=lambda: f"a STATUS= line saying connected (got {sock.messages()})")
        wait_until(lambda: len(sock.times("WATCHDOG=1")) >= 3, 10,
                   message=lambda: f"three WATCHDOG=1 (got {sock.messages()})")
        pings = sock.times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        print(f"STATUS lines: {sock.lines('STATUS=')}; watchdog gaps {gaps}")
        assert max(gaps) < 2.0, "WATCHDOG=1 must come within WATCHDOG_USEC"
        assert len(sock.times("READY=1")) == 1
        stop_ok(d)
        wait_until(lambda: sock.times("STOPPING=1"), 2)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: `make deps` installs it (Debian package "
                    "systemd)", pytrace=False)
    unit = (REPO / "systemd" / "syncd.service").read_text()
    assert re.search(r"(?m)^Type=notify$", unit)
    assert re.search(r"(?m)^WatchdogSec=", unit)
    assert re.search(r"(?m)^ExecReload=.*-HUP \$MAINPID$", unit)
    assert re.search(r"(?m)^Restart=on-failure$", unit)
    assert re.search(r"(?m)^ExecStart=%h/\.local/bin/syncd run$", unit)
    # verify insists that ExecStart exists: point it at this venv's console script.
    syncd = Path(sys.executable).parent / "syncd"
    assert syncd.exists(), f"{syncd} is missing: install the package into the venv"
    units = tmp_path / "units"
    units.mkdir()
    (units / "syncd.service").write_text(
        re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={syncd} run", unit))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), HOME=str(tmp_path),
               SYSTEMD_LOG_LEVEL="notice")
    proc = subprocess.run([analyze, "--user", "verify", str(units / "syncd.service")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    output = (proc.stdout + proc.stderr).strip()
    print(f"systemd-analyze --user verify: exit {proc.returncode}\n{output}")
    assert proc.returncode == 0, output
    # verify exits 0 even for unknown keys and bad values (it only warns): none allowed.
    problems = [line for line in output.splitlines() if "syncd.service" in line]
    assert not problems, "\n".join(problems)
