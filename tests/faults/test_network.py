"""Networks and servers that fail: a TCP fault proxy between syncd and Dovecot (a reset in the
middle of a literal, a stall longer than the configured ``timeout: 2s``, a slow trickle,
reconnects refused for a while), the server closing the session with ``* BYE``, and Dovecot
stopped and restarted while the daemon syncs and while it idles.

Each fault is followed by recovery and an exact comparison of both sides (bytes, flags, no
duplicates on either side).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.faultlib import (
    count_files,
    fault,
    in_sync,
    kill9,
    lf,
    make_account,
    run_syncd,
    secret_user,
    stray_files,
    syncd_cmd,
)
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, HarnessError, make_message
from tests.support.syncd_env import REPO, local_files, run_cli
from tests.support.tcp_proxy import TcpProxy

BIG = 100_000  # bytes per message: a FETCH of a batch is megabytes, cut mid-literal


def sync(config: Path) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(config), "sync")
    return rc, out + err


def test_proxy_faults_during_syncs(dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [(make_message(i, size=BIG), "S" if i % 2 else "")
                                 for i in range(40)])
    with TcpProxy(dovecot.imaps_port) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port, timeout="2s")
        inbox = account.folder_dir("INBOX")

        # 1. Reset in the middle of a literal, three syncs in a row.
        proxy.cut_after = 1_500_000
        for _attempt in range(3):
            rc, text = sync(account.config)
            # imaplib's "socket error: EOF" (or a reset) names the account and the folder
            assert rc == 1 and "test:" in text and "'INBOX'" in text, text
            fault("proxy: reset mid-literal")
        assert proxy.cuts == 3
        assert not stray_files(account.maildir), "a cut delivery left files in tmp/"
        proxy.cut_after = None
        rc, text = sync(account.config)
        assert rc == 0, text
        in_sync(dovecot, user, account, "INBOX")

        # 2. A stall longer than the timeout: an error within seconds, not a hang; a shorter
        # one is only a hiccup.
        dovecot.seed(user, "INBOX", [make_message(100 + i, size=BIG) for i in range(20)])
        proxy.stall_after, proxy.stall_for = 600_000, 5.0
        started = time.monotonic()
        rc, text = sync(account.config)
        took = time.monotonic() - started
        print(f"stalled for 5 s with timeout 2s: gave up after {took:.1f} s: {text.strip()}")
        assert rc == 1 and "timed out" in text, text
        assert took < 4.5, f"took {took:.1f} s"
        fault("proxy: stall beyond the timeout")
        proxy.stall_after, proxy.stall_for = 600_000, 0.8
        rc, text = sync(account.config)
        assert rc == 0, text
        fault("proxy: stall below the timeout")
        proxy.stall_after = None
        in_sync(dovecot, user, account, "INBOX")

        # 3. A slow trickle (1.6 MB/s: 16 kB every 10 ms): slow, but correct.
        dovecot.seed(user, "INBOX", [make_message(200 + i, size=BIG) for i in range(10)])
        proxy.rate = 1_638_400
        started = time.monotonic()
        rc, text = sync(account.config)
        print(f"trickle: {time.monotonic() - started:.1f} s: {text.strip()}")
        assert rc == 0, text
        fault("proxy: slow trickle")
        proxy.rate = None
        in_sync(dovecot, user, account, "INBOX")

        # 4. Connections refused: a clear error; once they are accepted again, all is well.
        dovecot.seed(user, "INBOX", [make_message(300 + i) for i in range(5)])
        proxy.refusing = True
        rc, text = sync(account.config)
        assert rc == 1 and "test:" in text, text
        assert "connection" in text.lower(), text
        fault("proxy: connection refused")
        proxy.refusing = False
        rc, text = sync(account.config)
        assert rc == 0, text
        assert count_files(inbox) == 75
        in_sync(dovecot, user, account, "INBOX")


def test_reset_in_the_middle_of_a_streamed_literal(dovecot: Dovecot, tmp_path: Path) -> None:
    """A body above 1 MiB goes to tmp/ as it arrives (issue 21): a reset half-way through it
    leaves no partial file in tmp/, cur/ or new/, and the next sync completes."""
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(0), make_message(1, size=6_000_000),
                                 make_message(2)])
    whole = {lf(m.body) for m in dovecot.messages(user, "INBOX").values()}
    with TcpProxy(dovecot.imaps_port) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port, timeout="5s")
        inbox = account.folder_dir("INBOX")
        proxy.cut_after = 3_000_000  # into the 6 MB literal
        rc, text = sync(account.config)
        assert rc == 1 and "test:" in text and "'INBOX'" in text, text
        assert proxy.cuts == 1
        fault("proxy: reset mid-literal of a streamed body")
        assert not stray_files(account.maildir), "the cut body left a file in tmp/"
        for _flags, path in local_files(inbox):
            assert path.read_bytes() in whole, f"a partial message in {path.parent.name}/"
        proxy.cut_after = None
        rc, text = sync(account.config)
        assert rc == 0, text
        assert count_files(inbox) == 3
        in_sync(dovecot, user, account, "INBOX")


def test_kill_while_a_body_streams_into_tmp(dovecot: Dovecot, tmp_path: Path) -> None:
    """kill -9 of `syncd sync` while a big body is arriving in tmp/<key>.part (at 2 MB/s):
    the next sync removes it, downloads the message once, and leaves tmp/ empty."""
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(0, size=8_000_000)])
    with TcpProxy(dovecot.imaps_port, rate=2_000_000) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port)
        tmp = account.folder_dir("INBOX") / "tmp"
        proc = subprocess.Popen(syncd_cmd(account.config, "sync"), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: tmp.is_dir() and any(p.suffix == ".part" and p.stat().st_size
                                                    for p in tmp.iterdir()), 30,
                       interval=0.01)
        finally:
            assert kill9(proc), "syncd finished before the kill"
        fault("kill -9 while a body streams into tmp/")
        assert [p.suffix for p in tmp.iterdir()] == [".part"]
        proxy.rate = None
        rc, text = sync(account.config)
        assert rc == 0, text
        assert not stray_files(account.maildir), "the killed sync's tmp/ file is still there"
        in_sync(dovecot, user, account, "INBOX")


def test_server_bye_in_the_middle_of_a_download(dovecot: Dovecot, tmp_path: Path) -> None:
    """Dovecot's `doveadm kick` ends the session with `* BYE` mid-download, three times."""
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [(make_message(i, size=30_000 if i % 3 else None),
                                  "F" if i % 5 == 0 else "") for i in range(900)])
    account = make_account(tmp_path, dovecot, user)
    inbox = account.folder_dir("INBOX")
    kicked = 0
    for _ in range(3):
        before = count_files(inbox)
        proc = subprocess.Popen(syncd_cmd(account.config, "sync"), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda before=before, proc=proc: count_files(inbox) > before
                   or proc.poll() is not None, 30, interval=0.005)
        try:
            dovecot.kick(user)
            kicked += 1
            fault("server: BYE mid-download")
        except HarnessError:
            pass  # the sync had already finished: no session to kick
        out, _ = proc.communicate(timeout=60)
        print(f"kicked at {before} local: rc {proc.returncode}: {out.strip()}")
        assert proc.returncode in (0, 1), out
        if proc.returncode == 1:
            assert "test:" in out and "Traceback" not in out, out
    assert kicked >= 1
    rc, out, err, _ = run_syncd(account.config, "sync")
    assert rc == 0, out + err
    in_sync(dovecot, user, account, "INBOX")


def test_daemon_survives_refused_reconnects_with_changes_on_both_sides(
        dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(30)])
    with TcpProxy(dovecot.imaps_port) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port, timeout="2s",
                               extra="    poll_interval: 5s\n")
        inbox = account.folder_dir("INBOX")
        d = DaemonProcess(account.config, log_path=tmp_path / "daemon.log").start()
        try:
            wait_until(lambda: count_files(inbox) == 30, 30, message=lambda: d.log()[-2000:])
            proxy.refusing = True
            proxy.drop_all()
            fault("proxy: every connection dropped, reconnects refused")
            # Offline changes on both sides.
            dovecot.append(user, "INBOX", make_message(100))
            victim = sorted((inbox / "new").iterdir())[0]
            victim.unlink()
            time.sleep(3.0)
            assert d.alive()
            proxy.refusing = False
            wait_until(lambda: count_files(inbox) == 30 and dovecot.count(user, "INBOX") == 30,
                       40, message=lambda: d.log()[-3000:])
            print(f"refused {proxy.refused} connection attempts; converged")
            # A stall of the worker's connection beyond the timeout while it idles.
            proxy.stall_after, proxy.stall_for = 0, 4.0
            proxy.drop_all()
            fault("proxy: stall of reconnects beyond the timeout")
            dovecot.append(user, "INBOX", make_message(101))
            time.sleep(1.0)
            proxy.stall_after = None
            wait_until(lambda: count_files(inbox) == 31, 40, message=lambda: d.log()[-3000:])
        finally:
            rc, _ = d.stop()
        assert rc == 0, d.log()[-3000:]
        assert "Traceback" not in d.log()
    in_sync(dovecot, user, account, "INBOX")


def test_dovecot_restarted_while_the_daemon_syncs_and_idles(
        dovecot_factory: Callable[..., Dovecot], tmp_path: Path) -> None:
    dc = dovecot_factory()
    user = secret_user(dc)
    dc.seed(user, "INBOX", [(make_message(i, size=20_000 if i % 4 == 0 else None),
                             "S" if i % 2 else "") for i in range(3000)])
    account = make_account(tmp_path, dc, user, timeout="5s")
    inbox = account.folder_dir("INBOX")
    d = DaemonProcess(account.config, log_path=tmp_path / "daemon.log").start()
    try:
        # While it syncs: stopped as the initial download is under way.
        wait_until(lambda: count_files(inbox) > 300, 60, interval=0.005,
                   message=lambda: d.log()[-2000:])
        have = count_files(inbox)
        dc.stop()
        fault("dovecot: restart while the daemon syncs")
        time.sleep(1.0)
        dc.start()
        print(f"Dovecot restarted with {have}/3000 messages local")
        assert have < 3000
        wait_until(lambda: count_files(inbox) == 3000, 90, message=lambda: d.log()[-3000:])
        in_sync(dc, user, account, "INBOX")
        # While it idles: stopped, a message arrives right after the restart.
        dc.stop()
        fault("dovecot: restart while the daemon idles")
        time.sleep(1.0)
        dc.start()
        dc.append(user, "INBOX", make_message(5000))
        wait_until(lambda: count_files(inbox) == 3001, 40, message=lambda: d.log()[-3000:])
        assert d.alive()
    finally:
        d.signal(signal.SIGTERM)
        rc = d.wait(10)
    assert rc == 0, d.log()[-3000:]
    assert "Traceback" not in d.log()
    in_sync(dc, user, account, "INBOX")
    assert not stray_files(account.maildir)
